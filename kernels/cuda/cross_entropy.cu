// cross_entropy.cu — the LM head's per-token masked cross-entropy on a chunk of logits, fused
// into the head (crate learnlaw-cuda; the CUDA twin of kernels/wgsl/cross_entropy.wgsl, entry for
// entry). The engine computes logits z = x·W (and ż) for a chunk of rows at a time with its GEMM,
// so [tokens, vocab] never exists for a whole set, and the backward recomputes each chunk's
// logits. CPU reference: `CpuKernels::head_forward` and `head_backward` (learnlaw-core
// transformer/cpu_kernels.rs).
//
// Math, per row r with label y (PAD rows excluded), p = softmax(z):
//   forward_rows  lse = max z + ln Σ exp(z − max z); loss_r = lse − z_y;
//                 tangent: mean_r = Σ_v p_v ż_v, dot_r = mean_r − ż_y  (= ∇loss_r·v)
//   sequences     l_n = Σ_rows of n loss_r / count_n, l̇_n likewise (count_n = non-PAD labels,
//                 at least 1), summed in row order
//   backward_rows gz = w_n/count_n · (p − onehot(y)); ġz = w_n/count_n · p ⊙ (ż − mean_r),
//                 written over z and ż in place (then the GEMMs: gx += gz Wᵀ, ∇W += xᵀ gz)
// Buffers: ids u32 (token rows; the label of row s·L + i is ids[at + s·seq_len + i + 1]);
//   z, ż [rows, vocab] f32 (the chunk, rows r0..r0 + rows of the set's M); stats [M, 4] f32:
//   loss, dot, lse, mean per row; losses, dots, counts [seqs] f32; weights (γ) f32 at w_at.
//   Parameters: the storage buffers the entry binds, in the WGSL's binding order (forward_rows
//   0–3, sequences 0, 5–8, backward_rows 0, 9–13), then CrossEntropyParams by value (the WGSL's
//   Params, 32 bytes). ż, dots are only touched when tangent == 1 (null otherwise).
// Geometry: blocks of 64 threads (BLOCK, the WGSL's workgroup). forward_rows/backward_rows: a
//   block per row of the chunk (grid = min(rows, 65535) blocks, striding over the rows), lane t
//   taking columns t, t + 64, …; sequences: one thread per sequence (grid = ⌈seqs / 64⌉).
// Arithmetic: the WGSL's, term for term in the same order; the row max and sums are the WGSL's
//   64-wide tree (pairs (t, t + 32), then (t, t + 16), … (0, 1)), so results are bit-reproducible
//   run to run. NVRTC contracts a·b + c into FMAs (its default --fmad=true); the wgpu backend may
//   not, so the two agree to rounding, not bit for bit.
// Variants: the WGSL's tree runs in workgroup memory with a barrier per level (8 per reduction);
//   here its first level (across the two warps) goes through shared memory and the other five are
//   warp butterflies (__shfl_xor_sync; IEEE addition and fmaxf are commutative, so every lane
//   ends with the tree's root, bit for bit): one barrier per reduction, with two shared buffers
//   used in turn so that no barrier is needed after reading one.

#define BLOCK 64
#define PAD 1u

// Mirrors the WGSL's Params (and `CrossEntropyParams` of the Rust side, #[repr(C)], 32 bytes).
struct CrossEntropyParams {
    unsigned int at;
    unsigned int seqs;
    unsigned int seq_len;
    unsigned int vocab;
    unsigned int r0;
    unsigned int rows;
    unsigned int tangent;
    unsigned int w_at;
};

__device__ __forceinline__ unsigned int label(const unsigned int* __restrict__ ids, const CrossEntropyParams& p,
                                              unsigned int row) {
    const unsigned int l = p.seq_len - 1u;
    return ids[p.at + (row / l) * p.seq_len + row % l + 1u];
}

// The WGSL's tree reduction over the block's 64 values, in its order; every thread gets the
// root. `red` is one of two [BLOCK] shared buffers, alternated by the caller between successive
// reductions: a thread writes a buffer again only after the barrier of the next reduction, which
// every thread reaches after its reads of this one.
__device__ __forceinline__ float block_max(float* red, float v) {
    red[threadIdx.x] = v;
    __syncthreads();
    const unsigned int lane = threadIdx.x & 31u;
    float m = fmaxf(red[lane], red[lane + 32u]);  // level 32
#pragma unroll
    for (unsigned int w = 16; w > 0; w >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, w));
    return m;
}

__device__ __forceinline__ float block_sum(float* red, float v) {
    red[threadIdx.x] = v;
    __syncthreads();
    const unsigned int lane = threadIdx.x & 31u;
    float s = red[lane] + red[lane + 32u];  // level 32
#pragma unroll
    for (unsigned int w = 16; w > 0; w >>= 1) s = s + __shfl_xor_sync(0xffffffffu, s, w);
    return s;
}

