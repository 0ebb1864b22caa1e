// perceptron.cu — the perceptron's fused per-step kernels (crate learnlaw-cuda; compiled at first
// use by NVRTC, header-free; CPU reference: learnlaw_core::perceptron::{cpu, reference}).
//
// Math (per example n, logit z_n = x_n·θ, p_n = σ(z_n), label y_n ∈ {0, 1}):
//   l_n = softplus(z_n) − y_n z_n = max(z,0) − z y + log1p(exp(−|z|))   (stable BCE with logits)
//   ∇l_n = (p_n − y_n) x_n,   ∇²l_n = p_n(1 − p_n) x_n x_nᵀ
// Every quantity a step needs is a per-row coefficient c_n and Σ_n c_n x_n, and/or a per-row scalar:
//
//   mode       per row                                                       accumulated
//   FORWARD    c = γ_n (p − y); rows with γ_n = 0 are skipped (not even read)  Σ c x  (∇ of Σ γ l)
//   BACKWARD   u = x_n·λ_next (same pass as z); out[n] = coef·(p − y)·u        Σ c x  (H_t λ_next)
//              (coef = −η: row t of ∂J/∂γ); c = γ_n p(1−p) u (0 where γ_n = 0)
//   LOSS       l_n                                                            Σ l
//   GRAD       c = p − y, l_n                                                 Σ c x, Σ l
//   row_outputs: out[n] = l_n (train_losses) or (p − y)(x_n·v) (train_dots, ∇l_n·v without ∇l_n)
//
// One launch of `pass_*` is one whole engine step: its grid has two segments of blocks, segment 0
// over the training set (FORWARD or BACKWARD, or none) and segment 1 over an evaluation set (LOSS
// or GRAD, or none). Each block writes its partial sums (a D-vector and a loss), then the last
// block to retire (a retirement counter, threadFenceReduction pattern) reduces all partials in
// block order and writes the step's results (when the partials are large — blocks·D > 2^17, e.g.
// D = 4096 at N = 1M — one block would take ~100 µs for that, so `pass_finish` does it instead as
// a second launch with a thread per column):
//   out_vec[j]  = base[j] + a0·Σ_{b∈seg0} P[b, j] + a1·Σ_{b∈seg1} P[b, j]     (base, seg1 optional)
//   *out_scalar = s1·Σ_{b∈seg1} L[b]
//   forward step:  seg0 FORWARD(γ_t), seg1 LOSS(dev)  → θ_next = θ − η Σ, curve[i] = L_dev(θ)
//   backward step: seg0 BACKWARD(γ_t, λ_next), seg1 GRAD(dev)
//                  → λ = λ_next − η H_t λ_next + (w/K) Σ_dev (p − y) x;  ∂J/∂γ row t per row
//   loss / loss_grad: seg1 LOSS / GRAD on dev or test → mean loss (and mean gradient)
// So the launch count per step is 1 at the paper's size (forward, backward, loss, loss_grad;
// row_outputs 1), 2 for large problems (where a step takes milliseconds, so the launch is noise),
// and nothing is read back per step: the dev loss goes straight into the caller's curve slot.
// The engine replays a whole pass of the unroll (T such launches) as one CUDA graph (lib.rs).
// The reduction order is fixed (rows → warps by a fixed grid stride, warps in order, blocks in
// order), so results are bit-for-bit reproducible run to run on a given GPU (the block count
// depends on the SM count; the CPU engine's 256-row chunks are not reproduced bit for bit, only to
// the f32 tolerance).
//
// Buffers (row-major; accumulation in f32 like the CPU f32 engine, losses summed in f64):
//   x [rows, stride4] xvec: a data set, each row zero-padded to a multiple of 4 values, so every
//     load of X is one vector load of 4 values: a float4 (16 bytes) for f32 storage, a uint2
//     (8 bytes) of 4 f16 or bf16 for 16-bit storage (X_STORAGE below), widened to f32 on load;
//     y [rows] f32; θ, λ_next, v, base, out_vec [D] f32 (whole
//     allocations, so 16-byte aligned); γ row t and out row t: [rows] f32 at an element offset;
//   partials [blocks0 + blocks1, stride4] float4; loss_partials [blocks0 + blocks1] f64;
//   counter: one u32, 0 between launches (the last block resets it).
// Geometry: blocks of 256 threads = 8 warps; a warp per row (rows b·8 + w + k·G·8 for block b of a
//   segment of G blocks, warp w): lanes read consecutive float4s of the row (coalesced 512-byte
//   requests), the dot is a butterfly shuffle reduction (every lane ends with the same bits).
//   G = clamp(⌈rows / (8 warps · 8 rows)⌉, 1, resident blocks) per segment: at the paper's size
//   (N = 4096, K = 512) 64 + 8 blocks of 8 rows per warp; at N = 1M one wave of resident blocks
//   that grid-stride over the rows.
// Variants (naive → tuned):
//   v0 (not kept as a kernel): one thread per row, a second kernel per column summing c_n x_n over
//     all rows: X read twice, uncoalesced row reads.
//   pass_smem — any D: each warp accumulates c·x into its own D-vector in shared memory, re-reading
//     the row it has just read (an L1/L2 hit), so HBM sees X once. Dynamic shared memory
//     8·4·⌈D/4⌉·4 bytes (D = 4096: 128 KiB; above 48 KiB the engine opts in); the engine lowers the
//     warps per block when it does not fit (D ≲ 14000 runs at full occupancy of one block per SM).
//   pass_r{1,2,4} — D ≤ 128·R: the row stays in registers (R float4 per lane) between the dot
//     and the axpy, θ and λ are held in registers for the whole block, and each warp accumulates in
//     registers (R float4 per lane); shared memory only for the block's final reduction.
//     The paper's D = 128 is pass_r1: one float4 per lane per row. (R = 8 would need ~160
//     registers a thread, one block per SM: pass_smem is used above D = 512 instead.)
//   16-bit X (X_STORAGE 1/2): the same kernels reading half the bytes; the widening is exact, so
//     results equal the f32 kernels' on X rounded to f16/bf16 (what the conformance tests check).
//   Not yet: TMA/cp.async double buffering.

