//! The Transformer task on a wgpu device: its layer kernels (`kernels`, the WGSL of
//! kernels/wgsl) and its [`Engine`], which runs the passes of
//! `learnlaw_core::transformer::device` — the same model code as the CPU and CUDA engines — over
//! them. Everything stays on the device; inside `Engine::run_steps` a whole unroll pass is one
//! command buffer.
pub mod kernels;

use learnlaw_core::text::TokenData;
use learnlaw_core::transformer::device::{self, DevicePasses};
use learnlaw_core::transformer::TransformerConfig;
use learnlaw_core::{Engine, Error, Result, Set, StepFlops, Storage};

use crate::gpu::{delegate_to_gpu, Gpu, Options, WgpuVec, BACKEND};
use kernels::{DeviceBuf, WgpuKernels};

/// The Transformer engine on a wgpu device (f32 storage and accumulation).
pub struct WgpuTransformer {
    passes: DevicePasses<WgpuKernels>,
}

impl WgpuTransformer {
    pub fn new(cfg: &TransformerConfig, data: &TokenData) -> Result<Self> {
        Self::with_options(cfg, data, &Options::default())
    }

    pub fn with_options(cfg: &TransformerConfig, data: &TokenData, opts: &Options) -> Result<Self> {
        cfg.validate()?;
        if opts.storage != Storage::F32 {
            return Err(Error::config(
                "storage",
                opts.storage.name(),
                "the Transformer's wgpu kernels store everything in f32 (16-bit storage is the perceptron's X)",
            ));
        }
        let k = WgpuKernels::new(Gpu::new(opts)?)?;
        // Every per-chunk buffer within one storage binding (of f32).
        let chunk_seqs = device::chunk_seqs(cfg, data.seq_len, k.gpu.max_binding as usize / 4);
        Ok(WgpuTransformer { passes: DevicePasses::new(k, cfg, data, chunk_seqs)? })
    }

    /// Chunks of at most `seqs` sequences per pass (instead of the memory-sized default): less
    /// memory, more dispatches. Tests use it to cross chunk boundaries on small sets.
    pub fn with_chunk_seqs(mut self, seqs: usize) -> Self {
        self.passes.set_chunk_seqs(seqs);
        self
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.passes.k.gpu.info
    }

    /// Blocks until all submitted work has finished.
    pub fn sync(&mut self) -> Result<()> {
        self.passes.k.sync()
    }

    /// Device bytes of the passes' activations, saved state and scratch (see
    /// `WgpuKernels::working_set_bytes`); the vectors and token sets come on top.
    pub fn working_set_bytes(&self) -> u64 {
        self.passes.k.working_set_bytes()
    }

    /// Sequences per chunk of a pass.
    pub fn chunk_seqs(&self) -> usize {
        self.passes.chunk_seqs()
    }

    /// A view of an engine vector for the kernels (the same device memory).
    fn view(v: &WgpuVec) -> DeviceBuf {
        DeviceBuf::of(&v.buf, v.len)
    }
}

impl Engine for WgpuTransformer {
    type Real = f32;
    type Vec = WgpuVec;

    fn name(&self) -> String {
        format!("{BACKEND}-f32")
    }
    fn num_params(&self) -> usize {
        self.passes.num_params()
    }
    fn num_train(&self) -> usize {
        self.passes.num_train()
    }
    fn num_classes(&self) -> usize {
        self.passes.config().vocab_size
    }
    fn step_flops(&self) -> StepFlops {
        self.passes.step_flops()
    }

    delegate_to_gpu!(passes.k.gpu);

    fn forward_step(
        &mut self,
        theta: &WgpuVec,
        gamma: &WgpuVec,
        t: usize,
        eta: f64,
        theta_next: &mut WgpuVec,
        dev_loss: Option<(&mut WgpuVec, usize)>,
    ) -> Result<()> {
        let curve = dev_loss.map(|(c, i)| (Self::view(c), i));
        let (th, g, mut next) = (Self::view(theta), Self::view(gamma), Self::view(theta_next));
        self.passes.forward_step(&th, (&g, t), eta, &mut next, curve.as_ref().map(|(c, i)| (c, *i)))
    }

    fn backward_step(
        &mut self,
        theta: &WgpuVec,
        gamma: &WgpuVec,
        t: usize,
        lambda_next: &WgpuVec,
        eta: f64,
        dev_weight: f64,
        grad_gamma: &mut WgpuVec,
        lambda: &mut WgpuVec,
    ) -> Result<()> {
        let (th, g, ln, gg) = (Self::view(theta), Self::view(gamma), Self::view(lambda_next), Self::view(grad_gamma));
        self.passes.backward_step(&th, (&g, t), &ln, eta, dev_weight, &gg, &mut Self::view(lambda))
    }

    fn loss(&mut self, set: Set, theta: &WgpuVec) -> Result<f64> {
        self.passes.mean_loss(set, &Self::view(theta), None)
    }
    fn loss_grad(&mut self, set: Set, theta: &WgpuVec, grad: &mut WgpuVec) -> Result<f64> {
        self.passes.mean_loss(set, &Self::view(theta), Some(&mut Self::view(grad)))
    }
    fn train_losses(&mut self, theta: &WgpuVec, out: &mut WgpuVec) -> Result<()> {
        self.passes.train_losses(&Self::view(theta), &Self::view(out))
    }
    fn train_dots(&mut self, theta: &WgpuVec, v: &WgpuVec, out: &mut WgpuVec) -> Result<()> {
        self.passes.train_dots(&Self::view(theta), &Self::view(v), &Self::view(out))
    }
}
