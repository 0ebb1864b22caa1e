//! learnlaw-core: the Learning Law's math, the CPU reference backend, the policy-search driver
//! (forward unroll, adjoint pass, outer optimisation) and the file formats. The GPU engines
//! implement its [`Engine`] in `learnlaw-wgpu` (WGSL) and `learnlaw-cuda` (CUDA); `learnlaw-cli` is
//! the `learnlaw` command; the `learnlaw` facade re-exports all three libraries and its front page
//! shows how to drive an engine from your own training loop.
//!
//! - `engine`: the one trait every backend implements (fused forward and adjoint steps).
//! - `perceptron`: the perceptron task — its math, the plain f64 reference and the CPU engine.
//! - `transformer`: the Transformer LM task — its forward/backward/tangent math and CPU engine.
//! - `unroll`: J(γ) and ∂J/∂γ through the whole training run (adjoint with HVPs, checkpointing).
//! - `online`: online policies that set γ_t from step t's contributions alone (no unroll).
//! - `search`: the outer optimisation of the policy; `eval`: AR, CR, CT, SIM; `run`: run directories.
//! - `data`, `policy`, `simplex`: data sets and their generator, policies, simplex projection.
//! - `files`: atomic and staged writes; `memory`: refusing sizes that cannot fit before allocating.
//! - `text`: the Transformer task's token data — BPE tokenizer, story generator, corpus reading, noise.
//! - `storage`: how a GPU backend stores X (f32, f16, bf16).
//! - `theta`: θ files in and out, in the official PyTorch modules' format or learnlaw's flat θ.
//! - `host_engine`: every engine behind one object-safe interface over host f64 arrays.
//! - `host`, `linalg`: host-vector operations of the CPU engines; strided matrix views and GEMM.
//! - `crew`: a CPU engine's own threads, each running the same share of every step.
//! - `lanes`: 16 SIMD lanes (AVX-512, AVX2 or portable, the same bits on each) for the CPU row kernels.
//! - `analysis`: scaling-law fits, Eq. 9's AR, the report's numbers and the policy heatmap.
pub mod analysis;
pub mod crew;
pub mod data;
pub mod engine;
pub mod error;
pub mod eval;
pub mod files;
pub mod host;
pub mod host_engine;
pub mod lanes;
pub mod linalg;
pub mod memory;
pub mod online;
pub mod perceptron;
pub mod policy;
pub mod real;
pub mod run;
pub mod search;
pub mod simplex;
pub mod storage;
mod tensor_file;
pub mod text;
pub mod theta;
pub mod transformer;
pub mod unroll;

pub use engine::{Engine, Set, StepFlops};
pub use error::{Error, Result};
pub use real::Real;
pub use storage::Storage;
