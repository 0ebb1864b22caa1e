//! learnlaw: near-optimal learning policies in the sense of the Learning Law (Gu et al., 2024).
//!
//! This facade re-exports the workspace's library crates; see `learnlaw_core` for the math and the
//! CPU reference backend, `wgpu_backend` (crate `learnlaw_wgpu`) for the WGSL engine and
//! `cuda_backend` (crate `learnlaw_cuda`) for the CUDA engine.
pub use learnlaw_core::*;
pub use learnlaw_cuda as cuda_backend;
pub use learnlaw_wgpu as wgpu_backend;