extern "C" __global__ void __launch_bounds__(BLOCK) forward_rows(const unsigned int* __restrict__ ids,
                                                                 const float* __restrict__ z,
                                                                 const float* __restrict__ z_t, float* stats,
                                                                 CrossEntropyParams p) {
    __shared__ float red[2][BLOCK];
    unsigned int buf = 0;  // the shared buffer of the next reduction
    const unsigned int v = p.vocab, lid = threadIdx.x;
    const bool tan = p.tangent == 1u;
    // The loop bounds and the branches around reductions are uniform over the block.
    for (unsigned int lr = blockIdx.x; lr < p.rows; lr += gridDim.x) {
        const unsigned int row = p.r0 + lr;
        const unsigned int y = label(ids, p, row);
        const size_t zr = (size_t)lr * v;
        float mx = -3.0e38f;
        for (unsigned int c = lid; c < v; c += BLOCK) mx = fmaxf(mx, z[zr + c]);
        mx = block_max(red[buf], mx);
        buf ^= 1u;
        float se = 0.0f;
        for (unsigned int c = lid; c < v; c += BLOCK) se = se + expf(z[zr + c] - mx);
        const float sum = block_sum(red[buf], se);
        buf ^= 1u;
        const float lse = mx + logf(sum);
        float mean = 0.0f;
        if (tan) {
            float m = 0.0f;
            for (unsigned int c = lid; c < v; c += BLOCK) m = m + expf(z[zr + c] - lse) * z_t[zr + c];
            mean = block_sum(red[buf], m);
            buf ^= 1u;
        }
        if (lid == 0u) {
            // WGSL `select` evaluates both sides (it reads z[y], and ż[y] outside tangent mode:
            // the dummy binding); here only the side taken is read.
            const bool pad = y == PAD;
            stats[(size_t)row * 4u] = pad ? 0.0f : lse - z[zr + y];
            stats[(size_t)row * 4u + 1u] = pad ? 0.0f : (tan ? mean - z_t[zr + y] : 0.0f);
            stats[(size_t)row * 4u + 2u] = lse;
            stats[(size_t)row * 4u + 3u] = mean;
        }
    }
}

// Per sequence: mean loss and dot over its non-PAD labels, and the count.
extern "C" __global__ void __launch_bounds__(BLOCK) sequences(const unsigned int* __restrict__ ids,
                                                              const float* __restrict__ sq_stats, float* losses,
                                                              float* dots, float* counts, CrossEntropyParams p) {
    const unsigned int n = blockIdx.x * BLOCK + threadIdx.x;
    if (n >= p.seqs) {
        return;
    }
    const unsigned int l = p.seq_len - 1u;
    unsigned int count = 0;
    float loss = 0.0f;
    float dot = 0.0f;
    for (unsigned int i = 0; i < l; i++) {
        const unsigned int row = n * l + i;
        if (label(ids, p, row) != PAD) {
            count += 1u;
            loss = loss + sq_stats[(size_t)row * 4u];
            dot = dot + sq_stats[(size_t)row * 4u + 1u];  // 0 unless the forward had tangents
        }
    }
    const float c = (float)max(count, 1u);
    losses[n] = loss / c;
    if (p.tangent == 1u) {
        dots[n] = dot / c;
    }
    counts[n] = (float)count;
}

// gz over z (and ġz over ż) in place for the chunk's rows.
extern "C" __global__ void __launch_bounds__(BLOCK) backward_rows(const unsigned int* __restrict__ ids,
                                                                  const float* __restrict__ b_stats,
                                                                  const float* __restrict__ b_counts,
                                                                  const float* __restrict__ weights, float* gz,
                                                                  float* gz_t, CrossEntropyParams p) {
    const unsigned int v = p.vocab, lid = threadIdx.x;
    const unsigned int l = p.seq_len - 1u;
    const bool tan = p.tangent == 1u;
    for (unsigned int lr = blockIdx.x; lr < p.rows; lr += gridDim.x) {
        const unsigned int row = p.r0 + lr;
        const unsigned int y = label(ids, p, row);
        const unsigned int n = row / l;
        const float count = b_counts[n];
        const size_t zr = (size_t)lr * v;
        const bool live = y != PAD && count > 0.0f;
        // WGSL `select` reads the weight whether or not the row is live; the value is the same.
        const float c = live ? weights[p.w_at + n] / fmaxf(count, 1.0f) : 0.0f;
        const float lse = b_stats[(size_t)row * 4u + 2u];
        const float mean = b_stats[(size_t)row * 4u + 3u];
        for (unsigned int k = lid; k < v; k += BLOCK) {
            const float pk = expf(gz[zr + k] - lse);
            if (tan) {
                gz_t[zr + k] = c * pk * (gz_t[zr + k] - mean);
            }
            gz[zr + k] = c * (pk - ((k == y && live) ? 1.0f : 0.0f));
        }
    }
}
