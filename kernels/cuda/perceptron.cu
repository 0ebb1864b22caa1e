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
// Geometry: blocks of 256 threads = 8 warps; a warp per row (rows b·W + w + k·G·W for block b of a
//   segment of G blocks, warp w of W): lanes read consecutive vectors of the row (coalesced
//   512-byte requests for f32), the dot is a butterfly shuffle reduction (every lane ends with the
//   same bits). G = clamp(⌈rows / (W warps · ρ rows)⌉, 1, resident blocks) per segment, ρ the
//   engine's rows per warp (4 by default, `Options::rows_per_warp`): at the paper's size
//   (N = 4096, K = 512) 128 + 16 blocks of 4 rows per warp, all resident at once; at N = 1M one
//   wave of resident blocks that grid-stride over the rows.
// Latency (what the sm_90 machine code shows; the GPU check measures it): every load a row needs
//   (γ, y, its X vectors; θ and λ are in registers or shared memory) is issued before the first
//   of them is used, so a row costs one memory round trip, not three (γ, then X, then y); the
//   register variants for D ≤ 256 take two rows per iteration (both rows' loads in flight
//   together), and pass_smem loads fixed tiles of TILE vectors per lane (256 bytes) before using
//   any: at D = 4096, 8 warps of one block per SM keep 64 KiB of loads in flight per SM, about
//   twice what Little's law asks of an H200 (≈ 33 B/ns per SM × ≈ 0.8 µs).
// Variants (naive → tuned):
//   v0 (not kept as a kernel): one thread per row, a second kernel per column summing c_n x_n over
//     all rows: X read twice, uncoalesced row reads.
//   v1 (replaced; issue 16): pass_smem with one 16-byte load in flight per lane (a loop of unknown
//     trip count with branches inside, θ/λ re-read from global memory with a tail test per
//     vector), and the register variants with γ, X and y loaded one after the other, 8 rows per
//     warp.
//   pass_smem — any D: θ and λ staged in shared memory once per block; each warp accumulates c·x
//     into its own D-vector in shared memory. The row is read in tiles of TILE vectors per lane
//     (every tile's loads issued before its dot); when the row fits in one tile (D ≤ 2048 for f32,
//     4096 for 16-bit X) the accumulation uses those registers, else it re-reads the row tile by
//     tile (an L1/L2 hit: HBM sees X once). Forward rows with γ = 0 are skipped without reading X
//     (γ is loaded a row ahead, so the test costs no round trip): sparse policies read less.
//     Dynamic shared memory (2 + W)·16·⌈D/4⌉ bytes (D = 4096: 160 KiB, one block per SM; above
//     48 KiB the engine opts in); the engine lowers W when it does not fit.
//   pass_smem_ldg — the same reading θ and λ through the L1 cache (no staging), for D so large
//     that staging them would cost more than half the warps (D ≳ 16000 on an H200).
//   pass_r{1,2,4} — D ≤ 128·R: the rows stay in registers (R vectors per lane) between the dot
//     and the axpy, θ and λ are held in registers for the whole block, and each warp accumulates in
//     registers (R float4 per lane); shared memory only for the block's final reduction. The
//     γ = 0 skip is a predicate on the accumulation (X is read anyway: at these sizes a step is
//     latency-bound, and waiting for γ before reading X would add a round trip per row). pass_r1
//     and pass_r2 take two rows per iteration, so both rows' loads are in flight together.
//     The paper's D = 128 is pass_r1: one float4 per lane per row. (R = 8 would need ~160
//     registers a thread, one block per SM: pass_smem is used above D = 512 instead.)
//   The finish (fused or pass_finish) loads 8 partials per thread before adding them (in block
//     order); the fused one gives each column up to 32 threads (slices of the blocks, added in
//     slice order), float4 columns.
//   16-bit X (X_STORAGE 1/2): the same kernels reading half the bytes; the widening is exact, so
//     results equal the f32 kernels' on X rounded to f16/bf16 (what the conformance tests check).
//   Not yet: TMA/cp.async double buffering, a persistent kernel or programmatic dependent launch
//     for a whole unroll pass.

