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

// ---------------------------------------------------------------------------------------------
// gemm_bf16_value / gemm_bf16_pair — the same products on tensor cores: operands rounded to bf16
// (nearest, ties to even) as they are staged in shared memory, products by mma.sync m16n8k16
// (bf16 × bf16 → f32), accumulation and C in f32. For the `cuda-bf16` Transformer engine: about
// three significant digits per operand, so its conformance tolerance is bf16's, not f32's.
// Geometry: blocks of 128 threads (4 warps) per 64×64 tile of C, k in slices of 32; warp w owns
//   the 32×32 quadrant (w / 2, w % 2): 2 × 4 mma tiles of 16×8, 32 accumulators per thread (and
//   32 for the tangent: Ċ += Ȧ·B and Ċ += A·Ḃ are two more mma per tile).
// Fragments (PTX ISA, mma.m16n8k16 with .bf16): lane = 4g + t; A (row-major 16×16) registers
//   {A[g][2t..], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..]}, B (16×8, by columns) {B[2t..][g],
//   B[2t+8..][g]}, C {C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]}; two bf16 per register, the
//   lower index in the low half. A is staged [row][k] and B as Bᵀ [col][k], so every fragment
//   register is one 32-bit shared load.
#define TC_THREADS 128
#define TC_KS 32
// Row length of the bf16 tiles in 16-bit units: 8 of padding, so the 8 rows a fragment load
// touches start in different banks.
#define TC_LD (TC_KS + 8)

