// gemm.cu — GEMM on value/tangent pairs, strided-batched, either operand transposed (crate
// learnlaw-cuda, the Transformer's linear layers, LM head and their backward; the WGSL twin is
// kernels/wgsl/gemm.wgsl).
//
// Math (per batch matrix b, op(X) = X or Xᵀ as stored):
//   value    C ← op(A)·op(B) + β·C                     (flags & 1)
//   tangent  Ċ ← op(Ȧ)·op(B) + op(A)·op(Ḃ) + β·Ċ       (flags & 2; entry gemm_pair)
//   β = 0 overwrites C (a NaN there does not propagate). CPU reference: `CpuKernels::gemm`
//   (learnlaw-core transformer/cpu_kernels.rs).
// Buffers (f32): a, a_t [aa + batch·sa], b, b_t [ab + batch·sb], c, c_t [ac + batch·sc]. A is stored
//   [m, k] row-major (ta = 0) or [k, m] (ta = 1); B [k, n] or [n, k]; C [m, n]; matrix b of an
//   operand starts `s·b` elements after its first. Unused pointers are null and never read.
// Geometry: blocks of 256 threads, one 64×64 tile of C per block iteration (blocks stride over
//   batch × tiles_m × tiles_n); k walked in slices of 16 staged in shared memory (A and B, and Ȧ and
//   Ḃ for gemm_pair); each thread keeps 4×4 elements of C (rows ty + 16q, columns tx + 16e: a
//   warp reads 2 broadcast A values and 16 consecutive B values per k, no bank conflicts) and,
//   for gemm_pair, their tangents. Tile loads are coalesced along the operand's stored rows
//   whatever the transposes.
// Variants: WGSL `gemm` (16×16 shared tiles, one element per thread) → WGSL `gemm_blocked` (4×4
//   register blocks, no shared memory) → this (64×64 shared tiles feeding 4×4 register blocks).
//   Next: double-buffered cp.async loads, and bf16 mma.sync tensor-core tiles for 16-bit storage.
// Summation: each element adds its k products in order, in f32 (deterministic run to run).

#define BLOCK 256
#define TILE 64
#define KS 16
// Row length of the shared tiles: one float of padding, so the stores of untransposed operands
// (consecutive threads at consecutive kk) hit distinct banks.
#define LD (TILE + 1)

struct GemmParams {
    unsigned int m, n, k, batch;
    unsigned int sa, sb, sc;
    unsigned int aa, ab, ac;
    unsigned int ta, tb;
    float beta;
    unsigned int flags;
    unsigned int tiles_m, tiles_n;
};

// Stages op(X)[r0.., k0..] of one operand into s[KS][LD] (s[kk][r] = op(X)[r0 + r, k0 + kk]),
// zero outside the matrix. `trans` = 0: X stored [rows, k] (row stride k); 1: stored [k, rows].
// Threads walk the stored rows' contiguous direction, so a warp reads consecutive addresses.
__device__ __forceinline__ void stage(float (*s)[LD], const float* __restrict__ x, unsigned long long base, unsigned int trans,
                                      unsigned int rows, unsigned int k, unsigned int r0, unsigned int k0, unsigned int tid) {
    if (trans) {
        // Stored [k, rows]: consecutive threads take consecutive r.
#pragma unroll
        for (int q = 0; q < TILE * KS / BLOCK; ++q) {
            const unsigned int r = tid % TILE, kk = tid / TILE + q * (BLOCK / TILE);
            const unsigned int gr = r0 + r, gk = k0 + kk;
            s[kk][r] = (gr < rows && gk < k) ? x[base + (unsigned long long)gk * rows + gr] : 0.0f;
        }
    } else {
        // Stored [rows, k]: consecutive threads take consecutive kk.
#pragma unroll
        for (int q = 0; q < TILE * KS / BLOCK; ++q) {
            const unsigned int kk = tid % KS, r = tid / KS + q * (BLOCK / KS);
            const unsigned int gr = r0 + r, gk = k0 + kk;
            s[kk][r] = (gr < rows && gk < k) ? x[base + (unsigned long long)gr * k + gk] : 0.0f;
        }
    }
}

