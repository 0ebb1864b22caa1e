//! The Transformer's math on one chunk of sequences: forward, backward, and their forward-mode
//! tangents along a direction v of parameter space.
//!
//! Every activation is an `Act`: its value and, when a direction is given, its tangent (the
//! derivative of the value along v). That gives the search's two second-order quantities exactly,
//! without materialising per-example gradients:
//! - the tangent of example n's loss is l̇_n = ∇l_n·v, so one tangent forward pass yields all N
//!   per-example gradient dots (the ghost-dot quantity Σ_t δ_{n,t}ᵀ V a_{n,t}, for every parameter
//!   including embeddings and norms, at the cost of ≈ 3 forward passes);
//! - the tangent of the backward pass is the tangent of the gradient, i.e. the exact
//!   Hessian-vector product H v (forward-over-reverse, the R-op; no finite differences).
//!
//! Shapes: a chunk holds B sequences of `seq_len` tokens; inputs are tokens [.., :−1], labels
//! [.., 1:], so L = seq_len − 1 positions and M = B·L rows of width H (hidden). Matrices are
//! row-major, weights [in, out] with y = x·W. Attention probabilities are [B, heads, L, L].
use super::{Layout, TransformerConfig};
use crate::host::{dot, max, sum};
use crate::linalg::{gemm, Mat, MatMut};
use crate::text::PAD;
use crate::Real;

/// RMSNorm's ε, added to the rms (not under the root), as the official code does.
const NORM_EPS: f64 = 1e-8;

/// A value and, in tangent mode, its derivative along the direction (empty otherwise).
#[derive(Clone, Debug, Default)]
pub struct Act<R> {
    pub v: Vec<R>,
    pub t: Vec<R>,
}

impl<R: Real> Act<R> {
    /// Sizes the buffers for `len` values, keeping their memory (a pass reuses one tape, so the
    /// steps of a search allocate nothing). Contents are unspecified: callers overwrite them.
    fn resize(&mut self, len: usize, tangent: bool) {
        self.v.resize(len, R::zero());
        self.t.resize(if tangent { len } else { 0 }, R::zero());
    }
    /// Like `resize`, with every entry zero (for accumulators).
    fn zero(&mut self, len: usize, tangent: bool) {
        self.resize(len, tangent);
        self.v.fill(R::zero());
        self.t.fill(R::zero());
    }
    fn copy_from(&mut self, other: &Act<R>) {
        self.v.clone_from(&other.v);
        self.t.clone_from(&other.t);
    }
}

/// A parameter block: its values and, in tangent mode, the direction's entries for it.
#[derive(Clone, Copy)]
struct Param<'a, R> {
    v: &'a [R],
    t: Option<&'a [R]>,
}

/// RMSNorm's saved forward quantities: n = x/(r + ε) and r = rms(x) per row (with tangents).
#[derive(Default)]
struct Norm<R> {
    n: Act<R>,
    r: Act<R>,
    out: Act<R>,
}

#[derive(Default)]
struct Block<R> {
    /// The block's input (the residual stream).
    x: Act<R>,
    norm1: Norm<R>,
    q: Act<R>,
    k: Act<R>,
    v: Act<R>,
    /// Attention probabilities [B, heads, L, L] (zero above the diagonal).
    p: Act<R>,
    /// Heads' outputs, concatenated [M, H].
    o: Act<R>,
    /// x + attention output.
    mid: Act<R>,
    norm2: Norm<R>,
    /// FFN pre-activation [M, ffn] and its ReLU.
    pre: Act<R>,
    act: Act<R>,
}

/// The backward pass's buffers (kept in the tape so they are reused too).
#[derive(Default)]
struct Scratch<R> {
    /// Gradient of the logits [M, vocab].
    gz: Act<R>,
    /// Gradients of the residual stream: entering a block, after its attention half, leaving it.
    res: Act<R>,
    mid: Act<R>,
    input: Act<R>,
    /// Gradient of a norm's output [M, H], of the FFN's hidden layer [M, ffn], of the heads.
    normed: Act<R>,
    hidden: Act<R>,
    o: Act<R>,
    q: Act<R>,
    k: Act<R>,
    v: Act<R>,
}