// f32 → bf16 bits, nearest with ties to even; NaN stays a (quiet) NaN.
__device__ __forceinline__ unsigned int bf16_bits(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

#ifndef LEARNLAW_HOST_SIM
// d += a·b for one 16×8×16 tile on the warp's tensor cores (the host simulation has its own).
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// Stages op(X)[r0.., k0..] as bf16 into s[64][TC_LD] (s[r][kk] = op(X)[r0 + r, k0 + kk]), zero
// outside; `trans` as in `stage`. Consecutive threads read consecutive addresses.
__device__ __forceinline__ void stage_bf16(unsigned short (*s)[TC_LD], const float* __restrict__ x, unsigned long long base,
                                           unsigned int trans, unsigned int rows, unsigned int k, unsigned int r0, unsigned int k0,
                                           unsigned int tid) {
#pragma unroll 4
    for (unsigned int e = tid; e < TILE * TC_KS; e += TC_THREADS) {
        const unsigned int r = trans ? e % TILE : e / TC_KS, kk = trans ? e / TILE : e % TC_KS;
        const unsigned int gr = r0 + r, gk = k0 + kk;
        float v = 0.0f;
        if (gr < rows && gk < k) v = x[base + (trans ? (unsigned long long)gk * rows + gr : (unsigned long long)gr * k + gk)];
        s[r][kk] = (unsigned short)bf16_bits(v);
    }
}

// The A fragment of rows r.. and k.. of a staged tile, and the B fragment of columns n.. .
__device__ __forceinline__ void frag_a(unsigned int (&a)[4], unsigned short (*s)[TC_LD], unsigned int r, unsigned int k, unsigned int g,
                                       unsigned int t) {
    a[0] = *reinterpret_cast<const unsigned int*>(&s[r + g][k + 2 * t]);
    a[1] = *reinterpret_cast<const unsigned int*>(&s[r + g + 8][k + 2 * t]);
    a[2] = *reinterpret_cast<const unsigned int*>(&s[r + g][k + 2 * t + 8]);
    a[3] = *reinterpret_cast<const unsigned int*>(&s[r + g + 8][k + 2 * t + 8]);
}
__device__ __forceinline__ void frag_b(unsigned int (&b)[2], unsigned short (*s)[TC_LD], unsigned int n, unsigned int k, unsigned int g,
                                       unsigned int t) {
    b[0] = *reinterpret_cast<const unsigned int*>(&s[n + g][k + 2 * t]);
    b[1] = *reinterpret_cast<const unsigned int*>(&s[n + g][k + 2 * t + 8]);
}

template <bool TANGENT>
__device__ __forceinline__ void gemm_tensor_cores(const float* __restrict__ a, const float* __restrict__ a_t, const float* __restrict__ b,
                                                  const float* __restrict__ b_t, float* c, float* c_t, const GemmParams& p) {
    __shared__ __align__(16) unsigned short sa[TILE][TC_LD], sb[TILE][TC_LD];
    __shared__ __align__(16) unsigned short sat[TANGENT ? TILE : 1][TC_LD], sbt[TANGENT ? TILE : 1][TC_LD];
    const unsigned int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const unsigned int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
    const unsigned int per_batch = p.tiles_m * p.tiles_n, total = p.batch * per_batch;
    const bool value = (p.flags & 1u) != 0u;
    const unsigned int b_trans = p.tb ? 0u : 1u;
    for (unsigned int tile = blockIdx.x; tile < total; tile += gridDim.x) {
        const unsigned int bi = tile / per_batch, r = tile % per_batch;
        const unsigned int i0 = (r / p.tiles_n) * TILE, j0 = (r % p.tiles_n) * TILE;
        const unsigned long long a_base = p.aa + (unsigned long long)bi * p.sa, b_base = p.ab + (unsigned long long)bi * p.sb;
        float acc[2][4][4], acc_t[2][4][4];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[mi][ni][q] = acc_t[mi][ni][q] = 0.0f;
        for (unsigned int k0 = 0; k0 < p.k; k0 += TC_KS) {
            stage_bf16(sa, a, a_base, p.ta, p.m, p.k, i0, k0, tid);
            stage_bf16(sb, b, b_base, b_trans, p.n, p.k, j0, k0, tid);
            if (TANGENT) {
                stage_bf16(sat, a_t, a_base, p.ta, p.m, p.k, i0, k0, tid);
                stage_bf16(sbt, b_t, b_base, b_trans, p.n, p.k, j0, k0, tid);
            }
            __syncthreads();
#pragma unroll
            for (unsigned int kk = 0; kk < TC_KS; kk += 16) {
                unsigned int fa[2][4], fb[4][2];
#pragma unroll
                for (int mi = 0; mi < 2; ++mi) frag_a(fa[mi], sa, wm + 16 * mi, kk, g, t);
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) frag_b(fb[ni], sb, wn + 8 * ni, kk, g, t);
#pragma unroll
                for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                    for (int ni = 0; ni < 4; ++ni) mma_bf16_16816(acc[mi][ni], fa[mi], fb[ni]);
                if (TANGENT) {
                    unsigned int fat[2][4], fbt[4][2];
#pragma unroll
                    for (int mi = 0; mi < 2; ++mi) frag_a(fat[mi], sat, wm + 16 * mi, kk, g, t);
#pragma unroll
                    for (int ni = 0; ni < 4; ++ni) frag_b(fbt[ni], sbt, wn + 8 * ni, kk, g, t);
#pragma unroll
                    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                        for (int ni = 0; ni < 4; ++ni) {
                            mma_bf16_16816(acc_t[mi][ni], fat[mi], fb[ni]);
                            mma_bf16_16816(acc_t[mi][ni], fa[mi], fbt[ni]);
                        }
                }
            }
            __syncthreads();
        }
        const unsigned long long c_base = p.ac + (unsigned long long)bi * p.sc;
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const unsigned int i = i0 + wm + 16 * mi + g + 8 * (q / 2), j = j0 + wn + 8 * ni + 2 * t + (q % 2);
                    if (i < p.m && j < p.n) {
                        const unsigned long long ix = c_base + (unsigned long long)i * p.n + j;
                        if (value) c[ix] = p.beta != 0.0f ? acc[mi][ni][q] + p.beta * c[ix] : acc[mi][ni][q];
                        if (TANGENT) c_t[ix] = p.beta != 0.0f ? acc_t[mi][ni][q] + p.beta * c_t[ix] : acc_t[mi][ni][q];
                    }
                }
    }
}

extern "C" __global__ void __launch_bounds__(TC_THREADS) gemm_bf16_value(const float* __restrict__ a, const float* __restrict__ a_t,
                                                                         const float* __restrict__ b, const float* __restrict__ b_t,
                                                                         float* c, float* c_t, const GemmParams p) {
    gemm_tensor_cores<false>(a, a_t, b, b_t, c, c_t, p);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS) gemm_bf16_pair(const float* __restrict__ a, const float* __restrict__ a_t,
                                                                        const float* __restrict__ b, const float* __restrict__ b_t,
                                                                        float* c, float* c_t, const GemmParams p) {
    gemm_tensor_cores<true>(a, a_t, b, b_t, c, c_t, p);
}
