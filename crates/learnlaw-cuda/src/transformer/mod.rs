//! The Transformer task on a CUDA device: its layer kernels (`kernels`, the CUDA C of
//! kernels/cuda) and its [`Engine`], which runs `learnlaw_core::transformer::model` — the same
//! model code as the CPU and wgpu engines — over them.
//!
//! The token sets live on the device from construction; θ, γ, λ and every per-example result stay
//! there. A set is processed in fixed chunks of whole sequences (every sequence takes part in every
//! pass: γ = 0 rows add zero); the per-example losses and dots of a chunk are copied into place,
//! and the weighted gradients and HVPs accumulate over the chunks in chunk order, so results are
//! reproducible run to run. Nothing is read back inside a step.
pub mod kernels;

use std::rc::Rc;

use learnlaw_core::text::TokenData;
use learnlaw_core::transformer::kernels::{GemmShape, LayerKernels, Operand, Output, Tokens};
use learnlaw_core::transformer::model::{Model, Tape};
use learnlaw_core::transformer::{check_task, step_flops, Layout, TransformerConfig};
use learnlaw_core::{Engine, Error, Result, Set, StepFlops};

use crate::gpu::{Device, BACKEND};
use crate::host_sim::HostSim;
use crate::runtime::Runtime;
use crate::vector_ops::{check_len, delegate_vector_ops, CudaVec};
use kernels::{CudaKernels, DeviceBuf, DeviceIds};

/// Token positions per chunk of a pass (activations scale with it: at the paper's model about
/// 0.3 GiB of activations and saved state per 2^16 tokens).
const CHUNK_TOKENS: usize = 1 << 16;

/// A token set on the device.
struct DeviceSet {
    ids: DeviceIds,
    seqs: usize,
    /// 1/seqs per sequence: the weights of the set's mean loss.
    mean_weights: DeviceBuf,
}

/// What a pass over a set computes for each chunk (see `CudaTransformer::pass`).
#[derive(Clone, Copy)]
enum Pass<'a> {
    /// Per-sequence losses.
    Loss,
    /// Per-sequence losses and the gradient of Σ_n w_n l_n (w_n = weights[at + n]).
    Grad { weights: (&'a DeviceBuf, usize) },
    /// Per-sequence dots ∇l_n·v.
    Dots { v: &'a DeviceBuf },
    /// Per-sequence dots and the HVP of Σ_n w_n l_n along v.
    DotsHvp { v: &'a DeviceBuf, weights: (&'a DeviceBuf, usize) },
}

/// Where a pass's per-sequence values go, chunk by chunk.
enum PerSeq<'a> {
    /// a·value of sequence n into `buf[at + n]`.
    Into {
        buf: &'a DeviceBuf,
        at: usize,
        a: f32,
    },
    /// Σ_n w_n·value_n (the set's mean loss with `mean_weights`) into `buf[at]`.
    Mean {
        buf: &'a DeviceBuf,
        at: usize,
    },
    Drop,
}

/// The Transformer engine on a CUDA device (f32 storage and accumulation).
pub struct CudaTransformer {
    /// Where everything runs (a CUDA stream, or the host simulation), shared with `k`.
    rt: Rc<dyn Runtime>,
    k: CudaKernels,
    cfg: TransformerConfig,
    layout: Layout,
    seq_len: usize,
    train: DeviceSet,
    dev: DeviceSet,
    test: DeviceSet,
    chunk_seqs: usize,
    bf16_gemm: bool,
    tape: Tape<CudaKernels>,
    /// ∇L_dev of a backward step, and a one-element result for the calls that return a loss.
    dev_grad: DeviceBuf,
    scalar: DeviceBuf,
}

impl CudaTransformer {
    /// The engine on device 0. No driver, NVRTC or device: `Error::Unavailable`.
    pub fn new(cfg: &TransformerConfig, data: &TokenData) -> Result<Self> {
        Self::on_device(cfg, data, 0)
    }

