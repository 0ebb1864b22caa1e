// embedding.cu — token + position embedding gather, and its deterministic scatter backward
// (crate learnlaw-cuda; the CUDA twin of kernels/wgsl/embedding.wgsl, entry for entry). CPU
// reference: `CpuKernels::embed_forward` and `embed_backward` (learnlaw-core
// transformer/cpu_kernels.rs).
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
//   Parameters (every entry, the WGSL's bindings 0–8 in order): ids, csr_start, csr_pos, theta,
//   dir, g, g_t, out, out_t, then EmbeddingParams by value (the WGSL's Params, 48 bytes). forward
//   reads theta (and dir when tangent == 1) and writes out (out_t); the backward entries read g
//   (g_t when tangent == 1) and add into out when want_grad == 1, into out_t when want_hvp == 1.
//   Any buffer an entry does not touch in its mode may be null.
// Geometry: blocks of 64 threads (BLOCK, the WGSL's workgroup), grid = the wgpu dispatch's
//   workgroup count (⌈items / 64⌉, at most 65535), grid-striding over the items: forward one
//   thread per (row, column); tokens_backward one per (id, column), which binary-searches its id's
//   positions for the chunk's window; positions_backward one per (position, column). 32-bit
//   indices, as in the WGSL.
// Arithmetic: the WGSL's, each sum in row order (bit-reproducible run to run, no atomics).
// Variants: tokens_backward finds the window's end by a second binary search instead of testing
//   each position against it (the WGSL's `break`), so its loop has a known trip count and its
//   loads can be issued ahead (same positions, same order, same sums); the backward loops are
//   unrolled by 4 (the adds stay in order; only the loads move ahead).

#define BLOCK 64

// Mirrors the WGSL's Params (and `EmbeddingParams` of the Rust side, #[repr(C)], 48 bytes).
struct EmbeddingParams {
    unsigned int at;
    unsigned int seqs;
    unsigned int seq_len;
    unsigned int h;
    unsigned int vocab;
    unsigned int ptok;
    unsigned int ppos;
    unsigned int tangent;
    unsigned int want_grad;
    unsigned int want_hvp;
    unsigned int csr_vocab;
    unsigned int _pad;
};

extern "C" __global__ void __launch_bounds__(BLOCK) forward(
    const unsigned int* __restrict__ ids, const unsigned int* __restrict__ csr_start,
    const unsigned int* __restrict__ csr_pos, const float* __restrict__ theta, const float* __restrict__ dir,
    const float* __restrict__ g, const float* __restrict__ g_t, float* out, float* out_t, EmbeddingParams p) {
    const unsigned int l = p.seq_len - 1u;
    const unsigned int total = p.seqs * l * p.h;
    for (unsigned int item = blockIdx.x * BLOCK + threadIdx.x; item < total; item += gridDim.x * BLOCK) {
        const unsigned int c = item % p.h;
        const unsigned int row = item / p.h;
        const unsigned int i = row % l;
        const unsigned int u = ids[p.at + (row / l) * p.seq_len + i];
        const unsigned int e = p.ptok + u * p.h + c;
        const unsigned int q = p.ppos + i * p.h + c;
        out[item] = theta[e] + theta[q];
        if (p.tangent == 1u) {
            out_t[item] = dir[e] + dir[q];
        }
    }
}

// The first index in [lo, hi) of csr_pos (ascending there) whose position is ≥ bound (hi if none).
__device__ __forceinline__ unsigned int first_at_or_after(const unsigned int* __restrict__ csr_pos, unsigned int lo,
                                                          unsigned int hi, unsigned int bound) {
    while (lo < hi) {
        const unsigned int mid = (lo + hi) / 2u;
        if (csr_pos[mid] < bound) {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    return lo;
}

extern "C" __global__ void __launch_bounds__(BLOCK) tokens_backward(
    const unsigned int* __restrict__ ids, const unsigned int* __restrict__ csr_start,
    const unsigned int* __restrict__ csr_pos, const float* __restrict__ theta, const float* __restrict__ dir,
    const float* __restrict__ g, const float* __restrict__ g_t, float* out, float* out_t, EmbeddingParams p) {
    const unsigned int l = p.seq_len - 1u;
    const unsigned int end = p.at + p.seqs * p.seq_len;
    const unsigned int total = min(p.vocab, p.csr_vocab) * p.h;
    const bool tan = p.tangent == 1u;
    for (unsigned int item = blockIdx.x * BLOCK + threadIdx.x; item < total; item += gridDim.x * BLOCK) {
        const unsigned int c = item % p.h;
        const unsigned int u = item / p.h;
        // u's positions in the window [at, end): the WGSL searches the first, then walks until a
        // position ≥ end; the positions ascend, so the walk ends where the second search says.
        const unsigned int s0 = csr_start[u], s1 = csr_start[u + 1u];
        const unsigned int lo = first_at_or_after(csr_pos, s0, s1, p.at);
        const unsigned int hi = first_at_or_after(csr_pos, lo, s1, end);
        float acc = 0.0f;
        float acc_t = 0.0f;
#pragma unroll 4
        for (unsigned int q = lo; q < hi; q++) {
            const unsigned int off = csr_pos[q] - p.at;
            const unsigned int i = off % p.seq_len;
            if (i < l) {
                const unsigned int row = (off / p.seq_len) * l + i;
                acc = acc + g[row * p.h + c];
                if (tan) {
                    acc_t = acc_t + g_t[row * p.h + c];
                }
            }
        }
        const unsigned int e = p.ptok + u * p.h + c;
        if (p.want_grad == 1u) {
            out[e] = out[e] + acc;
        }
        if (p.want_hvp == 1u) {
            out_t[e] = out_t[e] + acc_t;  // + 0 when the gradient has no tangent, like the WGSL
        }
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK) positions_backward(
    const unsigned int* __restrict__ ids, const unsigned int* __restrict__ csr_start,
    const unsigned int* __restrict__ csr_pos, const float* __restrict__ theta, const float* __restrict__ dir,
    const float* __restrict__ g, const float* __restrict__ g_t, float* out, float* out_t, EmbeddingParams p) {
    const unsigned int l = p.seq_len - 1u;
    const unsigned int total = l * p.h;
    const bool tan = p.tangent == 1u;
    for (unsigned int item = blockIdx.x * BLOCK + threadIdx.x; item < total; item += gridDim.x * BLOCK) {
        const unsigned int c = item % p.h;
        const unsigned int i = item / p.h;
        float acc = 0.0f;
        float acc_t = 0.0f;
        if (tan) {
#pragma unroll 4
            for (unsigned int s = 0; s < p.seqs; s++) {
                const unsigned int r = (s * l + i) * p.h + c;
                acc = acc + g[r];
                acc_t = acc_t + g_t[r];
            }
        } else {
#pragma unroll 4
            for (unsigned int s = 0; s < p.seqs; s++) {
                acc = acc + g[(s * l + i) * p.h + c];
            }
        }
        const unsigned int q = p.ppos + i * p.h + c;
        if (p.want_grad == 1u) {
            out[q] = out[q] + acc;
        }
        if (p.want_hvp == 1u) {
            out_t[q] = out_t[q] + acc_t;
        }
    }
}
