//! The Transformer task on a CUDA device: its layer kernels (`kernels`, the CUDA C of
//! kernels/cuda) and its [`Engine`], which runs the passes of
//! `learnlaw_core::transformer::device` — the same model code as the CPU and wgpu engines — over
//! them. Everything stays on the device; nothing is read back inside a step.
pub mod kernels;

use std::rc::Rc;

use learnlaw_core::text::TokenData;
use learnlaw_core::transformer::device::{self, DevicePasses};
use learnlaw_core::transformer::TransformerConfig;
use learnlaw_core::{Engine, Result, Set, StepFlops};

use crate::gpu::{Device, BACKEND};
use crate::host_sim::HostSim;
use crate::runtime::Runtime;
use crate::vector_ops::{delegate_vector_ops, CudaVec};
use kernels::{CudaKernels, DeviceBuf};

/// The Transformer engine on a CUDA device (f32 storage and accumulation; `cuda-bf16`: the GEMMs
/// on tensor cores with bf16 operands).
pub struct CudaTransformer {
    /// Where everything runs (a CUDA stream, or the host simulation), shared with the kernels.
    rt: Rc<dyn Runtime>,
    passes: DevicePasses<CudaKernels>,
    bf16_gemm: bool,
}

impl CudaTransformer {
    /// The engine on device 0. No driver, NVRTC or device: `Error::Unavailable`.
    pub fn new(cfg: &TransformerConfig, data: &TokenData) -> Result<Self> {
        Self::on_device(cfg, data, 0)
    }

    pub fn on_device(cfg: &TransformerConfig, data: &TokenData, ordinal: usize) -> Result<Self> {
        cfg.validate()?;
        let gpu = Device::open(ordinal)?;
        Self::with_kernels(cfg, data, CudaKernels::new(&gpu)?)
    }

    /// The engine on the CPU through the CUDA host simulation ([`HostSim`]: the same CUDA C
    /// compiled by the host's C++ compiler), for tests without a GPU; `Error::Unavailable`
    /// without a C++ compiler. Slow: a correctness tool.
    pub fn on_host(cfg: &TransformerConfig, data: &TokenData) -> Result<Self> {
        cfg.validate()?;
        Self::with_kernels(cfg, data, CudaKernels::with_runtime(Rc::new(HostSim::new()?)))
    }

    fn with_kernels(cfg: &TransformerConfig, data: &TokenData, k: CudaKernels) -> Result<Self> {
        // Every per-chunk buffer within the kernels' 32-bit indices.
        let chunk_seqs = device::chunk_seqs(cfg, data.seq_len, u32::MAX as usize);
        let rt = k.runtime();
        Ok(CudaTransformer { rt, passes: DevicePasses::new(k, cfg, data, chunk_seqs)?, bf16_gemm: false })
    }

    /// Chunks of at most `seqs` sequences per pass (instead of the memory-sized default): less
    /// memory, more launches. Tests use it to cross chunk boundaries on small sets.
    pub fn with_chunk_seqs(mut self, seqs: usize) -> Self {
        self.passes.set_chunk_seqs(seqs);
        self
    }

    /// Every GEMM on tensor cores with bf16 operands (f32 storage and sums): the `cuda-bf16`
    /// engine, several times faster, to about three significant digits per product.
    pub fn with_bf16_gemm(mut self) -> Self {
        self.passes.k.set_bf16_gemm(true);
        self.bf16_gemm = true;
        self
    }

    /// What it runs on, e.g. "NVIDIA H200".
    pub fn device_name(&self) -> &str {
        self.rt.name()
    }

    /// Blocks until all launched work has finished.
    pub fn sync(&mut self) -> Result<()> {
        self.passes.k.sync()
    }

    /// Device bytes of the passes' activations, saved state and scratch (see
    /// `CudaKernels::working_set_bytes`); the vectors and token sets come on top.
    pub fn working_set_bytes(&self) -> u64 {
        self.passes.k.working_set_bytes()
    }

    /// Sequences per chunk of a pass.
    pub fn chunk_seqs(&self) -> usize {
        self.passes.chunk_seqs()
    }

    /// A view of an engine vector for the kernels (valid while `v` lives unchanged).
    fn view(v: &CudaVec) -> DeviceBuf {
        DeviceBuf::view(v.mem.ptr, v.len)
    }

    fn runtime(&self) -> &dyn Runtime {
        &*self.rt
    }

    /// The vector operations run in stream order after the kernels' launches; only a kernel
    /// failure recorded since the last call needs reporting.
    fn before_vector_op(&mut self) -> Result<()> {
        learnlaw_core::transformer::device::DeviceKernels::flush(&mut self.passes.k)
    }
}

impl Drop for CudaTransformer {
    /// Waits for queued work before the buffers and modules go.
    fn drop(&mut self) {
        let _ = self.rt.sync();
    }
}

impl Engine for CudaTransformer {
    type Real = f32;
    type Vec = CudaVec;

    fn name(&self) -> String {
        format!("{BACKEND}-{}", if self.bf16_gemm { "bf16" } else { "f32" })
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

    delegate_vector_ops!();

    fn forward_step(
        &mut self,
        theta: &CudaVec,
        gamma: &CudaVec,
        t: usize,
        eta: f64,
        theta_next: &mut CudaVec,
        dev_loss: Option<(&mut CudaVec, usize)>,
    ) -> Result<()> {
        let curve = dev_loss.map(|(c, i)| (Self::view(c), i));
        let (th, g, mut next) = (Self::view(theta), Self::view(gamma), Self::view(theta_next));
        self.passes.forward_step(&th, (&g, t), eta, &mut next, curve.as_ref().map(|(c, i)| (c, *i)))
    }

    fn backward_step(
        &mut self,
        theta: &CudaVec,
        gamma: &CudaVec,
        t: usize,
        lambda_next: &CudaVec,
        eta: f64,
        dev_weight: f64,
        grad_gamma: &mut CudaVec,
        lambda: &mut CudaVec,
    ) -> Result<()> {
        let (th, g, ln, gg) = (Self::view(theta), Self::view(gamma), Self::view(lambda_next), Self::view(grad_gamma));
        self.passes.backward_step(&th, (&g, t), &ln, eta, dev_weight, &gg, &mut Self::view(lambda))
    }

    fn loss(&mut self, set: Set, theta: &CudaVec) -> Result<f64> {
        self.passes.mean_loss(set, &Self::view(theta), None)
    }
    fn loss_grad(&mut self, set: Set, theta: &CudaVec, grad: &mut CudaVec) -> Result<f64> {
        self.passes.mean_loss(set, &Self::view(theta), Some(&mut Self::view(grad)))
    }
    fn train_losses(&mut self, theta: &CudaVec, out: &mut CudaVec) -> Result<()> {
        self.passes.train_losses(&Self::view(theta), &Self::view(out))
    }
    fn train_dots(&mut self, theta: &CudaVec, v: &CudaVec, out: &mut CudaVec) -> Result<()> {
        self.passes.train_dots(&Self::view(theta), &Self::view(v), &Self::view(out))
    }
}