/// Everything the backward pass needs from a forward pass over one chunk. Reuse one tape for
/// many passes: its buffers keep their memory.
#[derive(Default)]
pub struct Tape<R> {
    tangent: bool,
    seqs: usize,
    len: usize,
    ids: Vec<u32>,
    labels: Vec<u32>,
    blocks: Vec<Block<R>>,
    /// The last block's output.
    last: Act<R>,
    norm: Norm<R>,
    /// Softmax of the logits [M, vocab] (zero rows at PAD labels), and its tangent.
    probs: Act<R>,
    /// Non-PAD labels per sequence.
    counts: Vec<usize>,
    losses: Vec<f64>,
    dots: Vec<f64>,
    scratch: Scratch<R>,
}

impl<R> Tape<R> {
    /// Per-sequence losses l_n (mean token cross-entropy over the non-PAD labels).
    pub fn losses(&self) -> &[f64] {
        &self.losses
    }
    /// Per-sequence directional derivatives ∇l_n·v (tangent mode only, else empty).
    pub fn dots(&self) -> &[f64] {
        &self.dots
    }
}

/// The model at parameters θ, optionally with a direction v for tangents.
pub struct Model<'a, R> {
    pub cfg: &'a TransformerConfig,
    pub layout: &'a Layout,
    pub theta: &'a [R],
    pub direction: Option<&'a [R]>,
}

