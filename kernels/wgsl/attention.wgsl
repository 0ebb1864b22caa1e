// attention.wgsl — causal multi-head attention, forward and backward, each with its forward-mode
// tangent (crate learnlaw-wgpu). CPU reference: `CpuKernels::attention_forward` and
// `attention_backward` (learnlaw-core transformer/cpu_kernels.rs).
//
// Math, per sequence and head (rows i, j < L, head_dim dh, scale c, j ≤ i):
//   forward   S = c·Q Kᵀ, P = softmax_j(S), O = P V
//             Ṡ = c(Q̇ Kᵀ + Q K̇ᵀ), Ṗ = P ⊙ (Ṡ − rowsum(P ⊙ Ṡ)), Ȯ = Ṗ V + P V̇
//   backward  gP = gO Vᵀ, ρ = rowsum(gP ⊙ P), gS = P ⊙ (gP − ρ)            (`backward_rows`)
//             gQ = c·gS K;                                                   (`backward_rows`)
//             gK = c·gSᵀ Q, gV = Pᵀ gO                                        (`backward_cols`)
//             and the tangent of each product by the product rule.
// Buffers (f32): Q, K, V, O, gO, gQ, gK, gV [M = B·L, H] with head h in columns h·dh..(h+1)·dh;
//   P, Ṗ, gS, ġS [B, heads, L, L] (only j ≤ i is written or read), kept by the engine.
// Geometry: one invocation per (sequence, head, row) — of a query row i (forward,
//   backward_rows) or of a key row j (backward_cols, so gK and gV are sums over i in order, no
//   atomics); workgroups of 64 stride over them. backward_rows computes gP and ġP once per
//   (i, j), parked in gS's buffers (on lavapipe every load is a per-lane loop: they dominate).
// Variants: this naive one stores P ([B, heads, L, L]: small at L = 64); the tuned path is a
//   flash-style tiled kernel that keeps only the row statistics (see kernels/cuda for it).

struct Params {
    seqs: u32,
    len: u32,
    heads: u32,
    hidden: u32,
    scale: f32,
    tangent: u32,
    _pad0: u32,
    _pad1: u32,
}

// forward
@group(0) @binding(0) var<storage, read> fq: array<f32>;
@group(0) @binding(1) var<storage, read> fq_t: array<f32>;
@group(0) @binding(2) var<storage, read> fk: array<f32>;
@group(0) @binding(3) var<storage, read> fk_t: array<f32>;
@group(0) @binding(4) var<storage, read> fv: array<f32>;
@group(0) @binding(5) var<storage, read> fv_t: array<f32>;
@group(0) @binding(6) var<storage, read_write> fp: array<f32>;
@group(0) @binding(7) var<storage, read_write> fp_t: array<f32>;
@group(0) @binding(8) var<storage, read_write> fo: array<f32>;
@group(0) @binding(9) var<storage, read_write> fo_t: array<f32>;
@group(0) @binding(10) var<uniform> p: Params;

const WG: u32 = 64u;

struct Item {
    // This invocation's row (i or j), the start of its head's columns in an [M, H] row, its
    // sequence's first row, and the start of its (sequence, head) block [L, L] of P.
    row: u32,
    col0: u32,
    seq_row0: u32,
    pblock: u32,
}

// The item of invocation `item` under the dispatch's parameters `q`.
fn item_of(q: Params, item: u32) -> Item {
    let l = q.len;
    let dh = q.hidden / q.heads;
    let sh = item / l;
    return Item(item % l, (sh % q.heads) * dh, (sh / q.heads) * l, sh * l * l);
}

