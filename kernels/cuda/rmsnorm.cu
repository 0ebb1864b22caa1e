// rmsnorm.cu — RMSNorm (weight and bias, divides by rms + ε) forward and backward on value/tangent
// pairs (crate learnlaw-cuda; the WGSL twin is kernels/wgsl/rmsnorm.wgsl). CPU reference:
// `CpuKernels::rmsnorm_forward` and `rmsnorm_backward` (learnlaw-core transformer/cpu_kernels.rs).
//
// Math, per row of width H (ε = 1e-8, s = r + ε):
//   stats     r = √(Σx²/H), n = x/s;  ṙ = (x·ẋ)/(H r) (0 if r = 0), ṅ = (ẋ − n ṙ)/s
//   affine    out = w ⊙ n + b;         ȯut = ẇ ⊙ n + w ⊙ ṅ + ḃ
//   backward  gn = gy ⊙ w, a = gn·n, q = n s/(H r), gx += (gn − a q)/s; tangent
//             ġn = ġy ⊙ w + gy ⊙ ẇ, ȧ = ġn·n + gn·ṅ, ẋ = ṅ s + n ṙ, q̇ = ẋ/(H r) − q ṙ/r,
//             ġx += (ġn − ȧ q − a q̇ − gx_row ṙ)/s  (x is rebuilt from n and r)
//   params    ∇w += Σ_rows gy ⊙ n, ∇b += Σ_rows gy; their tangents Σ (ġy ⊙ n + gy ⊙ ṅ), Σ ġy:
//             `param_partials` sums blocks of 64 rows in row order into partials [blocks, 4, H],
//             `param_reduce` adds the blocks in block order into the gradient and the HVP
//             (deterministic: no float atomics).
// Buffers (f32), in the WGSL's binding order: x, x_t, theta, dir, gy, gy_t, r_in, r_in_t, out,
//   out_t, out2, out2_t — each entry reads and writes the ones its comment names; unused pointers
//   are null and never read. x, n, out, gy, gx [rows, H] (+ tangents); r [rows]; θ and the
//   direction hold w at pw and b at pw + H; gradient and HVP likewise.
// Geometry: stats/backward: one warp per row (8 rows per block of 256, blocks stride over rows),
//   row sums by a butterfly of warp shuffles (fixed order); affine: grid-stride over elements;
//   param_partials: a block per 64-row block, a thread per column; param_reduce: a thread per
//   column.
// Variants: WGSL (a workgroup of 64 per row, tree sums in workgroup memory) → this (a warp per row,
//   no shared memory or barriers; H of a few hundred is a few values per lane).

#define BLOCK 256
#define WARPS (BLOCK / 32)
#define BLOCK_ROWS 64
#define EPS 1e-8f

struct NormParams {
    unsigned int rows, h, pw, pb, tangent, want_grad, want_hvp, blocks;
};

// Σ over the warp of v, the same butterfly every call: every lane gets the total.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

#define FOR_EACH_ROW(row)                                                                                            \
    for (unsigned int row = blockIdx.x * WARPS + threadIdx.x / 32; row < p.rows; row += gridDim.x * WARPS)

// x (+ x_t) → n (out, + out_t) and r (out2, + out2_t).
extern "C" __global__ void __launch_bounds__(BLOCK) stats(const float* __restrict__ x, const float* __restrict__ x_t,
                                                          const float* __restrict__ theta, const float* __restrict__ dir,
                                                          const float* __restrict__ gy, const float* __restrict__ gy_t,
                                                          const float* __restrict__ r_in, const float* __restrict__ r_in_t,
                                                          float* out, float* out_t, float* out2, float* out2_t, const NormParams p) {
    const unsigned int h = p.h, lane = threadIdx.x % 32;
    const bool tan = p.tangent == 1u;
    const float hr = (float)h;
    FOR_EACH_ROW(row) {
        const unsigned long long o = (unsigned long long)row * h;
        float s2 = 0.0f, sxt = 0.0f;
        for (unsigned int c = lane; c < h; c += 32) {
            const float v = x[o + c];
            s2 += v * v;
            if (tan) sxt += v * x_t[o + c];
        }
        s2 = warp_sum(s2);
        if (tan) sxt = warp_sum(sxt);
        const float r = sqrtf(s2 / hr), s = r + EPS;
        const float rt = r > 0.0f ? sxt / (hr * r) : 0.0f;
        if (lane == 0) {
            out2[row] = r;
            if (tan) out2_t[row] = rt;
        }
        for (unsigned int c = lane; c < h; c += 32) {
            const float n = x[o + c] / s;
            out[o + c] = n;
            if (tan) out_t[o + c] = (x_t[o + c] - n * rt) / s;
        }
    }
}

// n (x, + x_t) → out = w ⊙ n + b (out, + out_t).
extern "C" __global__ void __launch_bounds__(BLOCK) affine(const float* __restrict__ x, const float* __restrict__ x_t,
                                                           const float* __restrict__ theta, const float* __restrict__ dir,
                                                           const float* __restrict__ gy, const float* __restrict__ gy_t,
                                                           const float* __restrict__ r_in, const float* __restrict__ r_in_t,
                                                           float* out, float* out_t, float* out2, float* out2_t, const NormParams p) {
    const unsigned long long total = (unsigned long long)p.rows * p.h;
    for (unsigned long long i = blockIdx.x * BLOCK + threadIdx.x; i < total; i += (unsigned long long)gridDim.x * BLOCK) {
        const unsigned int c = i % p.h;
        const float n = x[i], w = theta[p.pw + c];
        out[i] = w * n + theta[p.pb + c];
        if (p.tangent == 1u) out_t[i] = dir[p.pw + c] * n + w * x_t[i] + dir[p.pb + c];
    }
}

