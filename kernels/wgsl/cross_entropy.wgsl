// cross_entropy.wgsl — the LM head's per-token masked cross-entropy on a chunk of logits, fused
// into the head (crate learnlaw-wgpu). With gemm.wgsl it forms the fused linear cross-entropy:
// the engine computes logits z = x·W (and ż) for a chunk of rows at a time, so [tokens, vocab]
// never exists for a whole set, and the backward recomputes each chunk's logits. CPU reference:
// `CpuKernels::head_forward` and `head_backward` (learnlaw-core transformer/cpu_kernels.rs).
//
// Math, per row r with label y (PAD rows excluded), p = softmax(z):
//   forward_rows  lse = max z + ln Σ exp(z − max z); loss_r = lse − z_y;
//                 tangent: mean_r = Σ_v p_v ż_v, dot_r = mean_r − ż_y  (= ∇loss_r·v)
//   sequences     l_n = Σ_rows of n loss_r / count_n, l̇_n likewise (count_n = non-PAD labels,
//                 at least 1), summed in row order
//   backward_rows gz = w_n/count_n · (p − onehot(y)); ġz = w_n/count_n · p ⊙ (ż − mean_r),
//                 written over z and ż in place (then gemm.wgsl: gx += gz Wᵀ, ∇W += xᵀ gz)
// Buffers: ids u32 (token rows; the label of row s·L + i is ids[at + s·seq_len + i + 1]);
//   z, ż [rows, vocab] f32 (the chunk, rows r0..r0 + rows of the set's M); stats [M, 4] f32:
//   loss, dot, lse, mean per row; losses, dots, counts [seqs] f32; weights (γ) f32 at w_at.
// Geometry: forward_rows/backward_rows: a workgroup of 64 per row (workgroups stride over the
//   chunk's rows), row max and sums by trees in workgroup memory; sequences: one invocation per
//   sequence.
// Variants: forward_per_row, one invocation per row (max and sums over the vocabulary in order,
//   no workgroup memory or barriers): the default on CPU adapters (lavapipe), which split the
//   shader at each of the trees' barriers; forward_rows elsewhere.

struct Params {
    at: u32,
    seqs: u32,
    seq_len: u32,
    vocab: u32,
    r0: u32,
    rows: u32,
    tangent: u32,
    w_at: u32,
}

const PAD: u32 = 1u;
const WG: u32 = 64u;

@group(0) @binding(0) var<storage, read> ids: array<u32>;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> z_t: array<f32>;
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

var<workgroup> red: array<f32, 64>;
var<workgroup> red_t: array<f32, 64>;

fn label(row: u32) -> u32 {
    let l = p.seq_len - 1u;
    return ids[p.at + (row / l) * p.seq_len + row % l + 1u];
}

// Tree reduction over the workgroup (fixed order); every invocation gets the results.
fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w /= 2u) {
        if (lid < w) {
            red[lid] = max(red[lid], red[lid + w]);
        }
        workgroupBarrier();
    }
    let m = red[0];
    workgroupBarrier();
    return m;
}

fn reduce_sum2(lid: u32, v: f32, t: f32) -> vec2<f32> {
    red[lid] = v;
    red_t[lid] = t;
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w /= 2u) {
        if (lid < w) {
            red[lid] = red[lid] + red[lid + w];
            red_t[lid] = red_t[lid] + red_t[lid + w];
        }
        workgroupBarrier();
    }
    let s = vec2<f32>(red[0], red_t[0]);
    workgroupBarrier();
    return s;
}

@compute @workgroup_size(64)
fn forward_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let v = p.vocab;
    for (var lr = wg.x; lr < p.rows; lr += nwg.x) {
        let row = p.r0 + lr;
        let y = label(row);
        let zr = lr * v;
        var mx = -3.0e38;
        for (var c = lid; c < v; c += WG) {
            mx = max(mx, z[zr + c]);
        }
        mx = reduce_max(lid, mx);
        var se = 0.0;
        for (var c = lid; c < v; c += WG) {
            se = se + exp(z[zr + c] - mx);
        }
        let sums = reduce_sum2(lid, se, 0.0);
        let lse = mx + log(sums.x);
        var mean = 0.0;
        if (p.tangent == 1u) {
            var m = 0.0;
            for (var c = lid; c < v; c += WG) {
                m = m + exp(z[zr + c] - lse) * z_t[zr + c];
            }
            mean = reduce_sum2(lid, m, 0.0).x;
        }
        if (lid == 0u) {
            let pad = y == PAD;
            stats[row * 4u] = select(lse - z[zr + y], 0.0, pad);
            stats[row * 4u + 1u] = select(select(0.0, mean - z_t[zr + y], p.tangent == 1u), 0.0, pad);
            stats[row * 4u + 2u] = lse;
            stats[row * 4u + 3u] = mean;
        }
    }
}

