//! The Transformer engine's passes for a device backend (wgpu, CUDA), written once over its layer
//! kernels: each backend's `Engine` checks shapes, views its vectors as kernel buffers and calls
//! these.
//!
//! The token sets live on the device; θ, γ, λ and every per-example result stay there. A set is
//! processed in fixed chunks of whole sequences (every sequence takes part in every pass: γ = 0
//! rows add zero, so there is no data-dependent compaction as on the CPU); the per-example losses
//! and dots of a chunk are copied into place, and the weighted gradients and HVPs accumulate over
//! the chunks in chunk order, so results are reproducible run to run. Nothing is read back inside
//! a step.
use crate::engine::{Set, StepFlops};
use crate::text::TokenData;
use crate::transformer::kernels::{GemmShape, LayerKernels, Operand, Output, Pair, PairMut, Param, ParamGrads, Tokens};
use crate::transformer::model::{Model, Tape};
use crate::transformer::{check_task, step_flops, Layout, TransformerConfig};
use crate::{Error, Result};

/// Token positions per chunk of a pass by default (activations scale with it).
const CHUNK_TOKENS: usize = 1 << 16;

/// Whole sequences per chunk of a pass: within `CHUNK_TOKENS`, and the largest per-chunk buffer
/// (the FFN activations [B·L, ffn], or attention's [B, heads, L, L] where that is larger) within
/// `max_buffer` values (one storage binding, 32-bit indices).
pub fn chunk_seqs(cfg: &TransformerConfig, seq_len: usize, max_buffer: usize) -> usize {
    let l = seq_len.max(2) - 1;
    let per_seq = (cfg.heads * l * l).max(l * cfg.ffn.max(cfg.hidden));
    (CHUNK_TOKENS / l).min(max_buffer / per_seq.max(1)).max(1)
}

/// What a device backend adds to its layer kernels for these passes.
pub trait DeviceKernels: LayerKernels {
    /// y\[y_at + i\] ← a·x\[x_at + i\] for i < len.
    fn scale_copy(&mut self, a: f32, x: (&Self::Buf, usize), y: (&Self::Buf, usize), len: usize);
    /// y ← x + a·y over `len` values.
    fn axpby(&mut self, x: &Self::Buf, a: f32, y: &Self::Buf, len: usize);
    /// y ← y + a·x over `len` values.
    fn axpy(&mut self, a: f32, x: &Self::Buf, y: &Self::Buf, len: usize);
    /// Another handle to the memory of `b` (kernels write through it).
    fn alias(b: &Self::Buf) -> Self::Buf;
    /// Token rows on the device.
    fn upload_tokens(&mut self, ids: &[u32]) -> Result<Self::Ids>;
    /// A new buffer holding `host`.
    fn upload_buf(&mut self, host: &[f32]) -> Result<Self::Buf>;
    /// The first `len` values of a buffer these kernels allocated (waits for the device).
    fn download_buf(&mut self, b: &Self::Buf, len: usize) -> Result<Vec<f32>>;
    /// Hands on the recorded work; returns the first error since the last flush.
    fn flush(&mut self) -> Result<()>;
    /// Per-sequence sums as a buffer (device backends keep them in f32 buffers).
    fn sums(s: &Self::Sums) -> &Self::Buf;
    /// The values `b` holds.
    fn len(b: &Self::Buf) -> usize;

    // The LM head's cross-entropy kernels, for `head_forward` and `head_backward` below. `z` is a
    // chunk of logits [rows, vocab] (and its tangent): `chunk` = (r0, rows) of the tokens' rows.
    /// Per-row [loss, dot, lse, mean] of the chunk into `head.stats`.
    fn ce_rows(&mut self, t: Tokens<Self::Ids>, z: Pair<Self::Buf>, chunk: (usize, usize), vocab: usize, head: &DeviceHead<Self::Buf>);
    /// Per-sequence mean losses (and dots) from the rows' statistics; the label counts into `head`.
    fn ce_sequences(
        &mut self,
        t: Tokens<Self::Ids>,
        vocab: usize,
        head: &DeviceHead<Self::Buf>,
        losses: &Self::Buf,
        dots: Option<&Self::Buf>,
    );
    /// The chunk's logits (and tangents) turned in place into gz = γ-weighted ∂l/∂z (and its tangent).
    fn ce_backward_rows(
        &mut self,
        t: Tokens<Self::Ids>,
        head: &DeviceHead<Self::Buf>,
        weights: (&Self::Buf, usize),
        chunk: (usize, usize),
        vocab: usize,
        z: Pair<Self::Buf>,
    );
    /// Rows of logits per chunk of the head.
    fn head_chunk_rows(&self, vocab: usize) -> usize;
    /// The logits scratch (value, tangent): taken by the head and given back.
    fn take_logits(&mut self) -> (Self::Buf, Self::Buf);
    fn put_logits(&mut self, z: (Self::Buf, Self::Buf));
}