    pub fn on_device(cfg: &TransformerConfig, data: &TokenData, ordinal: usize) -> Result<Self> {
        check_task(cfg, data)?;
        let gpu = Device::open(ordinal)?;
        let k = CudaKernels::new(&gpu)?;
        Self::with_kernels(cfg, data, k)
    }

    /// The engine on the CPU through the CUDA host simulation ([`HostSim`]: the same CUDA C
    /// compiled by the host's C++ compiler), for tests without a GPU; `Error::Unavailable`
    /// without a C++ compiler. Slow: a correctness tool.
    pub fn on_host(cfg: &TransformerConfig, data: &TokenData) -> Result<Self> {
        check_task(cfg, data)?;
        Self::with_kernels(cfg, data, CudaKernels::with_runtime(Rc::new(HostSim::new()?)))
    }

    fn with_kernels(cfg: &TransformerConfig, data: &TokenData, mut k: CudaKernels) -> Result<Self> {
        let seq_len = data.seq_len;
        let l = seq_len - 1;
        // Whole sequences per chunk, within the token budget and the kernels' 32-bit indices (the
        // FFN activations [B·L, ffn] and, for wide heads, attention's [B, heads, L, L] are the
        // largest per-chunk buffers).
        let per_seq = (cfg.heads * l * l).max(l * cfg.ffn.max(cfg.hidden));
        let chunk_seqs = (CHUNK_TOKENS / l).min(u32::MAX as usize / per_seq).max(1);
        let mut set = |rows: &[u32]| -> Result<DeviceSet> {
            let seqs = rows.len() / seq_len;
            let w = vec![1.0 / seqs.max(1) as f32; seqs];
            Ok(DeviceSet { ids: k.upload_tokens(rows)?, seqs, mean_weights: k.upload_buf(&w)? })
        };
        let (train, dev, test) = (set(&data.train)?, set(&data.dev)?, set(&data.test)?);
        let p = cfg.layout().len;
        let (dev_grad, scalar) = (k.upload_buf(&vec![0.0; p])?, k.upload_buf(&[0.0])?);
        Ok(CudaTransformer {
            rt: k.runtime(),
            k,
            cfg: cfg.clone(),
            layout: cfg.layout(),
            seq_len,
            train,
            dev,
            test,
            chunk_seqs,
            bf16_gemm: false,
            tape: Tape::default(),
            dev_grad,
            scalar,
        })
    }

    /// Chunks of at most `seqs` sequences per pass (instead of the memory-sized default): less
    /// memory, more launches. Tests use it to cross chunk boundaries on small sets.
    pub fn with_chunk_seqs(mut self, seqs: usize) -> Self {
        self.chunk_seqs = seqs.max(1);
        self
    }

    /// Every GEMM on tensor cores with bf16 operands (f32 storage and sums): the `cuda-bf16`
    /// engine, several times faster, to about three significant digits per product.
    pub fn with_bf16_gemm(mut self) -> Self {
        self.k.set_bf16_gemm(true);
        self.bf16_gemm = true;
        self
    }

    /// What it runs on, e.g. "NVIDIA H200".
    pub fn device_name(&self) -> &str {
        self.rt.name()
    }

    /// Blocks until all launched work has finished.
    pub fn sync(&mut self) -> Result<()> {
        self.k.sync()
    }

    /// Device bytes of the passes' activations, saved state and scratch (see
    /// `CudaKernels::working_set_bytes`); the vectors and token sets come on top.
    pub fn working_set_bytes(&self) -> u64 {
        self.k.working_set_bytes()
    }

    /// Sequences per chunk of a pass.
    pub fn chunk_seqs(&self) -> usize {
        self.chunk_seqs
    }

    fn set(&self, set: Set) -> &DeviceSet {
        match set {
            Set::Dev => &self.dev,
            Set::Test => &self.test,
        }
    }

    /// A view of an engine vector for the kernels (valid while `v` lives unchanged).
    fn view(&self, v: &CudaVec) -> DeviceBuf {
        DeviceBuf::view(v.mem.ptr, v.len)
    }

    fn runtime(&self) -> &dyn Runtime {
        &*self.rt
    }