#define WARP 32
#define WARPS 8
#define BLOCK (WARP * WARPS)
// Partials a finish thread loads before adding them, and the most threads a fused finish gives
// one column.
#define FIN_BATCH 8
#define MAX_SLICES 32u

// The storage of X, an NVRTC -D option (one module per storage): 0 f32, 1 f16, 2 bf16.
#ifndef X_STORAGE
#define X_STORAGE 0
#endif

#if X_STORAGE == 0
typedef float4 xvec;
__device__ __forceinline__ float4 widen4(float4 v) { return v; }
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
__device__ __forceinline__ float4 widen4(uint2 v) { return make_float4(lo(v.x), hi(v.x), lo(v.y), hi(v.y)); }
#endif
__device__ __forceinline__ float4 load_x(const xvec* p) { return widen4(__ldg(p)); }
// Vectors of X per lane per tile of pass_smem: 256 bytes in flight per lane (64 registers).
#define TILE (X_STORAGE == 0 ? 16 : 32)

#define MODE_NONE 0u
#define MODE_FORWARD 1u
#define MODE_BACKWARD 2u
#define MODE_LOSS 3u
#define MODE_GRAD 4u

// Mirrors `PassParams` in crates/learnlaw-cuda/src/perceptron.rs (#[repr(C)]; pointers are 8 bytes).
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

__device__ __forceinline__ float4 zero4() { return make_float4(0.0f, 0.0f, 0.0f, 0.0f); }