impl<'a, R: Real> Model<'a, R> {
    fn param(&self, r: &std::ops::Range<usize>) -> Param<'a, R> {
        Param { v: &self.theta[r.clone()], t: self.direction.map(|d| &d[r.clone()]) }
    }

    /// The forward pass over `rows` ([B, seq_len] token ids, already validated against the
    /// vocabulary and the context length), into `tape`.
    pub fn forward(&self, rows: &[u32], seq_len: usize, tape: &mut Tape<R>) {
        let cfg = self.cfg;
        let (h, l) = (cfg.hidden, seq_len - 1);
        let b = rows.len() / seq_len;
        let m = b * l;
        let tan = self.direction.is_some();
        tape.tangent = tan;
        tape.seqs = b;
        tape.len = l;
        tape.ids.clear();
        tape.ids.extend(rows.chunks_exact(seq_len).flat_map(|r| r[..l].iter().copied()));
        tape.labels.clear();
        tape.labels.extend(rows.chunks_exact(seq_len).flat_map(|r| r[1..].iter().copied()));
        tape.blocks.resize_with(cfg.layers, Default::default);

        // Token + position embeddings, into the first block's input (or the last output).
        let (tok, pos) = (self.param(&self.layout.tok), self.param(&self.layout.pos));
        let x = match tape.blocks.first_mut() {
            Some(blk) => &mut blk.x,
            None => &mut tape.last,
        };
        x.resize(m * h, tan);
        for (row, &id) in tape.ids.iter().enumerate() {
            let (e, p) = (id as usize * h, (row % l) * h);
            for c in 0..h {
                x.v[row * h + c] = tok.v[e + c] + pos.v[p + c];
            }
            if let (Some(tt), Some(pt)) = (tok.t, pos.t) {
                for c in 0..h {
                    x.t[row * h + c] = tt[e + c] + pt[p + c];
                }
            }
        }

        let scale = R::of(cfg.score_scale());
        for i in 0..cfg.layers {
            let bl = &self.layout.blocks[i];
            let (done, rest) = tape.blocks.split_at_mut(i + 1);
            let blk = &mut done[i];
            norm_forward(&blk.x, self.param(&bl.norm1_w), self.param(&bl.norm1_b), h, &mut blk.norm1);
            linear_forward(&blk.norm1.out, self.param(&bl.wq), h, h, &mut blk.q);
            linear_forward(&blk.norm1.out, self.param(&bl.wk), h, h, &mut blk.k);
            linear_forward(&blk.norm1.out, self.param(&bl.wv), h, h, &mut blk.v);
            attention_forward(blk, Dims { seqs: b, len: l, heads: cfg.heads, hidden: h }, scale);
            linear_forward(&blk.o, self.param(&bl.wo), h, h, &mut blk.mid);
            add_into(&mut blk.mid, &blk.x);
            norm_forward(&blk.mid, self.param(&bl.norm2_w), self.param(&bl.norm2_b), h, &mut blk.norm2);
            linear_forward(&blk.norm2.out, self.param(&bl.w1), h, cfg.ffn, &mut blk.pre);
            relu_forward(&blk.pre, &mut blk.act);
            let out = match rest.first_mut() {
                Some(next) => &mut next.x,
                None => &mut tape.last,
            };
            linear_forward(&blk.act, self.param(&bl.w2), cfg.ffn, h, out);
            add_into(out, &blk.mid);
        }

        norm_forward(&tape.last, self.param(&self.layout.norm_w), self.param(&self.layout.norm_b), h, &mut tape.norm);
        linear_forward(&tape.norm.out, self.param(&self.layout.head), h, cfg.vocab_size, &mut tape.probs);
        cross_entropy_forward(tape, cfg.vocab_size);
    }

    /// The backward pass of Σ_n w_n l_n over the tape's sequences: adds the gradient to `grad`
    /// and, in tangent mode, its tangent (the Hessian-vector product H v) to `hvp`.
    pub fn backward(&self, tape: &mut Tape<R>, weights: &[R], grad: Option<&mut [R]>, hvp: Option<&mut [R]>) {
        assert_eq!(weights.len(), tape.seqs, "one weight per sequence");
        assert!(hvp.is_none() || tape.tangent, "an HVP needs a tangent forward pass");
        let cfg = self.cfg;
        let (h, l, vocab) = (cfg.hidden, tape.len, cfg.vocab_size);
        let tan = tape.tangent && hvp.is_some();
        let mut g = Grads { grad, hvp };
        let Tape { blocks, last, norm, probs, labels, counts, ids, scratch: sc, .. } = tape;
        let m = labels.len();

        // d(Σ w_n l_n)/dz = c (p − onehot(y)) with c = w_n / count_n at non-PAD labels.
        sc.gz.zero(probs.v.len(), tan);
        for (row, &y) in labels.iter().enumerate() {
            let n = row / l;
            if y == PAD || counts[n] == 0 {
                continue;
            }
            let c = weights[n] / R::of(counts[n] as f64);
            let span = row * vocab..(row + 1) * vocab;
            for (g, &p) in sc.gz.v[span.clone()].iter_mut().zip(&probs.v[span.clone()]) {
                *g = c * p;
            }
            sc.gz.v[row * vocab + y as usize] = sc.gz.v[row * vocab + y as usize] - c;
            if tan {
                for (g, &p) in sc.gz.t[span.clone()].iter_mut().zip(&probs.t[span]) {
                    *g = c * p;
                }
            }
        }

        sc.normed.zero(m * h, tan);
        linear_backward(&norm.out, self.param(&self.layout.head), &sc.gz, h, vocab, &mut sc.normed, g.at(&self.layout.head));
        sc.res.zero(m * h, tan);
        norm_backward(
            norm,
            last,
            self.param(&self.layout.norm_w),
            &sc.normed,
            h,
            &mut sc.res,
            g.at2(&self.layout.norm_w, &self.layout.norm_b),
        );

        let scale = R::of(cfg.score_scale());
        for (bl, blk) in self.layout.blocks.iter().zip(blocks.iter()).rev() {
            // FFN: out = mid + relu(norm2(mid) W1) W2.
            sc.hidden.zero(m * cfg.ffn, tan);
            linear_backward(&blk.act, self.param(&bl.w2), &sc.res, cfg.ffn, h, &mut sc.hidden, g.at(&bl.w2));
            relu_backward(&blk.pre, &mut sc.hidden);
            sc.normed.zero(m * h, tan);
            linear_backward(&blk.norm2.out, self.param(&bl.w1), &sc.hidden, h, cfg.ffn, &mut sc.normed, g.at(&bl.w1));
            sc.mid.copy_from(&sc.res);
            norm_backward(&blk.norm2, &blk.mid, self.param(&bl.norm2_w), &sc.normed, h, &mut sc.mid, g.at2(&bl.norm2_w, &bl.norm2_b));

            // Attention: mid = x + attn(norm1(x)) Wo.
            sc.o.zero(m * h, tan);
            linear_backward(&blk.o, self.param(&bl.wo), &sc.mid, h, h, &mut sc.o, g.at(&bl.wo));
            attention_backward(blk, sc, Dims { seqs: m / l, len: l, heads: cfg.heads, hidden: h }, scale, tan);
            sc.normed.zero(m * h, tan);
            linear_backward(&blk.norm1.out, self.param(&bl.wq), &sc.q, h, h, &mut sc.normed, g.at(&bl.wq));
            linear_backward(&blk.norm1.out, self.param(&bl.wk), &sc.k, h, h, &mut sc.normed, g.at(&bl.wk));
            linear_backward(&blk.norm1.out, self.param(&bl.wv), &sc.v, h, h, &mut sc.normed, g.at(&bl.wv));
            sc.input.copy_from(&sc.mid);
            norm_backward(&blk.norm1, &blk.x, self.param(&bl.norm1_w), &sc.normed, h, &mut sc.input, g.at2(&bl.norm1_w, &bl.norm1_b));
            std::mem::swap(&mut sc.res, &mut sc.input);
        }

        // Embeddings: scatter the residual stream's gradient to the rows that were read.
        for (dst, src) in [(g.grad.as_deref_mut(), Some(&sc.res.v)), (g.hvp.as_deref_mut(), tan.then_some(&sc.res.t))] {
            if let (Some(dst), Some(src)) = (dst, src) {
                for (row, &id) in ids.iter().enumerate() {
                    let (e, p) = (self.layout.tok.start + id as usize * h, self.layout.pos.start + (row % l) * h);
                    for c in 0..h {
                        dst[e + c] = dst[e + c] + src[row * h + c];
                        dst[p + c] = dst[p + c] + src[row * h + c];
                    }
                }
            }
        }
    }
}