/// What the LM head + cross-entropy keeps for its backward on a device: per row [loss, dot, lse,
/// mean], per sequence the non-PAD label count.
#[derive(Default)]
pub struct DeviceHead<B> {
    pub stats: B,
    pub counts: B,
}

/// `LayerKernels::head_forward` on a device: the logits a chunk of rows at a time (never for the
/// whole set), each chunk's cross-entropy statistics, then the per-sequence losses and dots.
#[allow(clippy::too_many_arguments)]
pub fn head_forward<K: DeviceKernels>(
    k: &mut K,
    t: Tokens<K::Ids>,
    x: Pair<K::Buf>,
    w: Param<K::Buf>,
    h: usize,
    vocab: usize,
    head: &mut DeviceHead<K::Buf>,
    losses: &mut K::Buf,
    dots: &mut K::Buf,
) {
    let (m, seqs) = (t.rows(), t.seqs);
    let tangent = x.t.is_some();
    k.resize(&mut head.stats, m * 4);
    k.resize(&mut head.counts, seqs);
    k.resize(losses, seqs);
    if tangent {
        k.resize(dots, seqs);
    }
    if m == 0 {
        return;
    }
    let (mut z, mut zt) = k.take_logits();
    let chunk = k.head_chunk_rows(vocab).min(m);
    k.resize(&mut z, chunk * vocab);
    if tangent {
        k.resize(&mut zt, chunk * vocab);
    }
    for r0 in (0..m).step_by(chunk) {
        let rows = chunk.min(m - r0);
        let xo = Operand { v: x.v, t: x.t, at: r0 * h, trans: false };
        let wo = Operand { v: w.theta, t: w.dir, at: w.range.start, trans: false };
        let out = Output { v: Some(&mut z), t: if tangent { Some(&mut zt) } else { None }, at: 0 };
        k.gemm(GemmShape::single(rows, vocab, h), xo, wo, 0.0, out);
        k.ce_rows(t, Pair { v: &z, t: tangent.then_some(&zt) }, (r0, rows), vocab, head);
    }
    k.ce_sequences(t, vocab, head, losses, tangent.then_some(&*dots));
    k.put_logits((z, zt));
}

/// `LayerKernels::head_backward` on a device: per chunk of rows, the logits again, turned into
/// gz, then gx += gz·Wᵀ and ∇W += xᵀ·gz (and the tangents).
#[allow(clippy::too_many_arguments)]
pub fn head_backward<K: DeviceKernels>(
    k: &mut K,
    t: Tokens<K::Ids>,
    head: &DeviceHead<K::Buf>,
    x: Pair<K::Buf>,
    w: Param<K::Buf>,
    h: usize,
    vocab: usize,
    weights: (&K::Buf, usize),
    gx: PairMut<K::Buf>,
    out: ParamGrads<K::Buf>,
) {
    let m = t.rows();
    if m == 0 {
        return;
    }
    let tangent = gx.t.is_some();
    let (mut z, mut zt) = k.take_logits();
    let chunk = k.head_chunk_rows(vocab).min(m);
    k.resize(&mut z, chunk * vocab);
    if tangent {
        k.resize(&mut zt, chunk * vocab);
    }
    let (gxv, mut gxt) = (gx.v, gx.t);
    let (mut grad, mut hvp) = (out.grad, out.hvp);
    for r0 in (0..m).step_by(chunk) {
        let rows = chunk.min(m - r0);
        let xo = |trans| Operand { v: x.v, t: if tangent { x.t } else { None }, at: r0 * h, trans };
        let wo = |trans| Operand { v: w.theta, t: if tangent { w.dir } else { None }, at: w.range.start, trans };
        let zo = Output { v: Some(&mut z), t: if tangent { Some(&mut zt) } else { None }, at: 0 };
        k.gemm(GemmShape::single(rows, vocab, h), xo(false), wo(false), 0.0, zo);
        k.ce_backward_rows(t, head, weights, (r0, rows), vocab, Pair { v: &z, t: tangent.then_some(&zt) });
        let gzo = Operand { v: &z, t: tangent.then_some(&zt), at: 0, trans: false };
        let gxo = Output { v: Some(&mut *gxv), t: gxt.as_deref_mut(), at: r0 * h };
        k.gemm(GemmShape::single(rows, h, vocab), gzo, wo(true), 1.0, gxo);
        if grad.is_some() || hvp.is_some() {
            let gzo = Operand { v: &z, t: tangent.then_some(&zt), at: 0, trans: false };
            let wout = Output { v: grad.as_deref_mut(), t: if tangent { hvp.as_deref_mut() } else { None }, at: out.range.start };
            k.gemm(GemmShape::single(h, vocab, rows), xo(true), gzo, 1.0, wout);
        }
    }
    k.put_logits((z, zt));
}