    /// The engine's vector operations run in stream order after the kernels' launches; only a
    /// kernel failure recorded since the last call needs reporting.
    fn before_vector_op(&mut self) -> Result<()> {
        self.k.flush()
    }

    /// Runs `pass` at θ over every chunk of `set` (the training set if None): the per-sequence
    /// values go to `out`; the gradient or HVP, when the pass has weights, is added into `acc`.
    fn pass(&mut self, theta: &DeviceBuf, set: Option<Set>, pass: Pass, out: PerSeq, mut acc: Option<&mut DeviceBuf>) {
        let CudaTransformer { k, cfg, layout, seq_len, chunk_seqs, tape, train, dev, test, .. } = self;
        let data = match set {
            None => &*train,
            Some(Set::Dev) => &*dev,
            Some(Set::Test) => &*test,
        };
        let direction = match pass {
            Pass::Dots { v } | Pass::DotsHvp { v, .. } => Some(v),
            _ => None,
        };
        let model = Model::<CudaKernels> { cfg, layout, theta, direction };
        for s0 in (0..data.seqs).step_by(*chunk_seqs) {
            let seqs = (*chunk_seqs).min(data.seqs - s0);
            let tokens = Tokens { ids: &data.ids, at: s0 * *seq_len, seqs, seq_len: *seq_len };
            model.forward(k, tokens, tape);
            match pass {
                Pass::Grad { weights: (w, at) } => model.backward(k, tokens, tape, (w, at + s0), acc.as_deref_mut(), None),
                Pass::DotsHvp { weights: (w, at), .. } => model.backward(k, tokens, tape, (w, at + s0), None, acc.as_deref_mut()),
                _ => {}
            }
            let values = if direction.is_some() { tape.dots() } else { tape.losses() };
            match out {
                PerSeq::Into { buf, at, a } => k.scale_copy(a, (values, 0), (buf, at + s0), seqs),
                PerSeq::Mean { buf, at } => {
                    // Σ_n w_n·value_n as a [1, seqs]·[seqs, 1] product: the chunks add in order.
                    let a = Operand { v: values, t: None, at: 0, trans: false };
                    let w = Operand { v: &data.mean_weights, t: None, at: s0, trans: false };
                    let c = Output { v: Some(&mut buf.alias()), t: None, at };
                    k.gemm(GemmShape::single(1, 1, seqs), a, w, if s0 == 0 { 0.0 } else { 1.0 }, c);
                }
                PerSeq::Drop => {}
            }
        }
    }

    /// The mean loss of a set (and its gradient into `grad`), read back.
    fn mean_loss(&mut self, set: Set, theta: &CudaVec, grad: Option<&CudaVec>) -> Result<f64> {
        let th = self.view(theta);
        let scalar = self.scalar.alias();
        let out = PerSeq::Mean { buf: &scalar, at: 0 };
        match grad {
            Some(g) => {
                let mut acc = self.view(g);
                self.k.zero(&mut acc, g.len);
                let w = self.set(set).mean_weights.alias();
                self.pass(&th, Some(set), Pass::Grad { weights: (&w, 0) }, out, Some(&mut acc));
            }
            None => self.pass(&th, Some(set), Pass::Loss, out, None),
        }
        let v = self.k.download_buf(&self.scalar, 1)?;
        Ok(v[0] as f64)
    }