#define WARP 32
#define WARPS 8
#define BLOCK (WARP * WARPS)

// The storage of X, an NVRTC -D option (one module per storage): 0 f32, 1 f16, 2 bf16.
#ifndef X_STORAGE
#define X_STORAGE 0
#endif

#if X_STORAGE == 0
typedef float4 xvec;
__device__ __forceinline__ float4 load_x(const xvec* p) { return __ldg(p); }
#else
typedef uint2 xvec;  // 4 16-bit values, element 0 in the low half of .x (little-endian)
#if X_STORAGE == 1
__device__ __forceinline__ float widen(unsigned int h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"((unsigned short)h));
    return f;
}
__device__ __forceinline__ float lo(unsigned int w) { return widen(w & 0xffffu); }
__device__ __forceinline__ float hi(unsigned int w) { return widen(w >> 16); }
#elif X_STORAGE == 2
// bf16 is the top half of an f32: widening is a shift.
__device__ __forceinline__ float lo(unsigned int w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float hi(unsigned int w) { return __uint_as_float(w & 0xffff0000u); }
#else
#error "X_STORAGE must be 0 (f32), 1 (f16) or 2 (bf16)"
#endif
__device__ __forceinline__ float4 load_x(const xvec* p) {
    const uint2 v = __ldg(p);
    return make_float4(lo(v.x), hi(v.x), lo(v.y), hi(v.y));
}
#endif

#define MODE_NONE 0u
#define MODE_FORWARD 1u
#define MODE_BACKWARD 2u
#define MODE_LOSS 3u
#define MODE_GRAD 4u

// Mirrors `PassParams` in crates/learnlaw-cuda/src/lib.rs (#[repr(C)]; pointers are 8 bytes).
struct PassParams {
    const xvec* x0;          // segment 0 (training set): [rows0, stride4]
    const float* y0;         // [rows0]
    const float* gamma0;     // row t of γ: [rows0]
    float* out0;             // BACKWARD: row t of ∂J/∂γ: [rows0]
    const xvec* x1;          // segment 1 (an evaluation set): [rows1, stride4]
    const float* y1;         // [rows1]
    const float* theta;      // [dim]
    const float* vec;        // BACKWARD: λ_next [dim]
    const float* base;       // finish: added to out_vec (θ or λ_next), or null
    float* out_vec;          // finish: [dim], or null
    float* out_scalar;       // finish: one value (a dev-loss curve slot, the engine's scalar), or null
    float4* partials;        // [blocks0 + blocks1, stride4]
    double* loss_partials;   // [blocks0 + blocks1]
    unsigned int* counter;   // retirement counter
    unsigned int rows0, rows1, blocks0, blocks1;
    unsigned int dim, stride4, mode0, mode1;
    unsigned int warps;      // warps per block that take rows (≤ WARPS; pass_smem may use fewer)
    unsigned int fused_finish; // 1: the last block finishes (below); 0: pass_finish is launched next
    float coef;              // BACKWARD: out0[n] = coef·(p − y)·u
    float a0, a1, s1;        // finish weights (see the header)
};

__device__ __forceinline__ float sigmoidf_(float z) {
    float e = expf(-fabsf(z));
    float num = z >= 0.0f ? 1.0f : e;
    return num / (1.0f + e);
}

__device__ __forceinline__ float bce_with_logits(float z, float y) {
    return fmaxf(z, 0.0f) - z * y + log1pf(expf(-fabsf(z)));
}

// Butterfly sum: every lane ends with the same value (a + b == b + a bit for bit at each level).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
    return v;
}