/// The attention's shape: sequences, positions, heads, hidden width.
#[derive(Clone, Copy)]
struct Dims {
    seqs: usize,
    len: usize,
    heads: usize,
    hidden: usize,
}

/// The outputs of a backward pass: the gradient and the HVP, each optional.
struct Grads<'a, R> {
    grad: Option<&'a mut [R]>,
    hvp: Option<&'a mut [R]>,
}

/// One parameter block's slices of the outputs.
struct ParamGrads<'a, R> {
    grad: Option<&'a mut [R]>,
    hvp: Option<&'a mut [R]>,
}

impl<R> Grads<'_, R> {
    fn at(&mut self, r: &std::ops::Range<usize>) -> ParamGrads<'_, R> {
        ParamGrads { grad: self.grad.as_deref_mut().map(|g| &mut g[r.clone()]), hvp: self.hvp.as_deref_mut().map(|g| &mut g[r.clone()]) }
    }
    /// A norm's weight and bias, which are adjacent in θ (weight first).
    fn at2(&mut self, w: &std::ops::Range<usize>, b: &std::ops::Range<usize>) -> ParamGrads<'_, R> {
        debug_assert_eq!(w.end, b.start);
        self.at(&(w.start..b.end))
    }
}

/// y ← y + x (values and tangents).
fn add_into<R: Real>(y: &mut Act<R>, x: &Act<R>) {
    y.v.iter_mut().zip(&x.v).for_each(|(a, &b)| *a = *a + b);
    y.t.iter_mut().zip(&x.t).for_each(|(a, &b)| *a = *a + b);
}

