// elementwise.cu — the Transformer's elementwise kernels on value/tangent pairs (crate
// learnlaw-cuda; the WGSL twin is kernels/wgsl/elementwise.wgsl). CPU reference: `CpuKernels`
// (learnlaw-core transformer/cpu_kernels.rs).
//
// Math (i < len, a = p.value; the tangent half only when p.tangent = 1):
//   fill          y_i ← a                            (zeroing accumulators)
//   scale_copy    y_{y_at+i} ← a·x_{x_at+i}           (copies; per-example results into place)
//   add           y_i ← y_i + a·x_i,  ẏ_i ← ẏ_i + a·ẋ_i   (residual adds, a = 1)
//   axpby         y_i ← x_i + a·y_i                   (θ − η·g, λ_next − η·Hλ in place)
//   relu_forward  y_i ← max(x_i, 0), ẏ_i ← ẋ_i·[x_i > 0]
//   relu_backward y_i ← y_i·[x_i > 0], ẏ_i ← ẏ_i·[x_i > 0]   (ReLU'' = 0 almost everywhere)
//   sum_slices    y_{y_at+i} ← a·y_{y_at+i} + Σ_{s < S} x_{s·len+i} (a = 0 overwrites), and the
//                 tangents: the reduction of a split-k GEMM's partial products, slices in order
//                 (deterministic, unlike atomics)
// Buffers (f32): x, x_t, y, y_t [len] from element 0 (scale_copy: from x_at, y_at); unused pointers
//   are null and never read. No restrict qualifiers: x and y may be one buffer.
// Geometry: blocks of 256 threads, grid-stride over the elements.
// Variants: the only one; each is a single memory-bound pass.

#define BLOCK 256

struct ElementwiseParams {
    unsigned int len, tangent;
    float value;
    unsigned int x_at, y_at;
    unsigned int slices;  // sum_slices' S
    unsigned int _pad1, _pad2;
};

#define FOR_EACH(i) for (unsigned int i = blockIdx.x * BLOCK + threadIdx.x; i < p.len; i += gridDim.x * BLOCK)

extern "C" __global__ void __launch_bounds__(BLOCK) fill(const float* x, const float* x_t, float* y,
                                                         float* y_t, const ElementwiseParams p) {
    FOR_EACH(i) { y[i] = p.value; }
}

extern "C" __global__ void __launch_bounds__(BLOCK) scale_copy(const float* x, const float* x_t, float* y,
                                                               float* y_t, const ElementwiseParams p) {
    FOR_EACH(i) { y[p.y_at + i] = p.value * x[p.x_at + i]; }
}

extern "C" __global__ void __launch_bounds__(BLOCK) axpby(const float* x, const float* x_t, float* y,
                                                          float* y_t, const ElementwiseParams p) {
    FOR_EACH(i) { y[i] = x[i] + p.value * y[i]; }
}

extern "C" __global__ void __launch_bounds__(BLOCK) add(const float* x, const float* x_t, float* y,
                                                        float* y_t, const ElementwiseParams p) {
    FOR_EACH(i) {
        y[i] = y[i] + p.value * x[i];
        if (p.tangent) y_t[i] = y_t[i] + p.value * x_t[i];
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK) relu_forward(const float* x, const float* x_t, float* y,
                                                                 float* y_t, const ElementwiseParams p) {
    FOR_EACH(i) {
        const float a = x[i];
        y[i] = fmaxf(a, 0.0f);
        if (p.tangent) y_t[i] = a > 0.0f ? x_t[i] : 0.0f;
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK) relu_backward(const float* x, const float* x_t, float* y,
                                                                  float* y_t, const ElementwiseParams p) {
    FOR_EACH(i) {
        const bool on = x[i] > 0.0f;
        y[i] = on ? y[i] : 0.0f;
        if (p.tangent) y_t[i] = on ? y_t[i] : 0.0f;
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK) sum_slices(const float* x, const float* x_t, float* y, float* y_t,
                                                               const ElementwiseParams p) {
    FOR_EACH(i) {
        float v = 0.0f, t = 0.0f;
        for (unsigned int s = 0; s < p.slices; ++s) {
            v += x[(size_t)s * p.len + i];
            if (p.tangent) t += x_t[(size_t)s * p.len + i];
        }
        if (y) y[p.y_at + i] = p.value != 0.0f ? p.value * y[p.y_at + i] + v : v;
        if (p.tangent) y_t[p.y_at + i] = p.value != 0.0f ? p.value * y_t[p.y_at + i] + t : t;
    }
}
