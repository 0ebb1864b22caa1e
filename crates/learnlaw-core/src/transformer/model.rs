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
//! row-major, weights [in, out] with y = x·W.
//!
//! The control flow is written once, over the layer kernels of `kernels::LayerKernels`, which
//! each backend implements (the CPU's, the reference, in `cpu_kernels`).
use std::ops::Range;

use super::kernels::{linear_backward, Act, Dims, GemmShape, LayerKernels, Norm, Operand, Output, Param, ParamGrads, Tokens};
use super::{Layout, TransformerConfig};

struct Block<K: LayerKernels> {
    /// The block's input (the residual stream).
    x: Act<K::Buf>,
    norm1: Norm<K::Buf>,
    q: Act<K::Buf>,
    k: Act<K::Buf>,
    v: Act<K::Buf>,
    /// What attention saved for its backward.
    attention: K::Attention,
    /// Heads' outputs, concatenated [M, H].
    o: Act<K::Buf>,
    /// x + attention output.
    mid: Act<K::Buf>,
    norm2: Norm<K::Buf>,
    /// FFN pre-activation [M, ffn] and its ReLU.
    pre: Act<K::Buf>,
    act: Act<K::Buf>,
}

impl<K: LayerKernels> Default for Block<K> {
    fn default() -> Self {
        Block {
            x: Act::default(),
            norm1: Norm::default(),
            q: Act::default(),
            k: Act::default(),
            v: Act::default(),
            attention: K::Attention::default(),
            o: Act::default(),
            mid: Act::default(),
            norm2: Norm::default(),
            pre: Act::default(),
            act: Act::default(),
        }
    }
}

/// The backward pass's buffers (kept in the tape so they are reused too).
#[derive(Default)]
struct Scratch<B> {
    /// Gradients of the residual stream: entering a block, after its attention half, leaving it.
    res: Act<B>,
    mid: Act<B>,
    input: Act<B>,
    /// Gradient of a norm's output [M, H], of the FFN's hidden layer [M, ffn], of the heads.
    normed: Act<B>,
    hidden: Act<B>,
    o: Act<B>,
    q: Act<B>,
    k: Act<B>,
    v: Act<B>,
}

/// Everything the backward pass needs from a forward pass over one chunk. Reuse one tape for
/// many passes: its buffers keep their memory.
pub struct Tape<K: LayerKernels> {
    tangent: bool,
    seqs: usize,
    blocks: Vec<Block<K>>,
    /// The last block's output.
    last: Act<K::Buf>,
    norm: Norm<K::Buf>,
    /// What the head + cross-entropy saved for its backward.
    head: K::Head,
    losses: K::Sums,
    dots: K::Sums,
    scratch: Scratch<K::Buf>,
}

impl<K: LayerKernels> Default for Tape<K> {
    fn default() -> Self {
        Tape {
            tangent: false,
            seqs: 0,
            blocks: Vec::new(),
            last: Act::default(),
            norm: Norm::default(),
            head: K::Head::default(),
            losses: K::Sums::default(),
            dots: K::Sums::default(),
            scratch: Scratch::default(),
        }
    }
}

impl<K: LayerKernels> Tape<K> {
    /// Per-sequence losses l_n (mean token cross-entropy over the non-PAD labels).
    pub fn losses(&self) -> &K::Sums {
        &self.losses
    }
    /// Per-sequence directional derivatives ∇l_n·v (after a tangent forward pass).
    pub fn dots(&self) -> &K::Sums {
        &self.dots
    }
}

/// Sizes both halves of `a` for `len` values (the tangent only in tangent mode).
fn alloc<K: LayerKernels>(k: &mut K, a: &mut Act<K::Buf>, len: usize, tan: bool) {
    k.resize(&mut a.v, len);
    if tan {
        k.resize(&mut a.t, len);
    }
}