/// y = x W (x [M, n_in], W [n_in, n_out]); ẏ = ẋ W + x Ẇ.
fn linear_forward<R: Real>(x: &Act<R>, w: Param<R>, n_in: usize, n_out: usize, y: &mut Act<R>) {
    let m = x.v.len() / n_in;
    y.resize(m * n_out, w.t.is_some());
    let wm = Mat::new(w.v, n_in, n_out);
    gemm(R::one(), Mat::new(&x.v, m, n_in), wm, R::zero(), MatMut::new(&mut y.v, m, n_out));
    if let Some(wt) = w.t {
        gemm(R::one(), Mat::new(&x.t, m, n_in), wm, R::zero(), MatMut::new(&mut y.t, m, n_out));
        gemm(R::one(), Mat::new(&x.v, m, n_in), Mat::new(wt, n_in, n_out), R::one(), MatMut::new(&mut y.t, m, n_out));
    }
}

fn linear_backward<R: Real>(x: &Act<R>, w: Param<R>, gy: &Act<R>, n_in: usize, n_out: usize, gx: &mut Act<R>, out: ParamGrads<R>) {
    let m = x.v.len() / n_in;
    let (xm, gym, wm) = (Mat::new(&x.v, m, n_in), Mat::new(&gy.v, m, n_out), Mat::new(w.v, n_in, n_out));
    gemm(R::one(), gym, wm.t(), R::one(), MatMut::new(&mut gx.v, m, n_in));
    if let Some(g) = out.grad {
        gemm(R::one(), xm.t(), gym, R::one(), MatMut::new(g, n_in, n_out));
    }
    if !gx.t.is_empty() {
        let wt = Mat::new(w.t.expect("tangent mode has a direction"), n_in, n_out);
        let gyt = Mat::new(&gy.t, m, n_out);
        gemm(R::one(), gyt, wm.t(), R::one(), MatMut::new(&mut gx.t, m, n_in));
        gemm(R::one(), gym, wt.t(), R::one(), MatMut::new(&mut gx.t, m, n_in));
        if let Some(hv) = out.hvp {
            gemm(R::one(), Mat::new(&x.t, m, n_in).t(), gym, R::one(), MatMut::new(&mut *hv, n_in, n_out));
            gemm(R::one(), xm.t(), gyt, R::one(), MatMut::new(hv, n_in, n_out));
        }
    }
}

/// RMSNorm per row: r = √(mean x²), n = x/(r + ε), out = w ⊙ n + b. Tangents:
/// ṙ = (x·ẋ)/(H r), ṅ = (ẋ − n ṙ)/(r + ε), ȯut = ẇ ⊙ n + w ⊙ ṅ + ḃ.
fn norm_forward<R: Real>(x: &Act<R>, w: Param<R>, b: Param<R>, h: usize, nm: &mut Norm<R>) {
    let m = x.v.len() / h;
    let tan = !x.t.is_empty() && w.t.is_some();
    nm.n.resize(m * h, tan);
    nm.r.resize(m, tan);
    nm.out.resize(m * h, tan);
    let eps = R::of(NORM_EPS);
    let hr = R::of(h as f64);
    for row in 0..m {
        let span = row * h..(row + 1) * h;
        let xr = &x.v[span.clone()];
        let r = (dot(xr, xr) / hr).sqrt();
        let s = r + eps;
        nm.r.v[row] = r;
        for (c, &xc) in xr.iter().enumerate() {
            let n = xc / s;
            nm.n.v[row * h + c] = n;
            nm.out.v[row * h + c] = w.v[c] * n + b.v[c];
        }
        if let (true, Some(wt), Some(bt)) = (tan, w.t, b.t) {
            let xt = &x.t[span];
            let rt = if r > R::zero() { dot(xr, xt) / (hr * r) } else { R::zero() };
            nm.r.t[row] = rt;
            for c in 0..h {
                let n = nm.n.v[row * h + c];
                let nt = (xt[c] - n * rt) / s;
                nm.n.t[row * h + c] = nt;
                nm.out.t[row * h + c] = wt[c] * n + w.v[c] * nt + bt[c];
            }
        }
    }
}