__device__ __forceinline__ float dot4(float4 a, float4 b) {
    return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}

__device__ __forceinline__ void fma4(float4& acc, float c, float4 x) {
    acc.x = fmaf(c, x.x, acc.x);
    acc.y = fmaf(c, x.y, acc.y);
    acc.z = fmaf(c, x.z, acc.z);
    acc.w = fmaf(c, x.w, acc.w);
}

__device__ __forceinline__ float4 add4(float4 a, float4 b) {
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

// v[4k .. 4k+4) as a float4, zero past dim (X's padding is zero too). v is 16-byte aligned.
__device__ __forceinline__ float4 load4(const float* v, unsigned int k, unsigned int dim) {
    unsigned int j = 4u * k;
    if (j + 3u < dim) return __ldg(reinterpret_cast<const float4*>(v) + k);
    float4 r = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (j < dim) r.x = v[j];
    if (j + 1u < dim) r.y = v[j + 1u];
    if (j + 2u < dim) r.z = v[j + 2u];
    return r;
}

// What one block works on.
struct Segment {
    const xvec* x;
    const float* y;
    unsigned int rows, blocks, block, mode;
};

__device__ __forceinline__ Segment segment_of(const PassParams& p) {
    Segment s;
    if (blockIdx.x < p.blocks0) {
        s.x = p.x0; s.y = p.y0; s.rows = p.rows0; s.blocks = p.blocks0; s.block = blockIdx.x; s.mode = p.mode0;
    } else {
        s.x = p.x1; s.y = p.y1; s.rows = p.rows1; s.blocks = p.blocks1; s.block = blockIdx.x - p.blocks0; s.mode = p.mode1;
    }
    return s;
}

// The row's coefficient c (0: nothing to accumulate) and its per-row side effects.
__device__ __forceinline__ float row_coef(const PassParams& p, unsigned int mode, size_t r, float y, float g,
                                          float z, float u, double& lsum) {
    float c = 0.0f;
    if (mode == MODE_FORWARD) {
        c = g * (sigmoidf_(z) - y);
    } else if (mode == MODE_BACKWARD) {
        float q = sigmoidf_(z);
        if ((threadIdx.x & (WARP - 1)) == 0) p.out0[r] = p.coef * (q - y) * u;
        if (g != 0.0f) c = g * q * (1.0f - q) * u;
    } else if (mode == MODE_LOSS) {
        lsum += (double)bce_with_logits(z, y);
    } else if (mode == MODE_GRAD) {
        c = sigmoidf_(z) - y;
        lsum += (double)bce_with_logits(z, y);
    }
    return c;
}

// Σ_{b ∈ [b0, b1)} P[b, j], in block order (L2 loads: the partials were written by other blocks).
__device__ __forceinline__ float sum_partials(const PassParams& p, unsigned int j, unsigned int b0, unsigned int b1) {
    const float* P = reinterpret_cast<const float*>(p.partials);
    const size_t st = (size_t)p.stride4 * 4u;
    float t = 0.0f;
#pragma unroll 8
    for (unsigned int b = b0; b < b1; b++) t += __ldcg(P + (size_t)b * st + j);
    return t;
}

// out_vec[j] from the two segments' sums.
__device__ __forceinline__ void finish_column(const PassParams& p, unsigned int j, float u0, float u1) {
    float o = p.a0 * u0;
    if (p.mode1 == MODE_GRAD) o = fmaf(p.a1, u1, o);
    if (p.base) o = p.base[j] + o;
    p.out_vec[j] = o;
}

__device__ __forceinline__ void finish_scalar(const PassParams& p) {
    double s = 0.0;
    for (unsigned int b = p.blocks0; b < p.blocks0 + p.blocks1; b++) s += __ldcg(p.loss_partials + b);
    *p.out_scalar = (float)(s * (double)p.s1);
}

// After every block has written its partials: with p.fused_finish the last block to retire reduces
// them in block order and writes the results (one launch per step; the partials are small). Without
// it the engine launches pass_finish next (large D·blocks, where one block would be too slow).
__device__ void retire_and_finish(const PassParams& p) {
    if (!p.fused_finish) return;
    __shared__ bool s_last;
    __shared__ float s_fin[2][BLOCK];
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned int total = p.blocks0 + p.blocks1;
        s_last = atomicAdd(p.counter, 1u) == total - 1u;
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    const unsigned int dim = p.dim;
    const bool vec1 = p.mode1 == MODE_GRAD;
    if (p.out_vec) {
        // `slices` threads per column, each over a contiguous range of blocks, when D < BLOCK, so
        // more loads are in flight; the slices are then added in order.
        const unsigned int slices = dim >= BLOCK ? 1u : min(BLOCK / dim, 8u), cols = BLOCK / slices;
        const unsigned int s = threadIdx.x / cols;
        for (unsigned int j0 = 0; j0 < dim; j0 += cols) {
            const unsigned int j = j0 + threadIdx.x % cols;
            float t0 = 0.0f, t1 = 0.0f;
            if (s < slices && j < dim) {
                t0 = sum_partials(p, j, p.blocks0 * s / slices, p.blocks0 * (s + 1u) / slices);
                if (vec1) t1 = sum_partials(p, j, p.blocks0 + p.blocks1 * s / slices, p.blocks0 + p.blocks1 * (s + 1u) / slices);
            }
            s_fin[0][threadIdx.x] = t0;
            s_fin[1][threadIdx.x] = t1;
            __syncthreads();
            if (s == 0 && j < dim) {
                float u0 = 0.0f, u1 = 0.0f;
                for (unsigned int q = 0; q < slices; q++) {
                    u0 += s_fin[0][q * cols + threadIdx.x];
                    u1 += s_fin[1][q * cols + threadIdx.x];
                }
                finish_column(p, j, u0, u1);
            }
            __syncthreads();
        }
    }
    if (p.out_scalar && threadIdx.x == 0) finish_scalar(p);
    if (threadIdx.x == 0) *p.counter = 0u;
}

// Sums the warps' accumulators acc[w][k] (shared memory, [warps, stride4]) in warp order into the
// block's partials row, and the warps' losses into its loss partial; then retires.
__device__ __forceinline__ void block_reduce(const PassParams& p, const Segment& sg, float4* acc, unsigned int warps,
                                             double lsum) {
    __shared__ double s_loss[WARPS];
    const unsigned int lane = threadIdx.x & (WARP - 1), warp = threadIdx.x / WARP;
    if (lane == 0) s_loss[warp] = lsum;
    __syncthreads();
    if (sg.mode != MODE_LOSS && sg.mode != MODE_NONE) {
        for (unsigned int k = threadIdx.x; k < p.stride4; k += BLOCK) {
            float4 s = acc[k];
            for (unsigned int w = 1; w < warps; w++) s = add4(s, acc[(size_t)w * p.stride4 + k]);
            p.partials[(size_t)blockIdx.x * p.stride4 + k] = s;
        }
    }
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (unsigned int w = 0; w < warps; w++) s += s_loss[w];
        p.loss_partials[blockIdx.x] = s;
    }
    retire_and_finish(p);
}

