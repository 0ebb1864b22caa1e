// simplex.cu — exact Euclidean projection of every row of a [rows, N] f32 buffer onto the
// probability simplex Δ = {p : Σp = 1, p ≥ 0} (crate learnlaw-cuda; CPU reference:
// learnlaw_core::simplex::project_sorted; the WGSL twin is kernels/wgsl/simplex.wgsl).
//
// Math: p_i = max(v_i − τ, 0) with τ the unique root of f(τ) = Σ_i max(v_i − τ, 0) = 1. f is
// continuous, decreasing and piecewise linear, f(max v − 1) ≥ 1 and f(max v) = 0, so τ ∈ [m − 1, m).
// Once the support S = {i : v_i > τ} is known, τ = (Σ_S v_i − 1)/|S| exactly. Each pass over the
// row evaluates, in one sweep, (Σ (v − t), #{v > t}) at two thresholds, the current lower bound lo
// and the midpoint mid of [lo, hi]:
//   * Michelot's step from a lower bound t with support S_t ⊇ S: t' = t + (Σ_{S_t}(v − t) − 1)/|S_t|
//     is again a lower bound, t ≤ t' ≤ τ; when |S_{t'}| = |S_t| the support is final and t' = τ;
//   * bisection: f(mid) ≥ 1 ⇒ mid is a lower bound (take Michelot's step from it too), else hi = mid.
// Michelot usually finishes in a handful of passes (≈ 3–6 on policies after a gradient step); the
// bisection bounds the worst case. Sums are f64 (taken relative to the threshold, terms ≈ p_i), so
// τ is as exact as the CPU reference's; the result is rounded to f32 once.
//
// Kernels (launch count per projection: 2, plus an 16-byte flag upload and readback):
//   check_finite — grid-stride over all rows·N elements (blocks of 256): any NaN/±Inf (exponent
//     bits all ones) sets flag[0] = 1 and flag[1] = min(flag[1], index) (u64, index < 2^64).
//   project_rows — one block of 256 threads per row (grid-stride over rows if rows > grid); does
//     nothing when flag[0] ≠ 0, so a non-finite policy is reported (Error::Numerical) and left
//     untouched, like the CPU engine. Every block reduction is warp butterflies then the 8 warp
//     values summed in order by every thread, so all threads hold identical bits and take the same
//     branches, and the result is reproducible.
// Buffers: v [rows·N] f32 (in place), flag [2] u64.
// Variants: v1 (this) scans the row ~2 + passes times from global memory (L2-resident for the
//   paper's N = 4096). Not yet: caching the row in shared memory for N ≤ 48K, a sort-based variant.
//
// The exponentiated-gradient (mirror-descent) step keeps rows on Δ without a projection (CPU
// reference: the default `Engine::exp_grad_rows`, in f64):
//   γ_{r,i} ← γ_{r,i} e^{−s (g_{r,i} − m_r)} / Σ_j γ_{r,j} e^{−s (g_{r,j} − m_r)},  m_r = min_j g_{r,j}
// (subtracting m_r keeps every exponent ≤ 0: no overflow). Weights and sums in f64, rounded once.
//   exp_grad_sums — one block per row (grid-stride): m_r (NaN ignored, like the reference's
//     f64::min) and the sum into stats[2r], stats[2r + 1]; a sum that is not a positive finite
//     number sets flag[0] = 1, flag[1] = min(flag[1], r).
//   exp_grad_apply — same geometry; nothing when flag[0] ≠ 0 (γ is left untouched and the engine
//     reports Error::Numerical), else the update.
// Buffers: γ [rows·N] f32 (in place), g [rows·N] f32, stats [2·rows] f64, flag [2] u64.

#define WARP 32
#define WARPS 8
#define BLOCK (WARP * WARPS)
#define MAX_PASSES 200
#define INF_D __longlong_as_double(0x7ff0000000000000LL)

extern "C" __global__ void __launch_bounds__(BLOCK) check_finite(const float* __restrict__ v, unsigned long long len,
                                                                 unsigned long long* flag) {
    for (unsigned long long i = (unsigned long long)blockIdx.x * BLOCK + threadIdx.x; i < len;
         i += (unsigned long long)gridDim.x * BLOCK) {
        unsigned int bits = __float_as_uint(v[i]);
        if ((bits & 0x7f800000u) == 0x7f800000u) {
            atomicOr(flag, 1ull);
            atomicMin(flag + 1, i);
        }
    }
}

struct Sums {
    double sa, sb;  // Σ_{v > lo} (v − lo), Σ_{v > mid} (v − mid)
    double ca, cb;  // #{v > lo}, #{v > mid} (exact in f64)
};

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
    return v;
}

__device__ __forceinline__ double warp_max_d(double v) {
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, m));
    return v;
}

// Block-wide sums of four values; every thread returns the same bits.
__device__ Sums block_sums(Sums s, double (*sh)[WARPS]) {
    const unsigned int lane = threadIdx.x & (WARP - 1), warp = threadIdx.x / WARP;
    s.sa = warp_sum_d(s.sa);
    s.sb = warp_sum_d(s.sb);
    s.ca = warp_sum_d(s.ca);
    s.cb = warp_sum_d(s.cb);
    if (lane == 0) {
        sh[0][warp] = s.sa;
        sh[1][warp] = s.sb;
        sh[2][warp] = s.ca;
        sh[3][warp] = s.cb;
    }
    __syncthreads();
    Sums r = {0.0, 0.0, 0.0, 0.0};
#pragma unroll
    for (int w = 0; w < WARPS; w++) {
        r.sa += sh[0][w];
        r.sb += sh[1][w];
        r.ca += sh[2][w];
        r.cb += sh[3][w];
    }
    __syncthreads();  // sh is reused by the next call
    return r;
}

