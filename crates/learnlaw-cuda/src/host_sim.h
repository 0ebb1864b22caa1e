// host_sim.h — the CUDA execution model on the host, so the CUDA C of kernels/cuda can be
// compiled by a C++ compiler and run without a GPU (learnlaw-cuda's `HostSim`, for tests).
//
// A launch runs one OS thread per thread of a block; the threads walk the grid's blocks one after
// the other, so `__shared__` variables can be function-local statics (one block lives at a time).
// `__syncthreads` is a barrier over the block's threads and the warp shuffles exchange values
// through a buffer between two barriers over the warp's threads; a thread that returns from the
// kernel leaves both (as on Volta and later). Atomics are real atomics; memory is the host's (a
// device pointer is a host address). What it cannot show: timing, races that the sequential block
// order hides, and precision differences of the GPU's math functions (it uses the host's libm).
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <tuple>
#include <type_traits>
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

// A barrier whose party count drops when a thread leaves.
class Barrier {
    std::mutex m;
    std::condition_variable cv;
    unsigned parties = 0, waiting = 0;
    unsigned long long phase = 0;
    void release() {
        waiting = 0;
        ++phase;
        cv.notify_all();
    }

   public:
    void reset(unsigned n) {
        std::lock_guard<std::mutex> l(m);
        parties = n;
        waiting = 0;
    }
    void wait() {
        std::unique_lock<std::mutex> l(m);
        const unsigned long long ph = phase;
        if (++waiting == parties) {
            release();
        } else {
            cv.wait(l, [&] { return phase != ph; });
        }
    }
    void leave() {
        std::lock_guard<std::mutex> l(m);
        --parties;
        if (parties > 0 && waiting == parties) release();
    }
};

struct Launch {
    dim3 grid, block;
    Barrier block_bar, end_bar;
    std::vector<Barrier> warp_bars;
    std::vector<unsigned long long> exchange;
    // Per warp and lane: the 4 A and 2 B registers of an mma.
    std::vector<unsigned int> mma;
};

inline Launch* current = nullptr;
inline thread_local dim3 thread_idx, block_idx;

template <class T>
T exchange(T v, unsigned (*source)(unsigned lane, unsigned arg), unsigned arg) {
    static_assert(sizeof(T) <= 8, "shuffles of at most 8 bytes");
    Launch& l = *current;
    const unsigned t = thread_idx.x, w = t / 32, lane = t % 32;
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    l.warp_bars[w].wait();  // the previous exchange's reads are done
    l.exchange[t] = bits;
    l.warp_bars[w].wait();
    const unsigned src = source(lane, arg);
    if (src < 32 && w * 32 + src < l.block.x) std::memcpy(&v, &l.exchange[w * 32 + src], sizeof(T));
    return v;
}

// Runs `kernel` with `args` on grid × block (x only).
template <class... A>
void run(void (*kernel)(A...), std::tuple<A...> args, unsigned grid, unsigned block) {
    Launch l;
    l.grid.x = grid;
    l.block.x = block;
    l.end_bar.reset(block);
    const unsigned warps = (block + 31) / 32;
    l.warp_bars = std::vector<Barrier>(warps);
    l.exchange.assign(warps * 32, 0);
    l.mma.assign(warps * 32 * 6, 0);
    auto reset_block = [&] {
        l.block_bar.reset(block);
        for (unsigned w = 0; w < warps; ++w) l.warp_bars[w].reset(std::min(32u, block - 32 * w));
    };
    reset_block();
    current = &l;
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block; ++t) {
        threads.emplace_back([&, t] {
            thread_idx = dim3{t, 0, 0};
            for (unsigned b = 0; b < grid; ++b) {
                block_idx = dim3{b, 0, 0};
                std::apply(kernel, args);
                l.block_bar.leave();
                l.warp_bars[t / 32].leave();
                l.end_bar.wait();
                if (t == 0) reset_block();
                l.end_bar.wait();
            }
        });
    }
    for (auto& th : threads) th.join();
    current = nullptr;
}

// Launches a kernel whose parameters are pointers then one struct by value, from the pointers'
// addresses and the struct's bytes. Returns 0, or 1 when the counts or the size disagree.
template <class... A, std::size_t... I>
int launch_indexed(void (*kernel)(A...), const std::uint64_t* ptrs, std::size_t nptrs, const void* params, std::size_t params_len,
                   unsigned grid, unsigned block, std::index_sequence<I...>) {
    using Args = std::tuple<A...>;
    constexpr std::size_t n = sizeof...(A);
    using P = std::tuple_element_t<n - 1, Args>;
    if (nptrs != n - 1 || params_len != sizeof(P)) return 1;
    auto arg = [&](auto index) {
        constexpr std::size_t i = decltype(index)::value;
        using T = std::tuple_element_t<i, Args>;
        if constexpr (i + 1 == n) {
            T p;
            std::memcpy(&p, params, sizeof(T));
            return p;
        } else {
            static_assert(std::is_pointer_v<T>, "every parameter but the last is a pointer");
            return reinterpret_cast<T>(static_cast<std::uintptr_t>(ptrs[i]));
        }
    };
    run(kernel, Args{arg(std::integral_constant<std::size_t, I>{})...}, grid, block);
    return 0;
}

template <class... A>
int launch(void (*kernel)(A...), const std::uint64_t* ptrs, std::size_t nptrs, const void* params, std::size_t params_len,
           unsigned grid, unsigned block) {
    return launch_indexed(kernel, ptrs, nptrs, params, params_len, grid, block, std::index_sequence_for<A...>{});
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

inline void __syncthreads() { sim::current->block_bar.wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { sim::current->warp_bars[sim::thread_idx.x / 32].wait(); }
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
// registers, then each computes its four outputs (in f32, k in order).
inline void mma_bf16_16816(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
    sim::Launch& l = *sim::current;
    const unsigned tid = sim::thread_idx.x, w = tid / 32, lane = tid % 32;
    unsigned int* regs = &l.mma[w * 32 * 6];
    l.warp_bars[w].wait();  // the previous mma's reads are done
    for (int i = 0; i < 4; ++i) regs[lane * 6 + i] = a[i];
    regs[lane * 6 + 4] = b[0];
    regs[lane * 6 + 5] = b[1];
    l.warp_bars[w].wait();
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
    if (std::strcmp(entry, #name) == 0) return sim::launch(name, ptrs, nptrs, params, params_len, grid, block);