// Register variant: D ≤ 128·R.
template <int R>
__device__ __forceinline__ void pass_reg(const PassParams& p) {
    extern __shared__ float4 smem4[];
    const Segment sg = segment_of(p);
    const unsigned int lane = threadIdx.x & (WARP - 1), warp = threadIdx.x / WARP;
    const unsigned int st4 = p.stride4;
    const bool two = sg.mode == MODE_BACKWARD;
    float4 th[R], lv[R], acc[R];
#pragma unroll
    for (int i = 0; i < R; i++) {
        unsigned int k = lane + WARP * i;
        th[i] = load4(p.theta, k, p.dim);
        lv[i] = two ? load4(p.vec, k, p.dim) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        acc[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    double lsum = 0.0;
    if (sg.mode != MODE_NONE) {
        for (size_t r = (size_t)sg.block * WARPS + warp; r < sg.rows; r += (size_t)sg.blocks * WARPS) {
            float g = 1.0f;
            if (sg.mode == MODE_FORWARD || sg.mode == MODE_BACKWARD) g = p.gamma0[r];
            if (sg.mode == MODE_FORWARD && g == 0.0f) continue;
            const xvec* xr = sg.x + r * st4;
            float4 xv[R];
            float z = 0.0f, u = 0.0f;
#pragma unroll
            for (int i = 0; i < R; i++) {
                unsigned int k = lane + WARP * i;
                xv[i] = k < st4 ? load_x(xr + k) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                z += dot4(xv[i], th[i]);
                if (two) u += dot4(xv[i], lv[i]);
            }
            z = warp_sum(z);
            if (two) u = warp_sum(u);
            float c = row_coef(p, sg.mode, r, sg.y[r], g, z, u, lsum);
            if (c != 0.0f) {
#pragma unroll
                for (int i = 0; i < R; i++) fma4(acc[i], c, xv[i]);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < R; i++) {
        unsigned int k = lane + WARP * i;
        if (k < st4) smem4[(size_t)warp * st4 + k] = acc[i];
    }
    block_reduce(p, sg, smem4, WARPS, lsum);
}

// Shared-memory variant: any D; p.warps warps take rows (the others only help reduce).
__device__ __forceinline__ void pass_shared(const PassParams& p) {
    extern __shared__ float4 smem4[];
    const Segment sg = segment_of(p);
    const unsigned int lane = threadIdx.x & (WARP - 1), warp = threadIdx.x / WARP;
    const unsigned int st4 = p.stride4, warps = p.warps;
    const bool two = sg.mode == MODE_BACKWARD;
    for (unsigned int k = threadIdx.x; k < warps * st4; k += BLOCK) smem4[k] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    __syncthreads();
    double lsum = 0.0;
    if (sg.mode != MODE_NONE && warp < warps) {
        float4* acc = smem4 + (size_t)warp * st4;
        for (size_t r = (size_t)sg.block * warps + warp; r < sg.rows; r += (size_t)sg.blocks * warps) {
            float g = 1.0f;
            if (sg.mode == MODE_FORWARD || sg.mode == MODE_BACKWARD) g = p.gamma0[r];
            if (sg.mode == MODE_FORWARD && g == 0.0f) continue;
            const xvec* xr = sg.x + r * st4;
            float z = 0.0f, u = 0.0f;
#pragma unroll 8
            for (unsigned int k = lane; k < st4; k += WARP) {
                float4 xv = load_x(xr + k);
                z += dot4(xv, load4(p.theta, k, p.dim));
                if (two) u += dot4(xv, load4(p.vec, k, p.dim));
            }
            z = warp_sum(z);
            if (two) u = warp_sum(u);
            float c = row_coef(p, sg.mode, r, sg.y[r], g, z, u, lsum);
            if (c != 0.0f) {
                // The row was just read by this warp: an L1/L2 hit, not a second pass over HBM.
#pragma unroll 4
                for (unsigned int k = lane; k < st4; k += WARP) {
                    float4 a = acc[k];
                    fma4(a, c, load_x(xr + k));
                    acc[k] = a;
                }
            }
        }
    }
    block_reduce(p, sg, smem4, warps, lsum);
}

extern "C" __global__ void __launch_bounds__(BLOCK) pass_r1(const PassParams p) { pass_reg<1>(p); }
extern "C" __global__ void __launch_bounds__(BLOCK) pass_r2(const PassParams p) { pass_reg<2>(p); }
extern "C" __global__ void __launch_bounds__(BLOCK) pass_r4(const PassParams p) { pass_reg<4>(p); }
extern "C" __global__ void __launch_bounds__(BLOCK) pass_smem(const PassParams p) { pass_shared(p); }

// The finish as its own launch, a thread per column (⌈D/256⌉ blocks; block 0 also writes the
// scalar): same sums in the same block order as the fused finish with one slice.
extern "C" __global__ void __launch_bounds__(BLOCK) pass_finish(const PassParams p) {
    const unsigned int j = blockIdx.x * BLOCK + threadIdx.x;
    if (p.out_vec && j < p.dim) {
        float u0 = sum_partials(p, j, 0u, p.blocks0);
        float u1 = p.mode1 == MODE_GRAD ? sum_partials(p, j, p.blocks0, p.blocks0 + p.blocks1) : 0.0f;
        finish_column(p, j, u0, u1);
    }
    if (p.out_scalar && j == 0) finish_scalar(p);
}

// Per-example outputs, a warp per row (grid-stride): mode 0 out[n] = l_n, mode 1 out[n] = (p − y)(x_n·v).
extern "C" __global__ void __launch_bounds__(BLOCK) row_outputs(const xvec* __restrict__ x, const float* __restrict__ y,
                                                                const float* __restrict__ theta, const float* __restrict__ v,
                                                                float* __restrict__ out, unsigned int rows, unsigned int dim,
                                                                unsigned int stride4, unsigned int mode) {
    const unsigned int lane = threadIdx.x & (WARP - 1);
    const size_t warps = (size_t)gridDim.x * WARPS;
    for (size_t r = (size_t)blockIdx.x * WARPS + threadIdx.x / WARP; r < rows; r += warps) {
        const xvec* xr = x + r * stride4;
        float z = 0.0f, u = 0.0f;
        for (unsigned int k = lane; k < stride4; k += WARP) {
            float4 xv = load_x(xr + k);
            z += dot4(xv, load4(theta, k, dim));
            if (mode == 1u) u += dot4(xv, load4(v, k, dim));
        }
        z = warp_sum(z);
        if (mode == 1u) u = warp_sum(u);
        if (lane == 0) out[r] = mode == 1u ? (sigmoidf_(z) - y[r]) * u : bce_with_logits(z, y[r]);
    }
}
