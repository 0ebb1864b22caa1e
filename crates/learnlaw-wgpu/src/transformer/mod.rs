//! The Transformer task on a wgpu device: its layer kernels (`kernels`), over which
//! `learnlaw_core::transformer::model` runs.
pub mod kernels;
