//! learnlaw-wgpu: the WGSL backend. [`WgpuPerceptron`] is the perceptron task's [`Engine`](learnlaw_core::Engine) on any
//! GPU wgpu reaches (Vulkan, Metal, DX12) and, through Mesa's lavapipe, on a plain CPU;
//! [`WgpuTransformer`] the Transformer's, running the core's model code over [`WgpuKernels`]
//! (module `transformer`; the notes below are the perceptron's).
//!
//! The math, the CPU engines and the unroll these engines plug into are in `learnlaw-core`; the
//! CUDA engines in `learnlaw-cuda`; the `learnlaw` facade re-exports this crate as
//! `learnlaw::wgpu_backend` and shows the training loop an engine is driven by.
//!
//! - Kernels live in `kernels/wgsl/*.wgsl` (one family per file, each with a header giving the
//!   math, buffer shapes and workgroup geometry) and are compiled once, when the engine is made;
//!   the pipelines are cached for the engine's lifetime.
//! - Semantics match the CPU engine (`learnlaw_core::perceptron::CpuPerceptron<f32>`): f32 storage (by default)
//!   and accumulation, per-chunk partial sums over the same 256-row chunks reduced in chunk order,
//!   so results are deterministic run to run; the conformance tests check every operation against
//!   the f64 reference.
//! - Everything of an unrolled run stays on the device. Neither a forward nor a backward step reads
//!   anything back or waits for the device: the forward step's dev loss is written by the loss
//!   reduction's last stage straight into the caller's curve buffer, which the driver downloads
//!   once per unroll. Calls that return a host value (`loss`, `loss_grad`, `download`, `max_abs`,
//!   and the policy updates `project_simplex_rows` and `exp_grad_rows`, which read a non-finite
//!   flag) wait. The SGD and exp-grad outer updates and `tie_rows` run on the device. Steps
//!   inside `Engine::run_steps` (the unroll's passes) are submitted as one command buffer.
//! - Bind groups are cached by kernel and bound buffer ranges (a dispatch's parameters are a
//!   dynamic uniform offset, not part of them), so an unroll creates its bind groups in the first
//!   outer epoch and none after; a dropped vector's groups leave the cache with it.
//! - Large inputs: one storage binding is limited (128 MiB on lavapipe). The data sets' rows go
//!   into buffers of at most one binding (usually all three sets in one; a large set in pieces of
//!   whole 256-row chunks over several), and long vectors (a policy [T, N], ∂J/∂γ) are bound
//!   through aligned windows, so X of several GiB works as long as the device has the memory. [`Options::max_binding_bytes`] lowers the limit (the device is then
//!   created with it) to exercise that path on small problems (tests/large_inputs.rs). What must
//!   still fit: one row of X in one binding; the partial sums [⌈N/256⌉ + ⌈K/256⌉, D] in one
//!   binding (at 128 MiB: (N + K)·D ≤ 2^33, i.e. X ≤ 32 GiB); one engine vector (e.g. the whole policy) in one
//!   buffer (`max_buffer_size`). Past those the constructor or the call returns an error.
//! - X is stored with rows zero-padded to a multiple of 4 values (the kernels load vec4s).
//! - No adapter is `Error::Unavailable { backend: "wgpu", .. }`, never a panic; a kernel that
//!   does not compile or a device error while the engine runs (validation, out of memory, device
//!   lost) is `Error::Device`, which tests never treat as a skip.
//!
//! - Storage of X ([`Options::storage`]): f32 (the default, name `wgpu-f32`) or f16 (`wgpu-f16`),
//!   converted on upload by [`Storage::encode_rows`] (round to nearest even) and read by the same WGSL
//!   compiled with X's element type substituted (see perceptron.wgsl); accumulation is f32 in
//!   both. f16 needs `wgpu::Features::SHADER_F16`: an adapter without it gives
//!   `Error::Unavailable { backend: "wgpu-f16", .. }` (the f32 backend `wgpu` is still usable
//!   there), no adapter at all gives `backend: "wgpu"`. [`Storage::round`] gives the values the
//!   f16 kernels compute with.
//!
//! Modules: `gpu` (the device context every engine shares: device, buffers and their binding
//! windows, pipelines, batched submission; the `Engine` methods that only move vectors),
//! `policy_ops` (axpy, scale, max |x|, tie_rows, the simplex projection and the exp-grad step on
//! any engine's vectors), `perceptron` (the perceptron's data, kernels and `Engine`),
//! `transformer` (the Transformer's layer kernels and `Engine`).
//!
//! - Subgroups: where the adapter offers wgpu `Features::SUBGROUP` (lavapipe does) the kernels
//!   sum a row's dot products with subgroup shuffles, else through workgroup memory
//!   ([`Options::no_subgroups`] forces the latter); both add in the same order, so the bits agree.
//!   The Transformer's GEMMs use them only on subgroups of exactly 8 lanes (lavapipe):
//!   kernels/wgsl/gemm_sg8.wgsl, ~10× gemm.wgsl's register-blocked default there.
//!
//! Not done yet: smaller chunks (or a split-K row phase) for more workgroups per dispatch at the
//! paper's N = 4096 (16 chunks: too few to fill a large GPU).
mod gpu;
mod perceptron;
mod policy_ops;
mod transformer;

pub use gpu::{Options, WgpuVec};
pub use learnlaw_core::Storage;
pub use perceptron::WgpuPerceptron;
pub use transformer::kernels::{DeviceAttention, DeviceBuf, DeviceIds, WgpuKernels};
pub use transformer::WgpuTransformer;
