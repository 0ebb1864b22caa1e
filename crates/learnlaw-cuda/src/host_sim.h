// host_sim.h — the CUDA execution model on the host, so the CUDA C of kernels/cuda can be
// compiled by a C++ compiler and run without a GPU (learnlaw-cuda's `HostSim`, for tests).
//
// The threads of a block are fibers (ucontext) on the calling OS thread, run round-robin: each
// runs until it reaches a synchronisation point (`__syncthreads`, a warp shuffle, an `mma`) or
// returns, and a round ends when every live thread has; so `__syncthreads` is a barrier over the
// block's live threads (a thread that returned leaves it, as on Volta and later), and a shuffle
// posts its value, waits out the round, then reads its source lane's (two exchange buffers, used
// alternately, so a lane that runs ahead cannot overwrite a value not yet read). Blocks run one
// after another, so `__shared__` variables can be function-local statics. A kernel without
// synchronisation runs each thread straight through. Atomics are real atomics; memory is the
// host's (a device pointer is a host address). What it cannot show: timing, races the sequential
// schedule hides, and the GPU's math-function rounding (it uses the host's libm).
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <ucontext.h>
#include <utility>
#include <vector>

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};

namespace sim {

// Bytes of stack per simulated thread.
constexpr std::size_t STACK = 256 * 1024;

struct Fiber {
    ucontext_t ctx;
    bool done = false;
    // Synchronisation points passed: picks the exchange buffer of the next one.
    unsigned syncs = 0;
};

struct Launch {
    dim3 grid, block;
    std::vector<Fiber> fibers;
    // [2][block] values of a shuffle, [2][block][6] registers of an mma, by parity of `syncs`.
    std::vector<unsigned long long> exchange;
    std::vector<unsigned int> mma;
    ucontext_t scheduler;
    std::function<void()> body;
};

inline Launch* current = nullptr;
// The fibers' stacks, shared by every launch (allocated, not touched, until used).
inline std::vector<std::unique_ptr<char[]>> stacks;
inline dim3 thread_idx, block_idx;
inline Fiber* fiber = nullptr;

// Ends this thread's part of the round: back to the scheduler until the next round.
inline void yield() { swapcontext(&fiber->ctx, &current->scheduler); }

// The parity of this thread's next synchronisation point (its exchange buffer).
inline unsigned next_parity() { return fiber->syncs++ & 1u; }

template <class T>
T exchange(T v, unsigned (*source)(unsigned lane, unsigned arg), unsigned arg) {
    static_assert(sizeof(T) <= 8, "shuffles of at most 8 bytes");
    Launch& l = *current;
    const unsigned t = thread_idx.x, w = t / 32, lane = t % 32, par = next_parity();
    unsigned long long* buf = &l.exchange[par * l.block.x];
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    buf[t] = bits;
    yield();
    const unsigned src = source(lane, arg);
    if (src < 32 && w * 32 + src < l.block.x) std::memcpy(&v, &buf[w * 32 + src], sizeof(T));
    return v;
}

inline void fiber_entry() {
    current->body();
    fiber->done = true;
}  // returns to uc_link: the scheduler

// Runs `kernel` with `args` on grid × block (x only).
template <class... A>
void run(void (*kernel)(A...), std::tuple<A...> args, unsigned grid, unsigned block) {
    while (stacks.size() < block) stacks.emplace_back(new char[STACK]);
    Launch l;
    l.grid.x = grid;
    l.block.x = block;
    l.fibers.resize(block);
    l.exchange.assign(2 * block, 0);
    l.mma.assign(2 * block * 6, 0);
    l.body = [&] { std::apply(kernel, args); };
    current = &l;
    for (unsigned b = 0; b < grid; ++b) {
        block_idx = dim3{b, 0, 0};
        for (unsigned t = 0; t < block; ++t) {
            Fiber& f = l.fibers[t];
            f.done = false;
            f.syncs = 0;
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = stacks[t].get();
            f.ctx.uc_stack.ss_size = STACK;
            f.ctx.uc_link = &l.scheduler;
            makecontext(&f.ctx, fiber_entry, 0);
        }
        for (unsigned live = block; live > 0;) {
            for (unsigned t = 0; t < block; ++t) {
                Fiber& f = l.fibers[t];
                if (f.done) continue;
                thread_idx = dim3{t, 0, 0};
                fiber = &f;
                swapcontext(&l.scheduler, &f.ctx);
                if (f.done) --live;
            }
        }
    }
    current = nullptr;
    fiber = nullptr;
}

// Launches a kernel from one byte slice per parameter (a pointer's 8 address bytes, a scalar, a
// struct by value). Returns 0, or 1 when the count or a size disagrees with the signature.
template <class... A, std::size_t... I>
int launch_indexed(void (*kernel)(A...), const void* const* args, const std::size_t* sizes, std::size_t nargs, unsigned grid,
                   unsigned block, std::index_sequence<I...>) {
    using Args = std::tuple<A...>;
    if (nargs != sizeof...(A)) return 1;
    const bool sizes_match = ((sizes[I] == sizeof(std::tuple_element_t<I, Args>)) && ...);
    if (!sizes_match) return 1;
    auto arg = [&](auto index) {
        constexpr std::size_t i = decltype(index)::value;
        using T = std::tuple_element_t<i, Args>;
        static_assert(std::is_trivially_copyable_v<T>, "kernel parameters are plain data");
        T t;
        std::memcpy(static_cast<void*>(&t), args[i], sizeof(T));
        return t;
    };
    run(kernel, Args{arg(std::integral_constant<std::size_t, I>{})...}, grid, block);
    return 0;
}

template <class... A>
int launch(void (*kernel)(A...), const void* const* args, const std::size_t* sizes, std::size_t nargs, unsigned grid, unsigned block) {
    return launch_indexed(kernel, args, sizes, nargs, grid, block, std::index_sequence_for<A...>{});
}

}  // namespace sim