/// Backward of RMSNorm given gy, accumulated into gx; gradients of w and b (adjacent in `out`).
/// With gn = gy ⊙ w, a = gn·n and q = ∂r/∂x = x/(H r): gx = (gn − a q)/s, s = r + ε. The
/// tangent differentiates each factor: ġx = (ġn − ȧ q − a q̇ − gx ṙ)/s.
fn norm_backward<R: Real>(nm: &Norm<R>, x: &Act<R>, w: Param<R>, gy: &Act<R>, h: usize, gx: &mut Act<R>, out: ParamGrads<R>) {
    let m = x.v.len() / h;
    let tan = !gx.t.is_empty();
    let (eps, hr) = (R::of(NORM_EPS), R::of(h as f64));
    let (mut gw, mut hw) = (out.grad, out.hvp);
    let mut gn = vec![R::zero(); h];
    let mut gnt = vec![R::zero(); h];
    for row in 0..m {
        let span = row * h..(row + 1) * h;
        let (n, xr, g) = (&nm.n.v[span.clone()], &x.v[span.clone()], &gy.v[span.clone()]);
        let (r, s) = (nm.r.v[row], nm.r.v[row] + eps);
        if let Some(gw) = gw.as_deref_mut() {
            for c in 0..h {
                gw[c] = gw[c] + g[c] * n[c];
                gw[h + c] = gw[h + c] + g[c];
            }
        }
        let q_of = |a: R| if r > R::zero() { a / (hr * r) } else { R::zero() };
        let mut a = R::zero();
        for c in 0..h {
            gn[c] = g[c] * w.v[c];
            a = a + gn[c] * n[c];
        }
        for c in 0..h {
            gx.v[row * h + c] = gx.v[row * h + c] + (gn[c] - a * q_of(xr[c])) / s;
        }
        if tan {
            let wt = w.t.expect("tangent mode has a direction");
            let (nt, xt, gt) = (&nm.n.t[span.clone()], &x.t[span.clone()], &gy.t[span]);
            let rt = nm.r.t[row];
            if let Some(hw) = hw.as_deref_mut() {
                for c in 0..h {
                    hw[c] = hw[c] + gt[c] * n[c] + g[c] * nt[c];
                    hw[h + c] = hw[h + c] + gt[c];
                }
            }
            let mut at = R::zero();
            for c in 0..h {
                gnt[c] = gt[c] * w.v[c] + g[c] * wt[c];
                at = at + gnt[c] * n[c] + gn[c] * nt[c];
            }
            for c in 0..h {
                let q = q_of(xr[c]);
                let qt = if r > R::zero() { xt[c] / (hr * r) - q * rt / r } else { R::zero() };
                let gxc = (gn[c] - a * q) / s;
                gx.t[row * h + c] = gx.t[row * h + c] + (gnt[c] - at * q - a * qt - gxc * rt) / s;
            }
        }
    }
}

fn relu_forward<R: Real>(pre: &Act<R>, y: &mut Act<R>) {
    y.v.clear();
    y.v.extend(pre.v.iter().map(|&a| a.max(R::zero())));
    y.t.clear();
    y.t.extend(pre.v.iter().zip(&pre.t).map(|(&a, &d)| if a > R::zero() { d } else { R::zero() }));
}

/// ReLU's backward in place: g ← g ⊙ [pre > 0] (its second derivative is zero almost everywhere).
/// Selects, not branches: the signs are random, so a branch would mispredict half the time.
fn relu_backward<R: Real>(pre: &Act<R>, g: &mut Act<R>) {
    let mask = |g: &mut [R]| g.iter_mut().zip(&pre.v).for_each(|(g, &a)| *g = if a > R::zero() { *g } else { R::zero() });
    mask(&mut g.v);
    mask(&mut g.t);
}