// Input gradient: n (x, + x_t), r (r_in, + r_in_t), gy (+ gy_t), w (theta at pw, + dir) → gx
// (out, + out_t), added.
extern "C" __global__ void __launch_bounds__(BLOCK) backward(const float* __restrict__ x, const float* __restrict__ x_t,
                                                             const float* __restrict__ theta, const float* __restrict__ dir,
                                                             const float* __restrict__ gy, const float* __restrict__ gy_t,
                                                             const float* __restrict__ r_in, const float* __restrict__ r_in_t,
                                                             float* out, float* out_t, float* out2, float* out2_t, const NormParams p) {
    const unsigned int h = p.h, lane = threadIdx.x % 32;
    const bool tan = p.tangent == 1u;
    const float hr = (float)h;
    FOR_EACH_ROW(row) {
        const unsigned long long o = (unsigned long long)row * h;
        const float r = r_in[row], s = r + EPS;
        float a = 0.0f, at = 0.0f;
        for (unsigned int c = lane; c < h; c += 32) {
            const unsigned long long i = o + c;
            const float w = theta[p.pw + c], gn = gy[i] * w;
            a += gn * x[i];
            if (tan) {
                const float gnt = gy_t[i] * w + gy[i] * dir[p.pw + c];
                at += gnt * x[i] + gn * x_t[i];
            }
        }
        a = warp_sum(a);
        if (tan) at = warp_sum(at);
        const float rt = tan ? r_in_t[row] : 0.0f;
        for (unsigned int c = lane; c < h; c += 32) {
            const unsigned long long i = o + c;
            const float n = x[i], w = theta[p.pw + c], gn = gy[i] * w;
            const float q = r > 0.0f ? n * s / (hr * r) : 0.0f;
            const float gxc = (gn - a * q) / s;
            out[i] = out[i] + gxc;
            if (tan) {
                const float nt = x_t[i];
                const float gnt = gy_t[i] * w + gy[i] * dir[p.pw + c];
                const float xt = nt * s + n * rt;
                const float qt = r > 0.0f ? xt / (hr * r) - q * rt / r : 0.0f;
                out_t[i] = out_t[i] + (gnt - at * q - a * qt - gxc * rt) / s;
            }
        }
    }
}

// Per 64-row block and column: Σ gy n, Σ gy, Σ (ġy n + gy ṅ), Σ ġy in row order, into
// out [blocks, 4, H]. n is x (+ x_t).
extern "C" __global__ void __launch_bounds__(BLOCK) param_partials(const float* __restrict__ x, const float* __restrict__ x_t,
                                                                   const float* __restrict__ theta, const float* __restrict__ dir,
                                                                   const float* __restrict__ gy, const float* __restrict__ gy_t,
                                                                   const float* __restrict__ r_in, const float* __restrict__ r_in_t,
                                                                   float* out, float* out_t, float* out2, float* out2_t,
                                                                   const NormParams p) {
    const unsigned int h = p.h;
    const bool tan = p.tangent == 1u;
    for (unsigned int blk = blockIdx.x; blk < p.blocks; blk += gridDim.x) {
        const unsigned int r0 = blk * BLOCK_ROWS, r1 = min(r0 + BLOCK_ROWS, p.rows);
        for (unsigned int c = threadIdx.x; c < h; c += BLOCK) {
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
            for (unsigned int row = r0; row < r1; ++row) {
                const unsigned long long i = (unsigned long long)row * h + c;
                s0 += gy[i] * x[i];
                s1 += gy[i];
                if (tan) {
                    s2 += gy_t[i] * x[i] + gy[i] * x_t[i];
                    s3 += gy_t[i];
                }
            }
            const unsigned long long o = (unsigned long long)blk * 4 * h + c;
            out[o] = s0;
            out[o + h] = s1;
            out[o + 2 * h] = s2;
            out[o + 3 * h] = s3;
        }
    }
}

// Partials (x, [blocks, 4, H]) summed in block order and added into the gradient (out) and the
// HVP (out_t) at pw (w) and pw + H (b).
extern "C" __global__ void __launch_bounds__(BLOCK) param_reduce(const float* __restrict__ x, const float* __restrict__ x_t,
                                                                 const float* __restrict__ theta, const float* __restrict__ dir,
                                                                 const float* __restrict__ gy, const float* __restrict__ gy_t,
                                                                 const float* __restrict__ r_in, const float* __restrict__ r_in_t,
                                                                 float* out, float* out_t, float* out2, float* out2_t, const NormParams p) {
    const unsigned int h = p.h;
    for (unsigned int c = blockIdx.x * BLOCK + threadIdx.x; c < 2 * h; c += gridDim.x * BLOCK) {
        // Column c < H: the weight (quantities 0 and 2); c ≥ H: the bias (quantities 1 and 3).
        const unsigned int col = c % h, q = c / h;
        float g = 0.0f, t = 0.0f;
        for (unsigned int blk = 0; blk < p.blocks; ++blk) {
            const unsigned long long o = (unsigned long long)blk * 4 * h + col;
            g += x[o + q * h];
            t += x[o + (q + 2) * h];
        }
        if (p.want_grad == 1u) out[p.pw + c] = out[p.pw + c] + g;
        if (p.want_hvp == 1u) out_t[p.pw + c] = out_t[p.pw + c] + t;
    }
}