#define threadIdx (sim::thread_idx)
#define blockIdx (sim::block_idx)
#define blockDim (sim::current->block)
#define gridDim (sim::current->grid)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
// Kernels use this to take the host's versions of what they write in PTX (see mma_bf16_16816).
#define LEARNLAW_HOST_SIM 1

inline void __syncthreads() {
    sim::next_parity();
    sim::yield();
}
inline void __syncwarp(unsigned = 0xffffffffu) { __syncthreads(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <class T>
T __shfl_xor_sync(unsigned, T v, int mask, int = 32) {
    return sim::exchange(v, [](unsigned lane, unsigned m) { return lane ^ m; }, (unsigned)mask);
}
template <class T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int = 32) {
    return sim::exchange(v, [](unsigned lane, unsigned d) { return lane + d; }, delta);
}
template <class T>
T __shfl_up_sync(unsigned, T v, unsigned delta, int = 32) {
    return sim::exchange(v, [](unsigned lane, unsigned d) { return lane >= d ? lane - d : 32u; }, delta);
}
template <class T>
T __shfl_sync(unsigned, T v, int src, int = 32) {
    return sim::exchange(v, [](unsigned, unsigned s) { return s % 32; }, (unsigned)src);
}

template <class A, class B>
inline auto min(A a, B b) {
    using R = std::common_type_t<A, B>;
    return (R)a < (R)b ? (R)a : (R)b;
}
template <class A, class B>
inline auto max(A a, B b) {
    using R = std::common_type_t<A, B>;
    return (R)a < (R)b ? (R)b : (R)a;
}

template <class T>
T __ldg(const T* p) {
    return *p;
}
inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, 4);
    return i;
}
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline double __longlong_as_double(long long i) {
    double d;
    std::memcpy(&d, &i, 8);
    return d;
}
inline long long __double_as_longlong(double d) {
    long long i;
    std::memcpy(&i, &d, 8);
    return i;
}
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

template <class T>
T atomicAdd(T* p, T v) {
    return std::atomic_ref<T>(*p).fetch_add(v);
}
template <class T>
T atomicMax(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
template <class T>
T atomicMin(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (v < old && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
template <class T>
T atomicOr(T* p, T v) {
    return std::atomic_ref<T>(*p).fetch_or(v);
}
template <class T>
T atomicAnd(T* p, T v) {
    return std::atomic_ref<T>(*p).fetch_and(v);
}
template <class T>
T atomicExch(T* p, T v) {
    return std::atomic_ref<T>(*p).exchange(v);
}
template <class T>
T atomicCAS(T* p, T cmp, T v) {
    std::atomic_ref<T>(*p).compare_exchange_strong(cmp, v);
    return cmp;
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 for one warp: d += a·b with the fragment
// layout of the PTX ISA (lane = 4g + t; A registers {A[g][2t..], A[g+8][2t..], A[g][2t+8..],
// A[g+8][2t+8..]}, B {B[2t..][g], B[2t+8..][g]}, D {D[g][2t], D[g][2t+1], D[g+8][2t],
// D[g+8][2t+1]}; two bf16 per register, the lower index in the low half). The lanes post their
// registers, wait out the round, then each computes its four outputs (in f32, k in order).
inline void mma_bf16_16816(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
    sim::Launch& l = *sim::current;
    const unsigned tid = sim::thread_idx.x, w = tid / 32, lane = tid % 32, par = sim::next_parity();
    unsigned int* regs = &l.mma[(par * l.block.x + w * 32) * 6];
    for (int i = 0; i < 4; ++i) regs[lane * 6 + i] = a[i];
    regs[lane * 6 + 4] = b[0];
    regs[lane * 6 + 5] = b[1];
    sim::yield();
    auto half = [](unsigned int word, unsigned k) { return __uint_as_float((k & 1 ? word >> 16 : word & 0xffffu) << 16); };
    auto A = [&](unsigned r, unsigned k) { return half(regs[((r % 8) * 4 + (k % 8) / 2) * 6 + r / 8 + 2 * (k / 8)], k); };
    auto B = [&](unsigned k, unsigned n) { return half(regs[(n * 4 + (k % 8) / 2) * 6 + 4 + k / 8], k); };
    const unsigned g = lane / 4, t = lane % 4;
    for (unsigned q = 0; q < 4; ++q) {
        const unsigned r = g + 8 * (q / 2), n = 2 * t + q % 2;
        float s = d[q];
        for (unsigned k = 0; k < 16; ++k) s += A(r, k) * B(k, n);
        d[q] = s;
    }
}

// One `if` per entry of the included .cu file, inside `sim_launch`.
#define SIM_ENTRY(name) \
    if (std::strcmp(entry, #name) == 0) return sim::launch(name, args, sizes, nargs, grid, block);