// Index in a [M, H] activation of (row r of this sequence, column d of this head).
fn ix(q: Params, it: Item, r: u32, d: u32) -> u32 {
    return (it.seq_row0 + r) * q.hidden + it.col0 + d;
}

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let dh = p.hidden / p.heads;
    let total = p.seqs * p.heads * p.len;
    let tan = p.tangent == 1u;
    for (var item = gid.x; item < total; item += nwg.x * WG) {
        let it = item_of(p, item);
        let i = it.row;
        let pr = it.pblock + i * p.len;
        var mx = -3.0e38;
        for (var j = 0u; j <= i; j++) {
            var s = 0.0;
            for (var d = 0u; d < dh; d++) {
                s = s + fq[ix(p, it, i, d)] * fk[ix(p, it, j, d)];
            }
            s = p.scale * s;
            fp[pr + j] = s;
            mx = max(mx, s);
        }
        var sum = 0.0;
        for (var j = 0u; j <= i; j++) {
            let e = exp(fp[pr + j] - mx);
            fp[pr + j] = e;
            sum = sum + e;
        }
        let inv = 1.0 / sum;
        for (var j = 0u; j <= i; j++) {
            fp[pr + j] = fp[pr + j] * inv;
        }
        for (var d = 0u; d < dh; d++) {
            var acc = 0.0;
            for (var j = 0u; j <= i; j++) {
                acc = acc + fp[pr + j] * fv[ix(p, it, j, d)];
            }
            fo[ix(p, it, i, d)] = acc;
        }
        if (tan) {
            var mean = 0.0;
            for (var j = 0u; j <= i; j++) {
                var st = 0.0;
                for (var d = 0u; d < dh; d++) {
                    st = st + fq_t[ix(p, it, i, d)] * fk[ix(p, it, j, d)] + fq[ix(p, it, i, d)] * fk_t[ix(p, it, j, d)];
                }
                st = p.scale * st;
                fp_t[pr + j] = st;
                mean = mean + fp[pr + j] * st;
            }
            for (var j = 0u; j <= i; j++) {
                fp_t[pr + j] = fp[pr + j] * (fp_t[pr + j] - mean);
            }
            for (var d = 0u; d < dh; d++) {
                var acc = 0.0;
                for (var j = 0u; j <= i; j++) {
                    acc = acc + fp_t[pr + j] * fv[ix(p, it, j, d)] + fp[pr + j] * fv_t[ix(p, it, j, d)];
                }
                fo_t[ix(p, it, i, d)] = acc;
            }
        }
    }
}

// backward_rows: per query row i: gS (and ġS) into rs, rs_t; gQ (and its tangent) overwritten.
@group(0) @binding(11) var<storage, read> rk: array<f32>;
@group(0) @binding(12) var<storage, read> rk_t: array<f32>;
@group(0) @binding(13) var<storage, read> rv: array<f32>;
@group(0) @binding(14) var<storage, read> rv_t: array<f32>;
@group(0) @binding(15) var<storage, read> rp: array<f32>;
@group(0) @binding(16) var<storage, read> rp_t: array<f32>;
@group(0) @binding(17) var<storage, read> rgo: array<f32>;
@group(0) @binding(18) var<storage, read> rgo_t: array<f32>;
@group(0) @binding(19) var<storage, read_write> rs: array<f32>;
@group(0) @binding(20) var<storage, read_write> rs_t: array<f32>;
@group(0) @binding(21) var<storage, read_write> rgq: array<f32>;
@group(0) @binding(22) var<storage, read_write> rgq_t: array<f32>;
@group(0) @binding(23) var<uniform> rpar: Params;

// gP[i, j] = gO_i · V_j, and its tangent ġO_i · V_j + gO_i · V̇_j.
fn grad_p(it: Item, i: u32, j: u32, dh: u32) -> f32 {
    var s = 0.0;
    for (var d = 0u; d < dh; d++) {
        s = s + rgo[ix(rpar, it, i, d)] * rv[ix(rpar, it, j, d)];
    }
    return s;
}

fn grad_p_t(it: Item, i: u32, j: u32, dh: u32) -> f32 {
    var s = 0.0;
    for (var d = 0u; d < dh; d++) {
        s = s + rgo_t[ix(rpar, it, i, d)] * rv[ix(rpar, it, j, d)] + rgo[ix(rpar, it, i, d)] * rv_t[ix(rpar, it, j, d)];
    }
    return s;
}