/// Like `alloc`, all zero (for accumulators).
fn zeros<K: LayerKernels>(k: &mut K, a: &mut Act<K::Buf>, len: usize, tan: bool) {
    k.zero(&mut a.v, len);
    if tan {
        k.zero(&mut a.t, len);
    }
}

fn copy<K: LayerKernels>(k: &mut K, src: &Act<K::Buf>, dst: &mut Act<K::Buf>, len: usize, tan: bool) {
    k.copy(&src.v, &mut dst.v, len);
    if tan {
        k.copy(&src.t, &mut dst.t, len);
    }
}

/// The model at parameters θ, optionally with a direction v for tangents.
pub struct Model<'a, K: LayerKernels> {
    pub cfg: &'a TransformerConfig,
    pub layout: &'a Layout,
    pub theta: &'a K::Buf,
    pub direction: Option<&'a K::Buf>,
}

impl<'a, K: LayerKernels> Model<'a, K> {
    fn param(&self, r: &Range<usize>) -> Param<'a, K::Buf> {
        Param { theta: self.theta, dir: self.direction, range: r.clone() }
    }

    /// y = x W (x [M, n_in], W [n_in, n_out]); ẏ = ẋ W + x Ẇ.
    #[allow(clippy::too_many_arguments)]
    fn linear(&self, k: &mut K, m: usize, x: &Act<K::Buf>, w: &Range<usize>, n_in: usize, n_out: usize, y: &mut Act<K::Buf>) {
        let tan = self.direction.is_some();
        alloc(k, y, m * n_out, tan);
        let (x, w, y) = (x.pair(tan), self.param(w), y.pair_mut(tan));
        let xo = Operand { v: x.v, t: x.t, at: 0, trans: false };
        let wo = Operand { v: w.theta, t: w.dir, at: w.range.start, trans: false };
        k.gemm(GemmShape::single(m, n_out, n_in), xo, wo, 0.0, Output { v: Some(y.v), t: y.t, at: 0 });
    }

    /// The gradient half of `linear`: gx ← gx + gy·Wᵀ, the weight's gradient and HVP into `out`.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        k: &mut K,
        m: usize,
        x: &Act<K::Buf>,
        w: &Range<usize>,
        gy: &Act<K::Buf>,
        (n_in, n_out): (usize, usize),
        gx: &mut Act<K::Buf>,
        out: ParamGrads<K::Buf>,
        tan: bool,
    ) {
        linear_backward(k, m, x.pair(tan), self.param(w), gy.pair(tan), (n_in, n_out), gx.pair_mut(tan), out);
    }

    fn norm(&self, k: &mut K, m: usize, x: &Act<K::Buf>, w: &Range<usize>, b: &Range<usize>, saved: &mut Norm<K::Buf>) {
        let (h, tan) = (self.cfg.hidden, self.direction.is_some());
        alloc(k, &mut saved.n, m * h, tan);
        alloc(k, &mut saved.r, m, tan);
        alloc(k, &mut saved.out, m * h, tan);
        k.rmsnorm_forward(m, h, x.pair(tan), self.param(w), self.param(b), saved);
    }

    /// The forward pass over `tokens` (ids already validated against the vocabulary and the
    /// context length), into `tape`.
    pub fn forward(&self, k: &mut K, tokens: Tokens<K::Ids>, tape: &mut Tape<K>) {
        let cfg = self.cfg;
        let (h, f, m) = (cfg.hidden, cfg.ffn, tokens.rows());
        let tan = self.direction.is_some();
        tape.tangent = tan;
        tape.seqs = tokens.seqs;
        tape.blocks.resize_with(cfg.layers, Default::default);

        // Token + position embeddings, into the first block's input (or the last output).
        let x = match tape.blocks.first_mut() {
            Some(blk) => &mut blk.x,
            None => &mut tape.last,
        };
        alloc(k, x, m * h, tan);
        k.embed_forward(tokens, self.param(&self.layout.tok), self.param(&self.layout.pos), h, x.pair_mut(tan));

        let dims = Dims { seqs: tokens.seqs, len: tokens.len(), heads: cfg.heads, hidden: h };
        for i in 0..cfg.layers {
            let bl = &self.layout.blocks[i];
            let (done, rest) = tape.blocks.split_at_mut(i + 1);
            let blk = &mut done[i];
            self.norm(k, m, &blk.x, &bl.norm1_w, &bl.norm1_b, &mut blk.norm1);
            self.linear(k, m, &blk.norm1.out, &bl.wq, h, h, &mut blk.q);
            self.linear(k, m, &blk.norm1.out, &bl.wk, h, h, &mut blk.k);
            self.linear(k, m, &blk.norm1.out, &bl.wv, h, h, &mut blk.v);
            alloc(k, &mut blk.o, m * h, tan);
            let (q, kk, v) = (blk.q.pair(tan), blk.k.pair(tan), blk.v.pair(tan));
            k.attention_forward(dims, cfg.score_scale(), q, kk, v, &mut blk.attention, blk.o.pair_mut(tan));
            self.linear(k, m, &blk.o, &bl.wo, h, h, &mut blk.mid);
            k.add(blk.x.pair(tan), blk.mid.pair_mut(tan), m * h);
            self.norm(k, m, &blk.mid, &bl.norm2_w, &bl.norm2_b, &mut blk.norm2);
            self.linear(k, m, &blk.norm2.out, &bl.w1, h, f, &mut blk.pre);
            alloc(k, &mut blk.act, m * f, tan);
            k.relu_forward(blk.pre.pair(tan), m * f, blk.act.pair_mut(tan));
            let out = match rest.first_mut() {
                Some(next) => &mut next.x,
                None => &mut tape.last,
            };
            self.linear(k, m, &blk.act, &bl.w2, f, h, out);
            k.add(blk.mid.pair(tan), out.pair_mut(tan), m * h);
        }

        self.norm(k, m, &tape.last, &self.layout.norm_w, &self.layout.norm_b, &mut tape.norm);
        let head = self.param(&self.layout.head);
        k.head_forward(tokens, tape.norm.out.pair(tan), head, h, cfg.vocab_size, &mut tape.head, &mut tape.losses, &mut tape.dots);
    }

    /// The backward pass of Σ_n w_n l_n over the tape's sequences (the `tokens` of its forward
    /// pass; w_n = weights.0[weights.1 + n]): adds the gradient to `grad` and, in tangent mode,
    /// its tangent (the Hessian-vector product H v) to `hvp`.
    pub fn backward(
        &self,
        k: &mut K,
        tokens: Tokens<K::Ids>,
        tape: &mut Tape<K>,
        weights: (&K::Buf, usize),
        grad: Option<&mut K::Buf>,
        hvp: Option<&mut K::Buf>,
    ) {
        assert_eq!(tokens.seqs, tape.seqs, "the backward pass runs on its forward pass's tokens");
        assert!(hvp.is_none() || tape.tangent, "an HVP needs a tangent forward pass");
        let cfg = self.cfg;
        let (h, f, m) = (cfg.hidden, cfg.ffn, tokens.rows());
        let tan = tape.tangent && hvp.is_some();
        let mut g = Grads { grad, hvp };
        let Tape { blocks, last, norm, head, scratch: sc, .. } = tape;

        zeros(k, &mut sc.normed, m * h, tan);
        let head_w = self.param(&self.layout.head);
        let normed = sc.normed.pair_mut(tan);
        k.head_backward(tokens, head, norm.out.pair(tan), head_w, h, cfg.vocab_size, weights, normed, g.at(&self.layout.head));
        zeros(k, &mut sc.res, m * h, tan);
        let wb = g.at2(&self.layout.norm_w, &self.layout.norm_b);
        k.rmsnorm_backward(m, h, norm, last.pair(tan), self.param(&self.layout.norm_w), sc.normed.pair(tan), sc.res.pair_mut(tan), wb);

        let dims = Dims { seqs: tokens.seqs, len: tokens.len(), heads: cfg.heads, hidden: h };
        for (bl, blk) in self.layout.blocks.iter().zip(blocks.iter()).rev() {
            // FFN: out = mid + relu(norm2(mid) W1) W2.
            zeros(k, &mut sc.hidden, m * f, tan);
            self.linear_backward(k, m, &blk.act, &bl.w2, &sc.res, (f, h), &mut sc.hidden, g.at(&bl.w2), tan);
            k.relu_backward(&blk.pre.v, m * f, sc.hidden.pair_mut(tan));
            zeros(k, &mut sc.normed, m * h, tan);
            self.linear_backward(k, m, &blk.norm2.out, &bl.w1, &sc.hidden, (h, f), &mut sc.normed, g.at(&bl.w1), tan);
            copy(k, &sc.res, &mut sc.mid, m * h, tan);
            let wb = g.at2(&bl.norm2_w, &bl.norm2_b);
            k.rmsnorm_backward(m, h, &blk.norm2, blk.mid.pair(tan), self.param(&bl.norm2_w), sc.normed.pair(tan), sc.mid.pair_mut(tan), wb);

            // Attention: mid = x + attn(norm1(x)) Wo.
            zeros(k, &mut sc.o, m * h, tan);
            self.linear_backward(k, m, &blk.o, &bl.wo, &sc.mid, (h, h), &mut sc.o, g.at(&bl.wo), tan);
            for a in [&mut sc.q, &mut sc.k, &mut sc.v] {
                alloc(k, a, m * h, tan);
            }
            let (q, kk, v) = (blk.q.pair(tan), blk.k.pair(tan), blk.v.pair(tan));
            let (gq, gk, gv) = (sc.q.pair_mut(tan), sc.k.pair_mut(tan), sc.v.pair_mut(tan));
            k.attention_backward(dims, cfg.score_scale(), q, kk, v, &blk.attention, sc.o.pair(tan), gq, gk, gv);
            zeros(k, &mut sc.normed, m * h, tan);
            for (w, gy) in [(&bl.wq, &sc.q), (&bl.wk, &sc.k), (&bl.wv, &sc.v)] {
                self.linear_backward(k, m, &blk.norm1.out, w, gy, (h, h), &mut sc.normed, g.at(w), tan);
            }
            copy(k, &sc.mid, &mut sc.input, m * h, tan);
            let wb = g.at2(&bl.norm1_w, &bl.norm1_b);
            k.rmsnorm_backward(m, h, &blk.norm1, blk.x.pair(tan), self.param(&bl.norm1_w), sc.normed.pair(tan), sc.input.pair_mut(tan), wb);
            std::mem::swap(&mut sc.res, &mut sc.input);
        }

        // Embeddings: scatter the residual stream's gradient to the rows that were read.
        let (tok, pos) = (&self.layout.tok, &self.layout.pos);
        debug_assert_eq!(tok.end, pos.start);
        k.embed_backward(tokens, sc.res.pair(tan), h, cfg.vocab_size, g.at(&(tok.start..pos.end)));
    }
}

/// The outputs of a backward pass: the gradient and the HVP, each optional.
struct Grads<'a, B> {
    grad: Option<&'a mut B>,
    hvp: Option<&'a mut B>,
}

impl<B> Grads<'_, B> {
    fn at(&mut self, r: &Range<usize>) -> ParamGrads<'_, B> {
        ParamGrads { grad: self.grad.as_deref_mut(), hvp: self.hvp.as_deref_mut(), range: r.clone() }
    }
    /// A norm's weight and bias, which are adjacent in θ (weight first).
    fn at2(&mut self, w: &Range<usize>, b: &Range<usize>) -> ParamGrads<'_, B> {
        debug_assert_eq!(w.end, b.start);
        self.at(&(w.start..b.end))
    }
}