/// `b` holds exactly `len` values.
fn check_len<K: DeviceKernels>(what: &str, b: &K::Buf, len: usize) -> Result<()> {
    if K::len(b) == len {
        Ok(())
    } else {
        Err(Error::shape(what, len, K::len(b)))
    }
}

/// A token set on the device.
struct DeviceSet<K: DeviceKernels> {
    ids: K::Ids,
    seqs: usize,
    /// 1/seqs per sequence: the weights of the set's mean loss.
    mean_weights: K::Buf,
}

/// What a pass over a set computes for each chunk (see `DevicePasses::pass`).
enum Pass<'a, B> {
    /// Per-sequence losses.
    Loss,
    /// Per-sequence losses and the gradient of Σ_n w_n l_n (w_n = weights\[at + n\]).
    Grad { weights: (&'a B, usize) },
    /// Per-sequence dots ∇l_n·v.
    Dots { v: &'a B },
    /// Per-sequence dots and the HVP of Σ_n w_n l_n along v.
    DotsHvp { v: &'a B, weights: (&'a B, usize) },
}

impl<B> Clone for Pass<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B> Copy for Pass<'_, B> {}

/// Where a pass's per-sequence values go, chunk by chunk.
enum PerSeq<'a, B> {
    /// a·value of sequence n into `buf[at + n]`.
    Into {
        buf: &'a B,
        at: usize,
        a: f32,
    },
    /// Σ_n w_n·value_n (the set's mean loss with `mean_weights`) into `buf[at]`.
    Mean {
        buf: &'a B,
        at: usize,
    },
    Drop,
}

/// The Transformer's data, tape and passes on one device backend's kernels `k`.
pub struct DevicePasses<K: DeviceKernels> {
    pub k: K,
    cfg: TransformerConfig,
    layout: Layout,
    seq_len: usize,
    train: DeviceSet<K>,
    dev: DeviceSet<K>,
    test: DeviceSet<K>,
    chunk_seqs: usize,
    tape: Tape<K>,
    /// ∇L_dev of a backward step, and a one-element result for the calls that return a loss.
    dev_grad: K::Buf,
    scalar: K::Buf,
}

impl<K: DeviceKernels> DevicePasses<K> {
    /// The sets uploaded to `k`'s device; passes in chunks of `chunk_seqs` sequences.
    pub fn new(mut k: K, cfg: &TransformerConfig, data: &TokenData, chunk_seqs: usize) -> Result<Self> {
        check_task(cfg, data)?;
        let seq_len = data.seq_len;
        let mut set = |rows: &[u32]| -> Result<DeviceSet<K>> {
            let seqs = rows.len() / seq_len;
            let w = vec![1.0 / seqs.max(1) as f32; seqs];
            Ok(DeviceSet { ids: k.upload_tokens(rows)?, seqs, mean_weights: k.upload_buf(&w)? })
        };
        let (train, dev, test) = (set(&data.train)?, set(&data.dev)?, set(&data.test)?);
        let p = cfg.layout().len;
        let (dev_grad, scalar) = (k.upload_buf(&vec![0.0; p])?, k.upload_buf(&[0.0])?);
        Ok(DevicePasses {
            k,
            cfg: cfg.clone(),
            layout: cfg.layout(),
            seq_len,
            train,
            dev,
            test,
            chunk_seqs: chunk_seqs.max(1),
            tape: Tape::default(),
            dev_grad,
            scalar,
        })
    }