@compute @workgroup_size(64)
fn backward_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let dh = rpar.hidden / rpar.heads;
    let total = rpar.seqs * rpar.heads * rpar.len;
    let tan = rpar.tangent == 1u;
    let c = rpar.scale;
    for (var item = gid.x; item < total; item += nwg.x * WG) {
        let it = item_of(rpar, item);
        let i = it.row;
        let pr = it.pblock + i * rpar.len;
        // gP (and ġP) are computed once per (i, j) and parked in rs (rs_t) until gS replaces
        // them: each costs dh loads of two rows.
        var rho = 0.0;
        for (var j = 0u; j <= i; j++) {
            let gp = grad_p(it, i, j, dh);
            rs[pr + j] = gp;
            rho = rho + rp[pr + j] * gp;
        }
        if (tan) {
            var rho_t = 0.0;
            for (var j = 0u; j <= i; j++) {
                let gpt = grad_p_t(it, i, j, dh);
                rs_t[pr + j] = gpt;
                rho_t = rho_t + gpt * rp[pr + j] + rs[pr + j] * rp_t[pr + j];
            }
            for (var j = 0u; j <= i; j++) {
                rs_t[pr + j] = rp_t[pr + j] * (rs[pr + j] - rho) + rp[pr + j] * (rs_t[pr + j] - rho_t);
            }
        }
        for (var j = 0u; j <= i; j++) {
            rs[pr + j] = rp[pr + j] * (rs[pr + j] - rho);
        }
        for (var d = 0u; d < dh; d++) {
            var acc = 0.0;
            for (var j = 0u; j <= i; j++) {
                acc = acc + rs[pr + j] * rk[ix(rpar, it, j, d)];
            }
            rgq[ix(rpar, it, i, d)] = c * acc;
        }
        if (tan) {
            for (var d = 0u; d < dh; d++) {
                var acc = 0.0;
                for (var j = 0u; j <= i; j++) {
                    acc = acc + rs_t[pr + j] * rk[ix(rpar, it, j, d)] + rs[pr + j] * rk_t[ix(rpar, it, j, d)];
                }
                rgq_t[ix(rpar, it, i, d)] = c * acc;
            }
        }
    }
}

// backward_cols: per key row j: gK = c Σ_{i ≥ j} gS[i, j] Q_i, gV = Σ_{i ≥ j} P[i, j] gO_i, and
// their tangents; overwritten.
@group(0) @binding(24) var<storage, read> cq: array<f32>;
@group(0) @binding(25) var<storage, read> cq_t: array<f32>;
@group(0) @binding(26) var<storage, read> cs: array<f32>;
@group(0) @binding(27) var<storage, read> cs_t: array<f32>;
@group(0) @binding(28) var<storage, read> cp: array<f32>;
@group(0) @binding(29) var<storage, read> cp_t: array<f32>;
@group(0) @binding(30) var<storage, read> cgo: array<f32>;
@group(0) @binding(31) var<storage, read> cgo_t: array<f32>;
@group(0) @binding(32) var<storage, read_write> cgk: array<f32>;
@group(0) @binding(33) var<storage, read_write> cgk_t: array<f32>;
@group(0) @binding(34) var<storage, read_write> cgv: array<f32>;
@group(0) @binding(35) var<storage, read_write> cgv_t: array<f32>;
@group(0) @binding(36) var<uniform> cpar: Params;

@compute @workgroup_size(64)
fn backward_cols(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let dh = cpar.hidden / cpar.heads;
    let l = cpar.len;
    let total = cpar.seqs * cpar.heads * l;
    let tan = cpar.tangent == 1u;
    let c = cpar.scale;
    for (var item = gid.x; item < total; item += nwg.x * WG) {
        let it = item_of(cpar, item);
        let j = it.row;
        for (var d = 0u; d < dh; d++) {
            var gk = 0.0;
            var gv = 0.0;
            var gk_t = 0.0;
            var gv_t = 0.0;
            for (var i = j; i < l; i++) {
                let ij = it.pblock + i * l + j;
                gk = gk + cs[ij] * cq[ix(cpar, it, i, d)];
                gv = gv + cp[ij] * cgo[ix(cpar, it, i, d)];
                if (tan) {
                    gk_t = gk_t + cs_t[ij] * cq[ix(cpar, it, i, d)] + cs[ij] * cq_t[ix(cpar, it, i, d)];
                    gv_t = gv_t + cp_t[ij] * cgo[ix(cpar, it, i, d)] + cp[ij] * cgo_t[ix(cpar, it, i, d)];
                }
            }
            cgk[ix(cpar, it, j, d)] = c * gk;
            cgv[ix(cpar, it, j, d)] = gv;
            if (tan) {
                cgk_t[ix(cpar, it, j, d)] = c * gk_t;
                cgv_t[ix(cpar, it, j, d)] = gv_t;
            }
        }
    }
}