// v[4k .. 4k+4) as a float4, zero past dim (X's padding is zero too). v is 16-byte aligned.
__device__ __forceinline__ float4 load4(const float* v, unsigned int k, unsigned int dim) {
    unsigned int j = 4u * k;
    if (j + 3u < dim) return __ldg(reinterpret_cast<const float4*>(v) + k);
    float4 r = zero4();
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

// The row's coefficient c (0: nothing to accumulate) and its per-row side effects. A forward row
// with γ = 0 has c = 0 whatever z is (as if skipped: a non-finite θ does not leak through 0·NaN).
__device__ __forceinline__ float row_coef(const PassParams& p, unsigned int mode, size_t r, float y, float g,
                                          float z, float u, double& lsum) {
    float c = 0.0f;
    if (mode == MODE_FORWARD) {
        if (g != 0.0f) c = g * (sigmoidf_(z) - y);
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
// FIN_BATCH loads are issued before any is added; a short last batch loads its last partial again
// in the unused slots (no predicated loads: those made the compiler issue them a few at a time).
__device__ __forceinline__ float sum_partials(const PassParams& p, unsigned int j, unsigned int b0, unsigned int b1) {
    const float* P = reinterpret_cast<const float*>(p.partials);
    const size_t st = (size_t)p.stride4 * 4u;
    float t = 0.0f;
    for (unsigned int b = b0; b < b1; b += FIN_BATCH) {
        float v[FIN_BATCH];
#pragma unroll
        for (int i = 0; i < FIN_BATCH; i++) v[i] = __ldcg(P + (size_t)min(b + i, b1 - 1u) * st + j);
#pragma unroll
        for (int i = 0; i < FIN_BATCH; i++)
            if (b + i < b1) t += v[i];
    }
    return t;
}

// The same for the 4 columns of float4 column k (the fused finish).
__device__ __forceinline__ float4 sum_partials4(const PassParams& p, unsigned int k, unsigned int b0, unsigned int b1) {
    const float4* P = p.partials;
    const size_t st4 = p.stride4;
    float4 t = zero4();
    for (unsigned int b = b0; b < b1; b += FIN_BATCH) {
        float4 v[FIN_BATCH];
#pragma unroll
        for (int i = 0; i < FIN_BATCH; i++) v[i] = __ldcg(P + (size_t)min(b + i, b1 - 1u) * st4 + k);
#pragma unroll
        for (int i = 0; i < FIN_BATCH; i++)
            if (b + i < b1) t = add4(t, v[i]);
    }
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
    const unsigned int b1 = p.blocks0 + p.blocks1;
    double s = 0.0;
    for (unsigned int b = p.blocks0; b < b1; b += FIN_BATCH) {
        double v[FIN_BATCH];
#pragma unroll
        for (int i = 0; i < FIN_BATCH; i++) v[i] = __ldcg(p.loss_partials + min(b + i, b1 - 1u));
#pragma unroll
        for (int i = 0; i < FIN_BATCH; i++)
            if (b + i < b1) s += v[i];
    }
    *p.out_scalar = (float)(s * (double)p.s1);
}

// After every block has written its partials: with p.fused_finish the last block to retire reduces
// them in block order and writes the results (one launch per step; the partials are small). Without
// it the engine launches pass_finish next (large D·blocks, where one block would be too slow).
__device__ void retire_and_finish(const PassParams& p) {
    if (!p.fused_finish) return;
    __shared__ bool s_last;
    __shared__ float4 s_fin[2][BLOCK];
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned int total = p.blocks0 + p.blocks1;
        s_last = atomicAdd(p.counter, 1u) == total - 1u;
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    const unsigned int st4 = p.stride4, dim = p.dim;
    const bool vec1 = p.mode1 == MODE_GRAD;
    if (p.out_vec) {
        // `slices` threads per float4 column when there are fewer columns than threads, each over
        // a contiguous range of blocks, so more loads are in flight; the slices are then added in
        // order.
        const unsigned int slices = st4 >= BLOCK ? 1u : min(BLOCK / st4, MAX_SLICES), cols = BLOCK / slices;
        const unsigned int s = threadIdx.x / cols;
        for (unsigned int k0 = 0; k0 < st4; k0 += cols) {
            const unsigned int k = k0 + threadIdx.x % cols;
            float4 t0 = zero4(), t1 = zero4();
            if (s < slices && k < st4) {
                t0 = sum_partials4(p, k, p.blocks0 * s / slices, p.blocks0 * (s + 1u) / slices);
                if (vec1) t1 = sum_partials4(p, k, p.blocks0 + p.blocks1 * s / slices, p.blocks0 + p.blocks1 * (s + 1u) / slices);
            }
            s_fin[0][threadIdx.x] = t0;
            s_fin[1][threadIdx.x] = t1;
            __syncthreads();
            if (s == 0 && k < st4) {
                float4 u0 = t0, u1 = t1;
                for (unsigned int q = 1; q < slices; q++) {
                    u0 = add4(u0, s_fin[0][q * cols + threadIdx.x]);
                    u1 = add4(u1, s_fin[1][q * cols + threadIdx.x]);
                }
                const unsigned int j = 4u * k;
                finish_column(p, j, u0.x, u1.x);
                if (j + 1u < dim) finish_column(p, j + 1u, u0.y, u1.y);
                if (j + 2u < dim) finish_column(p, j + 2u, u0.z, u1.z);
                if (j + 3u < dim) finish_column(p, j + 3u, u0.w, u1.w);
            }
            __syncthreads();
        }
    }
    if (p.out_scalar && threadIdx.x == 0) finish_scalar(p);
    if (threadIdx.x == 0) *p.counter = 0u;
}

// Sums the warps' accumulators acc[w][k] (shared memory, [warps, stride4]) in warp order into the
// block's partials row, and the warps' losses into its loss partial; then retires.
__device__ __forceinline__ void block_reduce(const PassParams& p, const Segment& sg, const float4* acc, unsigned int warps,
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

// Register variant: D ≤ 128·R. Each iteration takes PAIR rows of the warp (r0, r0 + stride, …):
// all their loads first, then the dots, then the accumulation in row order. Two rows for R ≤ 2;
// one for R = 4, whose four loads per lane are enough in flight (two rows would spill).
template <int R>
__device__ __forceinline__ void pass_reg(const PassParams& p) {
    constexpr int PAIR = R <= 2 ? 2 : 1;
    extern __shared__ float4 smem4[];
    const Segment sg = segment_of(p);
    const unsigned int lane = threadIdx.x & (WARP - 1), warp = threadIdx.x / WARP;
    const unsigned int st4 = p.stride4;
    const bool two = sg.mode == MODE_BACKWARD;
    const bool weighted = sg.mode == MODE_FORWARD || sg.mode == MODE_BACKWARD;
    float4 th[R], lv[R], acc[R];
#pragma unroll
    for (int i = 0; i < R; i++) {
        unsigned int k = lane + WARP * i;
        th[i] = load4(p.theta, k, p.dim);
        lv[i] = two ? load4(p.vec, k, p.dim) : zero4();
        acc[i] = zero4();
    }
    double lsum = 0.0;
    if (sg.mode != MODE_NONE) {
        const size_t stride = (size_t)sg.blocks * WARPS;
        for (size_t r0 = (size_t)sg.block * WARPS + warp; r0 < sg.rows; r0 += PAIR * stride) {
            bool ok[PAIR];
            float g[PAIR], y[PAIR];
            xvec xr[PAIR][R];
#pragma unroll
            for (int q = 0; q < PAIR; q++) {
                const size_t r = r0 + q * stride;
                ok[q] = r < sg.rows;  // the same for the whole warp
                g[q] = ok[q] && weighted ? p.gamma0[r] : 1.0f;
                y[q] = ok[q] ? sg.y[r] : 0.0f;
#pragma unroll
                for (int i = 0; i < R; i++) {
                    const unsigned int k = lane + WARP * i;
                    if (ok[q] && k < st4) xr[q][i] = __ldg(sg.x + r * st4 + k);
                }
            }
            float z[PAIR], u[PAIR];
            float4 xv[PAIR][R];
#pragma unroll
            for (int q = 0; q < PAIR; q++) {
                z[q] = 0.0f;
                u[q] = 0.0f;
#pragma unroll
                for (int i = 0; i < R; i++) {
                    const unsigned int k = lane + WARP * i;
                    xv[q][i] = ok[q] && k < st4 ? widen4(xr[q][i]) : zero4();
                    z[q] += dot4(xv[q][i], th[i]);
                    if (two) u[q] += dot4(xv[q][i], lv[i]);
                }
            }
#pragma unroll
            for (int q = 0; q < PAIR; q++) {
                z[q] = warp_sum(z[q]);
                if (two) u[q] = warp_sum(u[q]);
            }
#pragma unroll
            for (int q = 0; q < PAIR; q++) {
                if (!ok[q]) continue;
                const float c = row_coef(p, sg.mode, r0 + q * stride, y[q], g[q], z[q], u[q], lsum);
                if (c != 0.0f) {
#pragma unroll
                    for (int i = 0; i < R; i++) fma4(acc[i], c, xv[q][i]);
                }
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

// θ or λ_next as float4 k: from shared memory (STAGE) or through L1.
template <bool STAGE>
__device__ __forceinline__ float4 vec4(const float4* staged, const float* v, unsigned int k, unsigned int dim) {
    return STAGE ? staged[k] : load4(v, k, dim);
}

// Shared-memory variant: any D; p.warps warps take rows (the others only help reduce). Dynamic
// shared memory: STAGE: θ [stride4], λ_next [stride4], then the accumulators [warps, stride4];
// else the accumulators only.
template <bool STAGE>
__device__ __forceinline__ void pass_shared(const PassParams& p) {
    extern __shared__ float4 smem4[];
    const Segment sg = segment_of(p);
    const unsigned int lane = threadIdx.x & (WARP - 1), warp = threadIdx.x / WARP;
    const unsigned int st4 = p.stride4, warps = p.warps;
    const bool two = sg.mode == MODE_BACKWARD;
    const bool weighted = sg.mode == MODE_FORWARD || sg.mode == MODE_BACKWARD;
    const float4* s_th = smem4;
    const float4* s_lv = smem4 + st4;
    float4* accs = STAGE ? smem4 + 2u * st4 : smem4;
    for (unsigned int k = threadIdx.x; k < warps * st4; k += BLOCK) accs[k] = zero4();
    if (STAGE && sg.mode != MODE_NONE) {
        for (unsigned int k = threadIdx.x; k < st4; k += BLOCK) {
            smem4[k] = load4(p.theta, k, p.dim);
            if (two) smem4[st4 + k] = load4(p.vec, k, p.dim);
        }
    }
    __syncthreads();
    double lsum = 0.0;
    if (sg.mode != MODE_NONE && warp < warps) {
        float4* acc = accs + (size_t)warp * st4;
        const size_t stride = (size_t)sg.blocks * warps;
        size_t r = (size_t)sg.block * warps + warp;
        // γ of the next row is loaded a row ahead, so the γ = 0 test below costs no round trip.
        float g_next = weighted && r < sg.rows ? p.gamma0[r] : 1.0f;
        for (; r < sg.rows; r += stride) {
            const float g = g_next;
            if (weighted && r + stride < sg.rows) g_next = p.gamma0[r + stride];
            if (sg.mode == MODE_FORWARD && g == 0.0f) continue;
            const float y = sg.y[r];
            const xvec* xr = sg.x + r * st4;
            xvec xt[TILE];
            float z = 0.0f, u = 0.0f;
            for (unsigned int k0 = 0; k0 < st4; k0 += TILE * WARP) {
#pragma unroll
                for (int i = 0; i < TILE; i++) {
                    const unsigned int k = k0 + lane + WARP * i;
                    if (k < st4) xt[i] = __ldg(xr + k);
                }
#pragma unroll
                for (int i = 0; i < TILE; i++) {
                    const unsigned int k = k0 + lane + WARP * i;
                    if (k < st4) {
                        const float4 xv = widen4(xt[i]);
                        z += dot4(xv, vec4<STAGE>(s_th, p.theta, k, p.dim));
                        if (two) u += dot4(xv, vec4<STAGE>(s_lv, p.vec, k, p.dim));
                    }
                }
            }
            z = warp_sum(z);
            if (two) u = warp_sum(u);
            const float c = row_coef(p, sg.mode, r, y, g, z, u, lsum);
            if (c == 0.0f) continue;
            if (st4 <= TILE * WARP) {
                // The whole row is still in registers.
#pragma unroll
                for (int i = 0; i < TILE; i++) {
                    const unsigned int k = lane + WARP * i;
                    if (k < st4) {
                        float4 a = acc[k];
                        fma4(a, c, widen4(xt[i]));
                        acc[k] = a;
                    }
                }
            } else {
                // Re-read the row tile by tile: this warp has just read it (an L1/L2 hit, not a
                // second pass over HBM).
                for (unsigned int k0 = 0; k0 < st4; k0 += TILE * WARP) {
#pragma unroll
                    for (int i = 0; i < TILE; i++) {
                        const unsigned int k = k0 + lane + WARP * i;
                        if (k < st4) xt[i] = __ldg(xr + k);
                    }
#pragma unroll
                    for (int i = 0; i < TILE; i++) {
                        const unsigned int k = k0 + lane + WARP * i;
                        if (k < st4) {
                            float4 a = acc[k];
                            fma4(a, c, widen4(xt[i]));
                            acc[k] = a;
                        }
                    }
                }
            }
        }
    }
    block_reduce(p, sg, accs, warps, lsum);
}

extern "C" __global__ void __launch_bounds__(BLOCK) pass_r1(const PassParams p) { pass_reg<1>(p); }
extern "C" __global__ void __launch_bounds__(BLOCK) pass_r2(const PassParams p) { pass_reg<2>(p); }
extern "C" __global__ void __launch_bounds__(BLOCK) pass_r4(const PassParams p) { pass_reg<4>(p); }
extern "C" __global__ void __launch_bounds__(BLOCK) pass_smem(const PassParams p) { pass_shared<true>(p); }
extern "C" __global__ void __launch_bounds__(BLOCK) pass_smem_ldg(const PassParams p) { pass_shared<false>(p); }

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