/// y ← y + a·x.
fn axpy<R: Real>(a: R, x: &[R], y: &mut [R]) {
    y.iter_mut().zip(x).for_each(|(y, &x)| *y = *y + a * x);
}

/// Row i of head `hd` of sequence `s` in a [M, H] activation (head_dim values).
fn head_row(d: Dims, s: usize, hd: usize, i: usize) -> std::ops::Range<usize> {
    let dh = d.hidden / d.heads;
    let at = (s * d.len + i) * d.hidden + hd * dh;
    at..at + dh
}

/// Causal attention per sequence and head: S = c·Q Kᵀ, P = softmax over j ≤ i, O = P V.
/// Tangents: Ṡ = c(Q̇ Kᵀ + Q K̇ᵀ), Ṗ = P ⊙ (Ṡ − rowsum(P ⊙ Ṡ)), Ȯ = Ṗ V + P V̇.
/// Loops over j ≤ i with head_dim-long dots and axpys: the per-head products are too small
/// (L × head_dim) for a GEMM's packing to pay, and the causal half is skipped.
fn attention_forward<R: Real>(blk: &mut Block<R>, d: Dims, c: R) {
    let l = d.len;
    let tan = !blk.q.t.is_empty();
    let Block { q, k, v, p, o, .. } = blk;
    p.zero(d.seqs * d.heads * l * l, tan);
    o.zero(d.seqs * l * d.hidden, tan);
    let mut st = vec![R::zero(); l];
    for s in 0..d.seqs {
        for hd in 0..d.heads {
            let at = (s * d.heads + hd) * l * l;
            let row = |i| head_row(d, s, hd, i);
            for i in 0..l {
                let pr = &mut p.v[at + i * l..at + i * l + i + 1];
                let qi = &q.v[row(i)];
                let mut max = R::neg_infinity();
                for (j, x) in pr.iter_mut().enumerate() {
                    *x = c * dot(qi, &k.v[row(j)]);
                    max = max.max(*x);
                }
                pr.iter_mut().for_each(|x| *x = (*x - max).exp_inline());
                let inv = R::one() / sum(pr);
                pr.iter_mut().for_each(|x| *x = *x * inv);
                let oi = &mut o.v[row(i)];
                for (j, &pij) in pr.iter().enumerate() {
                    axpy(pij, &v.v[row(j)], oi);
                }
                if tan {
                    let qti = &q.t[row(i)];
                    for (j, sj) in st[..=i].iter_mut().enumerate() {
                        *sj = c * (dot(qti, &k.v[row(j)]) + dot(qi, &k.t[row(j)]));
                    }
                    let mean = dot(pr, &st[..=i]);
                    let ptr = &mut p.t[at + i * l..at + i * l + i + 1];
                    let oti = &mut o.t[row(i)];
                    for j in 0..=i {
                        ptr[j] = pr[j] * (st[j] - mean);
                        axpy(ptr[j], &v.v[row(j)], oti);
                        axpy(pr[j], &v.t[row(j)], oti);
                    }
                }
            }
        }
    }
}