    fn check_policy(&self, gamma: &CudaVec, t: usize) -> Result<()> {
        let n = self.train.seqs;
        if gamma.len < (t + 1) * n || !gamma.len.is_multiple_of(n.max(1)) {
            return Err(Error::shape("policy", format!("[T > {t}, {n}]"), gamma.len));
        }
        Ok(())
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
        self.layout.len
    }
    fn num_train(&self) -> usize {
        self.train.seqs
    }
    fn num_classes(&self) -> usize {
        self.cfg.vocab_size
    }
    fn step_flops(&self) -> StepFlops {
        let l = self.seq_len - 1;
        step_flops(&self.cfg, self.train.seqs * l, self.dev.seqs * l, l)
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
        let (p, n) = (self.layout.len, self.train.seqs);
        check_len("theta", theta, p)?;
        check_len("theta_next", theta_next, p)?;
        self.check_policy(gamma, t)?;
        let th = self.view(theta);
        if let Some((curve, i)) = dev_loss {
            if i >= curve.len {
                return Err(Error::shape("dev-loss curve", format!("more than {i} entries"), curve.len));
            }
            let c = self.view(curve);
            self.pass(&th, Some(Set::Dev), Pass::Loss, PerSeq::Mean { buf: &c, at: i }, None);
        }
        // θ_next ← Σ_n γ_{t,n} ∇l_n, then θ − η·θ_next.
        let mut next = self.view(theta_next);
        self.k.zero(&mut next, p);
        let g = self.view(gamma);
        self.pass(&th, None, Pass::Grad { weights: (&g, t * n) }, PerSeq::Drop, Some(&mut next));
        self.k.axpby(&th, -(eta as f32), &next, p);
        self.k.flush()
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
        let (p, n) = (self.layout.len, self.train.seqs);
        for (what, v) in [("theta", theta), ("lambda_next", lambda_next), ("lambda", &*lambda)] {
            check_len(what, v, p)?;
        }
        check_len("grad_gamma", grad_gamma, gamma.len)?;
        self.check_policy(gamma, t)?;
        let (th, ln) = (self.view(theta), self.view(lambda_next));
        let (g, gg) = (self.view(gamma), self.view(grad_gamma));
        // λ ← H λ_next, and ∂J/∂γ_t = −η ∇l_n·λ_next from the same tangent pass.
        let mut lam = self.view(lambda);
        self.k.zero(&mut lam, p);
        let out = PerSeq::Into { buf: &gg, at: t * n, a: -(eta as f32) };
        self.pass(&th, None, Pass::DotsHvp { v: &ln, weights: (&g, t * n) }, out, Some(&mut lam));
        // λ = dev_weight·∇L_dev + λ_next − η·Hλ_next.
        let mut dev_grad = self.dev_grad.alias();
        self.k.zero(&mut dev_grad, p);
        let w = self.dev.mean_weights.alias();
        self.pass(&th, Some(Set::Dev), Pass::Grad { weights: (&w, 0) }, PerSeq::Drop, Some(&mut dev_grad));
        self.k.axpby(&ln, -(eta as f32), &lam, p);
        self.k.axpy(dev_weight as f32, &dev_grad, &lam, p);
        self.k.flush()
    }

    fn loss(&mut self, set: Set, theta: &CudaVec) -> Result<f64> {
        check_len("theta", theta, self.layout.len)?;
        self.mean_loss(set, theta, None)
    }
    fn loss_grad(&mut self, set: Set, theta: &CudaVec, grad: &mut CudaVec) -> Result<f64> {
        check_len("theta", theta, self.layout.len)?;
        check_len("grad", grad, self.layout.len)?;
        self.mean_loss(set, theta, Some(grad))
    }
    fn train_losses(&mut self, theta: &CudaVec, out: &mut CudaVec) -> Result<()> {
        check_len("theta", theta, self.layout.len)?;
        check_len("losses", out, self.train.seqs)?;
        let (th, o) = (self.view(theta), self.view(out));
        self.pass(&th, None, Pass::Loss, PerSeq::Into { buf: &o, at: 0, a: 1.0 }, None);
        self.k.flush()
    }
    fn train_dots(&mut self, theta: &CudaVec, v: &CudaVec, out: &mut CudaVec) -> Result<()> {
        check_len("theta", theta, self.layout.len)?;
        check_len("v", v, self.layout.len)?;
        check_len("dots", out, self.train.seqs)?;
        let (th, dir, o) = (self.view(theta), self.view(v), self.view(out));
        self.pass(&th, None, Pass::Dots { v: &dir }, PerSeq::Into { buf: &o, at: 0, a: 1.0 }, None);
        self.k.flush()
    }
}
