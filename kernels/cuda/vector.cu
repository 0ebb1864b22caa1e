// vector.cu — elementwise updates of device vectors (crate learnlaw-cuda; the WGSL twin is
// kernels/wgsl/vector.wgsl).
//
// Math:  axpy     y_i ← y_i + a·x_i      (the outer gradient step on γ [T, N], among others)
//        scale    x_i ← a·x_i
//        max_abs  out ← max_i |x_i|, NaN ignored (the exp-grad step's normaliser max |∂J/∂γ|).
//          For non-negative floats the bit patterns order like the values, so each warp's maximum
//          goes into out (a u32, 0 before the launch) with an integer atomicMax on its bits.
//        tie_rows v[r, i] ← Σ_{r' ∈ block(r)} v[r', i] for rows of length n in blocks of B rows
//          (the last block may be shorter): block policies' gradient. One thread per (block,
//          column), grid-stride; it adds the block's rows in row order in f32, the CPU engine's
//          order, so results are bit-identical to it. Reads and writes v once each.
// (copy is cuMemcpyDtoDAsync and zeros cuMemsetD8Async, both on the engine's stream.)
// Buffers: x, y [n] f32, whole allocations (256-byte aligned), so the bulk is processed as float4
//   (16-byte loads and stores) and the n mod 4 tail element by element.
// Geometry: grid-stride, blocks of 256 threads, grid = min(⌈n/4/256⌉, 8 × SMs) blocks; one launch.
// Variants: scalar grid-stride (v0, ~70% of copy bandwidth on large GPUs) → float4 (this).
// Bytes: axpy reads 8n and writes 4n, scale reads 4n and writes 4n: both are memory-bound.

#define BLOCK 256

extern "C" __global__ void __launch_bounds__(BLOCK) axpy(const float* __restrict__ x, float* __restrict__ y,
                                                         unsigned long long n, float a) {
    const unsigned long long n4 = n / 4, stride = (unsigned long long)gridDim.x * BLOCK;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    float4* y4 = reinterpret_cast<float4*>(y);
    for (unsigned long long i = (unsigned long long)blockIdx.x * BLOCK + threadIdx.x; i < n4; i += stride) {
        float4 xv = x4[i], yv = y4[i];
        yv.x = fmaf(a, xv.x, yv.x);
        yv.y = fmaf(a, xv.y, yv.y);
        yv.z = fmaf(a, xv.z, yv.z);
        yv.w = fmaf(a, xv.w, yv.w);
        y4[i] = yv;
    }
    for (unsigned long long i = 4 * n4 + (unsigned long long)blockIdx.x * BLOCK + threadIdx.x; i < n; i += stride) {
        y[i] = fmaf(a, x[i], y[i]);
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK) scale(float* __restrict__ x, unsigned long long n, float a) {
    const unsigned long long n4 = n / 4, stride = (unsigned long long)gridDim.x * BLOCK;
    float4* x4 = reinterpret_cast<float4*>(x);
    for (unsigned long long i = (unsigned long long)blockIdx.x * BLOCK + threadIdx.x; i < n4; i += stride) {
        float4 v = x4[i];
        v.x *= a;
        v.y *= a;
        v.z *= a;
        v.w *= a;
        x4[i] = v;
    }
    for (unsigned long long i = 4 * n4 + (unsigned long long)blockIdx.x * BLOCK + threadIdx.x; i < n; i += stride) {
        x[i] *= a;
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK) max_abs(const float* __restrict__ x, unsigned long long n,
                                                            unsigned int* out) {
    float m = 0.0f;
    for (unsigned long long i = (unsigned long long)blockIdx.x * BLOCK + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * BLOCK) {
        m = fmaxf(m, fabsf(x[i]));  // fmaxf(m, NaN) = m
    }
#pragma unroll
    for (int k = 16; k > 0; k >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, k));
    if ((threadIdx.x & 31u) == 0 && m > 0.0f) atomicMax(out, __float_as_uint(m));
}

extern "C" __global__ void __launch_bounds__(BLOCK) tie_rows(float* __restrict__ v, unsigned long long n,
                                                             unsigned long long rows, unsigned long long block) {
    const unsigned long long blocks = (rows + block - 1) / block;
    for (unsigned long long k = (unsigned long long)blockIdx.x * BLOCK + threadIdx.x; k < blocks * n;
         k += (unsigned long long)gridDim.x * BLOCK) {
        const unsigned long long b = k / n, i = k % n;
        const unsigned long long r0 = b * block, r1 = min(r0 + block, rows);
        float s = 0.0f;
        for (unsigned long long r = r0; r < r1; r++) s += v[r * n + i];
        for (unsigned long long r = r0; r < r1; r++) v[r * n + i] = s;
    }
}
