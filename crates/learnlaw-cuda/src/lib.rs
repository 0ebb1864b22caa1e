//! learnlaw-cuda: the CUDA backend. [`CudaPerceptron`] is the perceptron task's
//! [`Engine`](learnlaw_core::Engine) on an NVIDIA GPU, through cudarc (driver API + NVRTC, both
//! loaded dynamically); [`CudaTransformer`] the Transformer's (module [`transformer`]; the notes
//! below are the perceptron's).
//!
//! The math, the CPU engines and the unroll these engines plug into are in `learnlaw-core`; the
//! WGSL engines in `learnlaw-wgpu`; the `learnlaw` facade re-exports this crate as
//! `learnlaw::cuda_backend` and shows the training loop an engine is driven by.
//!
//! - The build needs no CUDA toolkit and no GPU. [`CudaPerceptron::new`] first probes for the
//!   driver library (libcuda) and NVRTC (libnvrtc.so.13, or .12 …) with cudarc's
//!   `is_culib_present`, so a machine without them gets `Error::Unavailable { backend: "cuda", .. }`,
//!   never a panic; so does a driver without a usable device. A kernel that does not compile or a
//!   failed launch or transfer is `Error::Device`, which tests never treat as a skip.
//! - Kernels live in `kernels/cuda/*.cu` (one family per file; each header gives the math, the
//!   buffer shapes, the launch geometry and the variants) and are compiled by NVRTC at first use
//!   to SASS for the device's own architecture (`sm_XY`, a cubin the driver loads as it is, so any
//!   NVRTC of the driver's major works; PTX for an older architecture only where NVRTC cannot
//!   target the device; an architecture NVRTC does not support at all is `Error::Unavailable`).
//!   Outputs are cached per process, the loaded module per engine. [`compile_cubin`] and
//!   [`compile_ptx`] are the same compilations, used by the CI check that compiles every file to
//!   an `sm_90` cubin and to `compute_90` PTX assembled with `ptxas -arch=sm_90`, on a machine
//!   without a GPU (tests/nvrtc_compile.rs); [`versions`] and [`DeviceInfo`] say what was found.
//! - Semantics match the CPU engine (`learnlaw_core::perceptron::CpuPerceptron<f32>`): f32 storage
//!   and accumulation (losses summed in f64), γ = 0 rows skipped in the forward step, partial sums
//!   reduced in a fixed order, so results are reproducible run to run on a given GPU; the
//!   conformance tests check every operation against the f64 reference.
//! - One launch per step: a forward step, a backward step, `loss` and `loss_grad` are each one
//!   kernel whose last block to finish reduces the partial sums and writes the result (θ_next, λ,
//!   the dev loss into the caller's curve slot). Nothing is read back per step; `loss`,
//!   `loss_grad`, `download`, `max_abs` and the policy updates `project_simplex_rows` and
//!   `exp_grad_rows` (their non-finite flag) wait for the device. The SGD and exp-grad outer
//!   updates and block policies' `tie_rows` run on the device, so γ stays there (Adam's moments
//!   are still kept on the host).
//! - CUDA graphs: at the paper's size a step is a few µs of device work, about what launching it
//!   costs, so the unroll's passes go through `Engine::run_steps`: the engine records the steps,
//!   and a sequence it has seen before (same kernels, pointers and scalars, compared as bytes) is
//!   captured once into a CUDA graph and then replayed as one launch per pass. An outer epoch of
//!   the search repeats the same two sequences (the policy is updated in place), so from the third
//!   epoch on its 2T launches are two graph launches. [`Options::direct_launches`] turns this off;
//!   [`CudaPerceptron::graph_stats`] counts what happened.
//! - Storage of X ([`Options::storage`]): f32 (`cuda-f32`), bf16 (`cuda-bf16`) or f16
//!   (`cuda-f16`), converted on upload by [`Storage::encode_rows`] (nearest, ties to even); the same
//!   kernels compiled with `X_STORAGE` widen each 4-value load to f32, so arithmetic is the f32
//!   engine's on rounded X ([`Storage::round`]) and a pass reads half the bytes.
//! - Everything runs on one stream of the device's primary context, with cudarc's per-buffer event
//!   tracking off (single stream: stream order is the only ordering needed).
//! - X is stored with rows zero-padded to a multiple of 4 values (16- or 8-byte vector loads).
mod gpu;
mod graphs;
mod host_sim;
mod perceptron;
mod runtime;
pub mod transformer;
mod vector_ops;

pub use gpu::{
    compile_cubin, compile_ptx, driver_available, driver_version, nvrtc_available, nvrtc_supported_archs, nvrtc_version, versions,
    DeviceInfo, KernelFile, Loading,
};
pub use graphs::GraphStats;
pub use host_sim::HostSim;
pub use learnlaw_core::Storage;
pub use perceptron::{CudaPerceptron, Options, PASS_PARAMS_BYTES, PERCEPTRON};
pub use transformer::kernels::{CudaKernels, ATTENTION, CROSS_ENTROPY, ELEMENTWISE, EMBEDDING, GEMM, RMSNORM};
pub use transformer::CudaTransformer;
pub use vector_ops::{CudaVec, SIMPLEX, VECTOR};
/// Every kernel file the engines use (the CI compile check also compiles every file in
/// kernels/cuda, and checks that this list covers them).
pub const KERNEL_FILES: [KernelFile; 9] = [PERCEPTRON, SIMPLEX, VECTOR, GEMM, ELEMENTWISE, RMSNORM, ATTENTION, EMBEDDING, CROSS_ENTROPY];