template <bool TANGENT>
__device__ __forceinline__ void gemm_tiles(const float* __restrict__ a, const float* __restrict__ a_t, const float* __restrict__ b,
                                           const float* __restrict__ b_t, float* c, float* c_t, const GemmParams& p) {
    __shared__ float sa[KS][LD], sb[KS][LD];
    __shared__ float sat[TANGENT ? KS : 1][LD], sbt[TANGENT ? KS : 1][LD];
    const unsigned int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const unsigned int per_batch = p.tiles_m * p.tiles_n, total = p.batch * per_batch;
    const bool value = (p.flags & 1u) != 0u;
    // op(B)ᵀ is B's "rows" view: op(B)[kk, j] = Bᵀ-view[j, kk], stored [n, k] when tb = 1.
    const unsigned int b_trans = p.tb ? 0u : 1u;
    for (unsigned int tile = blockIdx.x; tile < total; tile += gridDim.x) {
        const unsigned int bi = tile / per_batch, r = tile % per_batch;
        const unsigned int i0 = (r / p.tiles_n) * TILE, j0 = (r % p.tiles_n) * TILE;
        const unsigned long long a_base = p.aa + (unsigned long long)bi * p.sa, b_base = p.ab + (unsigned long long)bi * p.sb;
        float acc[4][4], acc_t[4][4];
#pragma unroll
        for (int q = 0; q < 4; ++q)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[q][e] = acc_t[q][e] = 0.0f;
        for (unsigned int k0 = 0; k0 < p.k; k0 += KS) {
            stage(sa, a, a_base, p.ta, p.m, p.k, i0, k0, tid);
            stage(sb, b, b_base, b_trans, p.n, p.k, j0, k0, tid);
            if (TANGENT) {
                stage(sat, a_t, a_base, p.ta, p.m, p.k, i0, k0, tid);
                stage(sbt, b_t, b_base, b_trans, p.n, p.k, j0, k0, tid);
            }
            __syncthreads();
            const unsigned int kn = min((unsigned int)KS, p.k - k0);
            for (unsigned int kk = 0; kk < kn; ++kk) {
                float x[4], y[4];
#pragma unroll
                for (int q = 0; q < 4; ++q) x[q] = sa[kk][ty + 16 * q];
#pragma unroll
                for (int e = 0; e < 4; ++e) y[e] = sb[kk][tx + 16 * e];
                if (TANGENT) {
                    float xt[4], yt[4];
#pragma unroll
                    for (int q = 0; q < 4; ++q) xt[q] = sat[kk][ty + 16 * q];
#pragma unroll
                    for (int e = 0; e < 4; ++e) yt[e] = sbt[kk][tx + 16 * e];
#pragma unroll
                    for (int q = 0; q < 4; ++q)
#pragma unroll
                        for (int e = 0; e < 4; ++e) acc_t[q][e] += xt[q] * y[e] + x[q] * yt[e];
                }
#pragma unroll
                for (int q = 0; q < 4; ++q)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[q][e] += x[q] * y[e];
            }
            __syncthreads();
        }
        const unsigned long long c_base = p.ac + (unsigned long long)bi * p.sc;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const unsigned int i = i0 + ty + 16 * q;
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const unsigned int j = j0 + tx + 16 * e;
                if (i < p.m && j < p.n) {
                    const unsigned long long ix = c_base + (unsigned long long)i * p.n + j;
                    if (value) c[ix] = p.beta != 0.0f ? acc[q][e] + p.beta * c[ix] : acc[q][e];
                    if (TANGENT) c_t[ix] = p.beta != 0.0f ? acc_t[q][e] + p.beta * c_t[ix] : acc_t[q][e];
                }
            }
        }
    }
}

// C only (flags = 1): a_t, b_t and c_t are not read.
extern "C" __global__ void __launch_bounds__(BLOCK) gemm_value(const float* __restrict__ a, const float* __restrict__ a_t,
                                                               const float* __restrict__ b, const float* __restrict__ b_t, float* c,
                                                               float* c_t, const GemmParams p) {
    gemm_tiles<false>(a, a_t, b, b_t, c, c_t, p);
}

// Ċ, and C when flags & 1.
extern "C" __global__ void __launch_bounds__(BLOCK) gemm_pair(const float* __restrict__ a, const float* __restrict__ a_t,
                                                              const float* __restrict__ b, const float* __restrict__ b_t, float* c,
                                                              float* c_t, const GemmParams p) {
    gemm_tiles<true>(a, a_t, b, b_t, c, c_t, p);
}