    pub fn set_chunk_seqs(&mut self, seqs: usize) {
        self.chunk_seqs = seqs.max(1);
    }
    /// Sequences per chunk of a pass.
    pub fn chunk_seqs(&self) -> usize {
        self.chunk_seqs
    }
    pub fn num_params(&self) -> usize {
        self.layout.len
    }
    pub fn num_train(&self) -> usize {
        self.train.seqs
    }
    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }
    pub fn step_flops(&self) -> StepFlops {
        let l = self.seq_len - 1;
        step_flops(&self.cfg, self.train.seqs * l, self.dev.seqs * l, l)
    }

    /// A policy of `gamma_len` values holds row t of N.
    fn check_policy(&self, gamma_len: usize, t: usize) -> Result<()> {
        let n = self.train.seqs;
        if gamma_len < (t + 1) * n || !gamma_len.is_multiple_of(n.max(1)) {
            return Err(Error::shape("policy", format!("[T > {t}, {n}]"), gamma_len));
        }
        Ok(())
    }

    /// θ_next ← θ − η Σ_n γ_{t,n} ∇l_n(θ), and the dev loss at θ into `dev_loss` (curve, slot):
    /// `Engine::forward_step` on views of the engine's vectors.
    pub fn forward_step(
        &mut self,
        theta: &K::Buf,
        (gamma, t): (&K::Buf, usize),
        eta: f64,
        next: &mut K::Buf,
        dev_loss: Option<(&K::Buf, usize)>,
    ) -> Result<()> {
        let (p, n) = (self.layout.len, self.train.seqs);
        check_len::<K>("theta", theta, p)?;
        check_len::<K>("theta_next", next, p)?;
        self.check_policy(K::len(gamma), t)?;
        if let Some((curve, i)) = dev_loss {
            if i >= K::len(curve) {
                return Err(Error::shape("dev-loss curve", format!("more than {i} entries"), K::len(curve)));
            }
            self.pass(theta, Some(Set::Dev), Pass::Loss, PerSeq::Mean { buf: curve, at: i }, None);
        }
        self.k.zero(next, p);
        self.pass(theta, None, Pass::Grad { weights: (gamma, t * n) }, PerSeq::Drop, Some(next));
        self.k.axpby(theta, -(eta as f32), next, p);
        self.k.flush()
    }

    /// λ = dev_weight·∇L_dev + λ_next − η·Hλ_next and ∂J/∂γ_t = −η ∇l_n·λ_next into row t of
    /// `grad_gamma`, from one tangent pass: `Engine::backward_step` on views.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_step(
        &mut self,
        theta: &K::Buf,
        (gamma, t): (&K::Buf, usize),
        lambda_next: &K::Buf,
        eta: f64,
        dev_weight: f64,
        grad_gamma: &K::Buf,
        lambda: &mut K::Buf,
    ) -> Result<()> {
        let (p, n) = (self.layout.len, self.train.seqs);
        for (what, v) in [("theta", theta), ("lambda_next", lambda_next), ("lambda", &*lambda)] {
            check_len::<K>(what, v, p)?;
        }
        check_len::<K>("grad_gamma", grad_gamma, K::len(gamma))?;
        self.check_policy(K::len(gamma), t)?;
        self.k.zero(lambda, p);
        let out = PerSeq::Into { buf: grad_gamma, at: t * n, a: -(eta as f32) };
        self.pass(theta, None, Pass::DotsHvp { v: lambda_next, weights: (gamma, t * n) }, out, Some(lambda));
        let mut dev_grad = K::alias(&self.dev_grad);
        self.k.zero(&mut dev_grad, p);
        let w = K::alias(&self.dev.mean_weights);
        self.pass(theta, Some(Set::Dev), Pass::Grad { weights: (&w, 0) }, PerSeq::Drop, Some(&mut dev_grad));
        self.k.axpby(lambda_next, -(eta as f32), lambda, p);
        self.k.axpy(dev_weight as f32, &dev_grad, lambda, p);
        self.k.flush()
    }

    /// The mean loss of a set (and its gradient into `grad`), read back.
    pub fn mean_loss(&mut self, set: Set, theta: &K::Buf, grad: Option<&mut K::Buf>) -> Result<f64> {
        check_len::<K>("theta", theta, self.layout.len)?;
        if let Some(g) = &grad {
            check_len::<K>("grad", g, self.layout.len)?;
        }
        let scalar = K::alias(&self.scalar);
        let out = PerSeq::Mean { buf: &scalar, at: 0 };
        match grad {
            Some(g) => {
                self.k.zero(g, self.layout.len);
                let w = K::alias(&self.set(set).mean_weights);
                self.pass(theta, Some(set), Pass::Grad { weights: (&w, 0) }, out, Some(g));
            }
            None => self.pass(theta, Some(set), Pass::Loss, out, None),
        }
        let v = self.k.download_buf(&self.scalar, 1)?;
        Ok(v[0] as f64)
    }

    /// Per-sequence losses of the training set into `out`.
    pub fn train_losses(&mut self, theta: &K::Buf, out: &K::Buf) -> Result<()> {
        check_len::<K>("theta", theta, self.layout.len)?;
        check_len::<K>("losses", out, self.train.seqs)?;
        self.pass(theta, None, Pass::Loss, PerSeq::Into { buf: out, at: 0, a: 1.0 }, None);
        self.k.flush()
    }

    /// Per-sequence dots ∇l_n·v of the training set into `out`.
    pub fn train_dots(&mut self, theta: &K::Buf, v: &K::Buf, out: &K::Buf) -> Result<()> {
        check_len::<K>("theta", theta, self.layout.len)?;
        check_len::<K>("v", v, self.layout.len)?;
        check_len::<K>("dots", out, self.train.seqs)?;
        self.pass(theta, None, Pass::Dots { v }, PerSeq::Into { buf: out, at: 0, a: 1.0 }, None);
        self.k.flush()
    }

    fn set(&self, set: Set) -> &DeviceSet<K> {
        match set {
            Set::Dev => &self.dev,
            Set::Test => &self.test,
        }
    }

    /// Runs `pass` at θ over every chunk of `set` (the training set if None): the per-sequence
    /// values go to `out`; the gradient or HVP, when the pass has weights, is added into `acc`.
    fn pass(&mut self, theta: &K::Buf, set: Option<Set>, pass: Pass<K::Buf>, out: PerSeq<K::Buf>, mut acc: Option<&mut K::Buf>) {
        let DevicePasses { k, cfg, layout, seq_len, chunk_seqs, tape, train, dev, test, .. } = self;
        let data = match set {
            None => &*train,
            Some(Set::Dev) => &*dev,
            Some(Set::Test) => &*test,
        };
        let direction = match pass {
            Pass::Dots { v } | Pass::DotsHvp { v, .. } => Some(v),
            _ => None,
        };
        let model = Model::<K> { cfg, layout, theta, direction };
        for s0 in (0..data.seqs).step_by(*chunk_seqs) {
            let seqs = (*chunk_seqs).min(data.seqs - s0);
            let tokens = Tokens { ids: &data.ids, at: s0 * *seq_len, seqs, seq_len: *seq_len };
            model.forward(k, tokens, tape);
            match pass {
                Pass::Grad { weights: (w, at) } => model.backward(k, tokens, tape, (w, at + s0), acc.as_deref_mut(), None),
                Pass::DotsHvp { weights: (w, at), .. } => model.backward(k, tokens, tape, (w, at + s0), None, acc.as_deref_mut()),
                _ => {}
            }
            let values = K::sums(if direction.is_some() { tape.dots() } else { tape.losses() });
            match out {
                PerSeq::Into { buf, at, a } => k.scale_copy(a, (values, 0), (buf, at + s0), seqs),
                PerSeq::Mean { buf, at } => {
                    // Σ_n w_n·value_n as a [1, seqs]·[seqs, 1] product: the chunks add in order.
                    let a = Operand { v: values, t: None, at: 0, trans: false };
                    let w = Operand { v: &data.mean_weights, t: None, at: s0, trans: false };
                    let c = Output { v: Some(&mut K::alias(buf)), t: None, at };
                    k.gemm(GemmShape::single(1, 1, seqs), a, w, if s0 == 0 { 0.0 } else { 1.0 }, c);
                }
                PerSeq::Drop => {}
            }
        }
    }
}