/// Backward of causal attention given gO (in `sc.o`), into `sc.q`, `sc.k`, `sc.v`:
/// gP = gO Vᵀ, gV = Pᵀ gO, gS = P ⊙ (gP − ρ) with ρ = rowsum(gP ⊙ P), gQ = c·gS K,
/// gK = c·gSᵀ Q; and their tangents (the product rule on each factor).
fn attention_backward<R: Real>(blk: &Block<R>, sc: &mut Scratch<R>, d: Dims, c: R, tan: bool) {
    let l = d.len;
    let (q, k, v, p) = (&blk.q, &blk.k, &blk.v, &blk.p);
    let Scratch { o: go, q: gq, k: gk, v: gv, .. } = sc;
    for g in [&mut *gq, &mut *gk, &mut *gv] {
        g.zero(q.v.len(), tan);
    }
    let (mut gp, mut gs, mut gpt) = (vec![R::zero(); l], vec![R::zero(); l], vec![R::zero(); l]);
    for s in 0..d.seqs {
        for hd in 0..d.heads {
            let at = (s * d.heads + hd) * l * l;
            let row = |i| head_row(d, s, hd, i);
            for i in 0..l {
                let pr = &p.v[at + i * l..at + i * l + i + 1];
                let (goi, qi) = (&go.v[row(i)], &q.v[row(i)]);
                for j in 0..=i {
                    gp[j] = dot(goi, &v.v[row(j)]);
                    axpy(pr[j], goi, &mut gv.v[row(j)]);
                }
                let rho = dot(pr, &gp[..=i]);
                for j in 0..=i {
                    gs[j] = pr[j] * (gp[j] - rho);
                    axpy(c * gs[j], &k.v[row(j)], &mut gq.v[row(i)]);
                    axpy(c * gs[j], qi, &mut gk.v[row(j)]);
                }
                if tan {
                    let ptr = &p.t[at + i * l..at + i * l + i + 1];
                    let (goti, qti) = (&go.t[row(i)], &q.t[row(i)]);
                    for j in 0..=i {
                        gpt[j] = dot(goti, &v.v[row(j)]) + dot(goi, &v.t[row(j)]);
                        axpy(ptr[j], goi, &mut gv.t[row(j)]);
                        axpy(pr[j], goti, &mut gv.t[row(j)]);
                    }
                    let rho_t = dot(&gpt[..=i], pr) + dot(&gp[..=i], ptr);
                    for j in 0..=i {
                        let gst = ptr[j] * (gp[j] - rho) + pr[j] * (gpt[j] - rho_t);
                        axpy(c * gst, &k.v[row(j)], &mut gq.t[row(i)]);
                        axpy(c * gs[j], &k.t[row(j)], &mut gq.t[row(i)]);
                        axpy(c * gst, qi, &mut gk.t[row(j)]);
                        axpy(c * gs[j], qti, &mut gk.t[row(j)]);
                    }
                }
            }
        }
    }
}

/// Turns the logits in `tape.probs` into softmax probabilities in place (zero rows at PAD
/// labels) and records per sequence the non-PAD label count, the mean token loss and, in tangent
/// mode, its directional derivative l̇ = Σ_v p_v ż_v − ż_y. The tangent of the probabilities,
/// ṗ = p ⊙ (ż − Σ p ż), replaces ż (the backward pass needs it).
fn cross_entropy_forward<R: Real>(tape: &mut Tape<R>, vocab: usize) {
    let (b, l, z) = (tape.seqs, tape.len, &mut tape.probs);
    let tan = tape.tangent;
    tape.counts.clear();
    tape.counts.resize(b, 0);
    tape.losses.clear();
    tape.losses.resize(b, 0.0);
    tape.dots.clear();
    tape.dots.resize(if tan { b } else { 0 }, 0.0);
    for (row, &y) in tape.labels.iter().enumerate() {
        let span = row * vocab..(row + 1) * vocab;
        let zr = &mut z.v[span.clone()];
        if y == PAD {
            zr.fill(R::zero());
            if tan {
                z.t[span].fill(R::zero());
            }
            continue;
        }
        let n = row / l;
        let max = max(zr);
        let zy = zr[y as usize];
        zr.iter_mut().for_each(|x| *x = (*x - max).exp_inline());
        let sum = sum(zr);
        let inv = R::one() / sum;
        zr.iter_mut().for_each(|x| *x = *x * inv);
        tape.counts[n] += 1;
        tape.losses[n] += (max + sum.ln() - zy).f64();
        if tan {
            let zt = &mut z.t[span];
            let mean = dot(zr, zt);
            tape.dots[n] += (mean - zt[y as usize]).f64();
            for (d, &p) in zt.iter_mut().zip(zr.iter()) {
                *d = p * (*d - mean);
            }
        }
    }
    for n in 0..b {
        let c = tape.counts[n].max(1) as f64;
        tape.losses[n] /= c;
        if tan {
            tape.dots[n] /= c;
        }
    }
}