// forward_rows, one invocation per row.
@compute @workgroup_size(64)
fn forward_per_row(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let v = p.vocab;
    for (var lr = gid.x; lr < p.rows; lr += nwg.x * WG) {
        let row = p.r0 + lr;
        let y = label(row);
        let zr = lr * v;
        var mx = -3.0e38;
        for (var c = 0u; c < v; c++) {
            mx = max(mx, z[zr + c]);
        }
        var se = 0.0;
        for (var c = 0u; c < v; c++) {
            se = se + exp(z[zr + c] - mx);
        }
        let lse = mx + log(se);
        var mean = 0.0;
        if (p.tangent == 1u) {
            for (var c = 0u; c < v; c++) {
                mean = mean + exp(z[zr + c] - lse) * z_t[zr + c];
            }
        }
        let pad = y == PAD;
        stats[row * 4u] = select(lse - z[zr + y], 0.0, pad);
        stats[row * 4u + 1u] = select(select(0.0, mean - z_t[zr + y], p.tangent == 1u), 0.0, pad);
        stats[row * 4u + 2u] = lse;
        stats[row * 4u + 3u] = mean;
    }
}

// Per sequence: mean loss and dot over its non-PAD labels, and the count.
@group(0) @binding(5) var<storage, read> sq_stats: array<f32>;
@group(0) @binding(6) var<storage, read_write> losses: array<f32>;
@group(0) @binding(7) var<storage, read_write> dots: array<f32>;
@group(0) @binding(8) var<storage, read_write> counts: array<f32>;

@compute @workgroup_size(64)
fn sequences(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = gid.x;
    if (n >= p.seqs) {
        return;
    }
    let l = p.seq_len - 1u;
    var count = 0u;
    var loss = 0.0;
    var dot = 0.0;
    for (var i = 0u; i < l; i++) {
        let row = n * l + i;
        if (label(row) != PAD) {
            count += 1u;
            loss = loss + sq_stats[row * 4u];
            dot = dot + sq_stats[row * 4u + 1u];
        }
    }
    let c = f32(max(count, 1u));
    losses[n] = loss / c;
    if (p.tangent == 1u) {
        dots[n] = dot / c;
    }
    counts[n] = f32(count);
}

// gz over z (and ġz over ż) in place for the chunk's rows.
@group(0) @binding(9) var<storage, read> b_stats: array<f32>;
@group(0) @binding(10) var<storage, read> b_counts: array<f32>;
@group(0) @binding(11) var<storage, read> weights: array<f32>;
@group(0) @binding(12) var<storage, read_write> gz: array<f32>;
@group(0) @binding(13) var<storage, read_write> gz_t: array<f32>;

@compute @workgroup_size(64)
fn backward_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let v = p.vocab;
    let l = p.seq_len - 1u;
    for (var lr = wg.x; lr < p.rows; lr += nwg.x) {
        let row = p.r0 + lr;
        let y = label(row);
        let n = row / l;
        let count = b_counts[n];
        let zr = lr * v;
        let live = y != PAD && count > 0.0;
        let c = select(0.0, weights[p.w_at + n] / max(count, 1.0), live);
        let lse = b_stats[row * 4u + 2u];
        let mean = b_stats[row * 4u + 3u];
        for (var k = lid; k < v; k += WG) {
            let pk = exp(gz[zr + k] - lse);
            if (p.tangent == 1u) {
                gz_t[zr + k] = c * pk * (gz_t[zr + k] - mean);
            }
            gz[zr + k] = c * (pk - select(0.0, 1.0, k == y && live));
        }
    }
}
