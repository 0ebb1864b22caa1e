// embedding.wgsl — token + position embedding gather, and its deterministic scatter backward
// (crate learnlaw-wgpu). CPU reference: `CpuKernels::embed_forward` and `embed_backward`
// (learnlaw-core transformer/cpu_kernels.rs).
//
// Math: row r = s·L + i of a chunk (sequence s, position i < L = seq_len − 1) reads input id
//   u = ids[at + s·seq_len + i]:   x[r] = tok[u] + pos[i],  ẋ[r] = ṫok[u] + ṗos[i].
//   backward  ∇tok[u] += Σ_{rows reading u} g[r],  ∇pos[i] += Σ_s g[s·L + i]  (and tangents into
//   the HVP), each sum in row order.
// Buffers: ids u32 (the token rows of a whole set); θ, direction, gradient, HVP f32 with the
//   token table [vocab, H] at ptok and the position table at ppos. The backward's row order
//   without atomics comes from a CSR index of the ids buffer built once on upload:
//   csr_start [ids_vocab + 1], csr_pos [ids] = every position of id u, ascending, in
//   csr_pos[csr_start[u]..csr_start[u + 1]] (llm.c buckets its encoder backward the same way).
// Geometry: forward one invocation per (row, column); tokens_backward one per (id, column),
//   which binary-searches its id's positions for the chunk's window; positions_backward one per
//   (position, column). Workgroups of 64 stride over the items.
// Variants: the only one.

struct Params {
    at: u32,
    seqs: u32,
    seq_len: u32,
    h: u32,
    vocab: u32,
    ptok: u32,
    ppos: u32,
    tangent: u32,
    want_grad: u32,
    want_hvp: u32,
    csr_vocab: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> ids: array<u32>;
@group(0) @binding(1) var<storage, read> csr_start: array<u32>;
@group(0) @binding(2) var<storage, read> csr_pos: array<u32>;
@group(0) @binding(3) var<storage, read> theta: array<f32>;
@group(0) @binding(4) var<storage, read> dir: array<f32>;
@group(0) @binding(5) var<storage, read> g: array<f32>;
@group(0) @binding(6) var<storage, read> g_t: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
@group(0) @binding(8) var<storage, read_write> out_t: array<f32>;
@group(0) @binding(9) var<uniform> p: Params;

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let l = p.seq_len - 1u;
    let total = p.seqs * l * p.h;
    for (var item = gid.x; item < total; item += nwg.x * WG) {
        let c = item % p.h;
        let row = item / p.h;
        let i = row % l;
        let u = ids[p.at + (row / l) * p.seq_len + i];
        let e = p.ptok + u * p.h + c;
        let q = p.ppos + i * p.h + c;
        out[item] = theta[e] + theta[q];
        if (p.tangent == 1u) {
            out_t[item] = dir[e] + dir[q];
        }
    }
}

@compute @workgroup_size(64)
fn tokens_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let l = p.seq_len - 1u;
    let end = p.at + p.seqs * p.seq_len;
    let total = min(p.vocab, p.csr_vocab) * p.h;
    for (var item = gid.x; item < total; item += nwg.x * WG) {
        let c = item % p.h;
        let u = item / p.h;
        // First position of u at or after the window's start.
        var lo = csr_start[u];
        var hi = csr_start[u + 1u];
        while (lo < hi) {
            let mid = (lo + hi) / 2u;
            if (csr_pos[mid] < p.at) {
                lo = mid + 1u;
            } else {
                hi = mid;
            }
        }
        var acc = 0.0;
        var acc_t = 0.0;
        for (var q = lo; q < csr_start[u + 1u]; q++) {
            let pos = csr_pos[q];
            if (pos >= end) {
                break;
            }
            let off = pos - p.at;
            let i = off % p.seq_len;
            if (i < l) {
                let row = (off / p.seq_len) * l + i;
                acc = acc + g[row * p.h + c];
                if (p.tangent == 1u) {
                    acc_t = acc_t + g_t[row * p.h + c];
                }
            }
        }
        let e = p.ptok + u * p.h + c;
        if (p.want_grad == 1u) {
            out[e] = out[e] + acc;
        }
        if (p.want_hvp == 1u) {
            out_t[e] = out_t[e] + acc_t;
        }
    }
}

@compute @workgroup_size(64)
fn positions_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let l = p.seq_len - 1u;
    let total = l * p.h;
    for (var item = gid.x; item < total; item += nwg.x * WG) {
        let c = item % p.h;
        let i = item / p.h;
        var acc = 0.0;
        var acc_t = 0.0;
        for (var s = 0u; s < p.seqs; s++) {
            let r = (s * l + i) * p.h + c;
            acc = acc + g[r];
            if (p.tangent == 1u) {
                acc_t = acc_t + g_t[r];
            }
        }
        let q = p.ppos + i * p.h + c;
        if (p.want_grad == 1u) {
            out[q] = out[q] + acc;
        }
        if (p.want_hvp == 1u) {
            out_t[q] = out_t[q] + acc_t;
        }
    }
}