extern "C" __global__ void __launch_bounds__(BLOCK) project_rows(float* __restrict__ v, unsigned long long n,
                                                                 unsigned long long rows,
                                                                 const unsigned long long* __restrict__ flag) {
    __shared__ double sh[4][WARPS];
    if (flag[0] != 0ull) return;
    const unsigned int lane = threadIdx.x & (WARP - 1), warp = threadIdx.x / WARP;
    for (unsigned long long row = blockIdx.x; row < rows; row += gridDim.x) {
        float* x = v + row * n;

        // The row maximum.
        double m = -1.0e300;
        for (unsigned long long i = threadIdx.x; i < n; i += BLOCK) m = fmax(m, (double)x[i]);
        m = warp_max_d(m);
        if (lane == 0) sh[0][warp] = m;
        __syncthreads();
        double top = sh[0][0];
#pragma unroll
        for (int w = 1; w < WARPS; w++) top = fmax(top, sh[0][w]);
        __syncthreads();

        double lo = top - 1.0;  // f(lo) ≥ 1
        double hi = top;        // f(hi) < 1
        double c_src = -1.0;    // support size at the threshold lo was derived from (none yet)
        double tau = lo;
        for (int it = 0; it < MAX_PASSES; it++) {
            double mid = lo + 0.5 * (hi - lo);
            Sums s = {0.0, 0.0, 0.0, 0.0};
            for (unsigned long long i = threadIdx.x; i < n; i += BLOCK) {
                double xi = (double)x[i];
                if (xi > lo) {
                    s.sa += xi - lo;
                    s.ca += 1.0;
                }
                if (xi > mid) {
                    s.sb += xi - mid;
                    s.cb += 1.0;
                }
            }
            s = block_sums(s, sh);
            // Michelot's step from lo (ca ≥ 1: the maximum always exceeds lo).
            double ta = lo + (s.sa - 1.0) / fmax(s.ca, 1.0);
            tau = ta;
            if (s.ca == c_src) break;  // the support did not change: ta is exact
            double new_lo = ta, new_src = s.ca;
            if (s.sb >= 1.0 && s.cb > 0.0) {
                double tb = mid + (s.sb - 1.0) / s.cb;
                if (tb > new_lo) {
                    new_lo = tb;
                    new_src = s.cb;
                }
            } else {
                hi = fmin(hi, mid);
            }
            if (!(new_lo > lo) || !(new_lo < hi)) break;  // down to rounding: ta stands
            lo = new_lo;
            c_src = new_src;
        }

        for (unsigned long long i = threadIdx.x; i < n; i += BLOCK) x[i] = (float)fmax((double)x[i] - tau, 0.0);
        __syncthreads();
    }
}

// Block-wide minimum (NaN ignored) or sum of one double; every thread returns the same bits.
__device__ double block_reduce_d(double v, bool is_min, double* sh) {
    const unsigned int lane = threadIdx.x & (WARP - 1), warp = threadIdx.x / WARP;
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) {
        double o = __shfl_xor_sync(0xffffffffu, v, m);
        v = is_min ? fmin(v, o) : v + o;
    }
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    double r = sh[0];
#pragma unroll
    for (int w = 1; w < WARPS; w++) r = is_min ? fmin(r, sh[w]) : r + sh[w];
    __syncthreads();  // sh is reused by the next call
    return r;
}

extern "C" __global__ void __launch_bounds__(BLOCK) exp_grad_sums(const float* __restrict__ gamma, const float* __restrict__ g,
                                                                  double step, unsigned long long n, unsigned long long rows,
                                                                  double* __restrict__ stats, unsigned long long* flag) {
    __shared__ double sh[WARPS];
    for (unsigned long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const float *x = gamma + row * n, *d = g + row * n;
        double m = INF_D;
        for (unsigned long long i = threadIdx.x; i < n; i += BLOCK) m = fmin(m, (double)d[i]);
        m = block_reduce_d(m, true, sh);
        double s = 0.0;
        for (unsigned long long i = threadIdx.x; i < n; i += BLOCK) s += (double)x[i] * exp(-step * ((double)d[i] - m));
        s = block_reduce_d(s, false, sh);
        if (threadIdx.x == 0) {
            stats[2 * row] = m;
            stats[2 * row + 1] = s;
            if (!(s > 0.0 && s < INF_D)) {
                atomicOr(flag, 1ull);
                atomicMin(flag + 1, row);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK) exp_grad_apply(float* __restrict__ gamma, const float* __restrict__ g,
                                                                   double step, unsigned long long n, unsigned long long rows,
                                                                   const double* __restrict__ stats,
                                                                   const unsigned long long* __restrict__ flag) {
    if (flag[0] != 0ull) return;
    for (unsigned long long row = blockIdx.x; row < rows; row += gridDim.x) {
        float *x = gamma + row * n;
        const float* d = g + row * n;
        const double m = stats[2 * row], s = stats[2 * row + 1];
        for (unsigned long long i = threadIdx.x; i < n; i += BLOCK) x[i] = (float)((double)x[i] * exp(-step * ((double)d[i] - m)) / s);
    }
}
