//! The layer kernels on the CPU, generic over f32/f64: plain loops and GEMMs (`linalg::gemm`) on
//! host vectors. `CpuKernels<f64>` is the reference every other backend's kernels are held to.
//!
//! Summation orders (what fixes the bits): GEMMs are `linalg::gemm`'s; row reductions use
//! `host::dot`/`sum`/`max` (16 lanes, then the tail), except attention's, which add j in order,
//! one row per lane, as do its products (a fused multiply-add per term, on every ISA);
//! per-sequence losses and dots add their tokens in order in f64; gradient scatters
//! (embeddings, norm weights) add rows in order.
use std::marker::PhantomData;
use std::ops::Range;

use multiversion::multiversion;

use super::kernels::{
    linear_backward, Act, Dims, GemmShape, HostBuffers, LayerKernels, Norm, Operand, Output, Pair, PairMut, Param, ParamGrads, Tokens,
};
use crate::host::{dot, max, sum};
use crate::lanes::LANES;
use crate::linalg::{gemm, Mat, MatMut};
use crate::text::PAD;
use crate::Real;

/// RMSNorm's ε, added to the rms (not under the root), as the official code does.
pub const NORM_EPS: f64 = 1e-8;

/// The CPU's layer kernels (zero-sized: each thread of the CPU engine owns one).
pub struct CpuKernels<R>(PhantomData<R>);

impl<R> Default for CpuKernels<R> {
    fn default() -> Self {
        CpuKernels(PhantomData)
    }
}

/// What the CPU's head + cross-entropy keeps for its backward.
#[derive(Default)]
pub struct CpuHead<R> {
    /// Softmax of the logits [M, vocab] (zero rows at PAD labels), and its tangent.
    probs: Act<Vec<R>>,
    /// Non-PAD labels per sequence.
    counts: Vec<usize>,
    /// The backward's gradient of the logits [M, vocab] (kept so its memory is reused).
    gz: Act<Vec<R>>,
}

/// A parameter block's values and direction entries.
#[inline(always)]
fn param<'a, R>(p: &Param<'a, Vec<R>>) -> (&'a [R], Option<&'a [R]>) {
    (&p.theta[p.range.clone()], p.dir.map(|d| &d[p.range.clone()]))
}

/// The label of activation row `row` (position row mod L of sequence row / L).
fn label<I: AsRef<[u32]>>(t: &Tokens<I>, row: usize) -> u32 {
    let l = t.len();
    t.ids.as_ref()[t.at + (row / l) * t.seq_len + row % l + 1]
}

/// The input id of activation row `row`.
fn input<I: AsRef<[u32]>>(t: &Tokens<I>, row: usize) -> u32 {
    let l = t.len();
    t.ids.as_ref()[t.at + (row / l) * t.seq_len + row % l]
}

/// The view of one operand of `gemm`, matrix `i` of the batch: [rows, cols] stored, then
/// transposed if asked.
fn operand<'a, R>(data: &'a [R], at: usize, rows: usize, cols: usize, trans: bool) -> Mat<'a, R> {
    let (sr, sc) = if trans { (cols, rows) } else { (rows, cols) };
    let m = Mat::new(&data[at..], sr, sc);
    if trans {
        m.t()
    } else {
        m
    }
}

impl<R: Real> LayerKernels for CpuKernels<R> {
    type Buf = Vec<R>;
    type Ids = Vec<u32>;
    type Sums = Vec<f64>;
    type Attention = Act<Vec<R>>;
    type Head = CpuHead<R>;

    fn resize(&mut self, b: &mut Vec<R>, len: usize) {
        b.resize(len, R::zero());
    }
    fn zero(&mut self, b: &mut Vec<R>, len: usize) {
        b.resize(len, R::zero());
        b.fill(R::zero());
    }
    fn copy(&mut self, src: &Vec<R>, dst: &mut Vec<R>, len: usize) {
        dst.clear();
        dst.extend_from_slice(&src[..len]);
    }

    fn add(&mut self, x: Pair<Vec<R>>, y: PairMut<Vec<R>>, len: usize) {
        add(&mut y.v[..len], &x.v[..len]);
        if let (Some(yt), Some(xt)) = (y.t, x.t) {
            add(&mut yt[..len], &xt[..len]);
        }
    }

    fn gemm(&mut self, s: GemmShape, a: Operand<Vec<R>>, b: Operand<Vec<R>>, beta: f64, c: Output<Vec<R>>) {
        let beta = R::of(beta);
        let (mut cv, mut ct) = (c.v, c.t);
        for i in 0..s.batch {
            let (ai, bi, ci) = (a.at + i * s.stride_a, b.at + i * s.stride_b, c.at + i * s.stride_c);
            let av = operand(a.v, ai, s.m, s.k, a.trans);
            let bv = operand(b.v, bi, s.k, s.n, b.trans);
            if let Some(cv) = cv.as_deref_mut() {
                gemm(R::one(), av, bv, beta, MatMut::new(&mut cv[ci..], s.m, s.n));
            }
            if let Some(ct) = ct.as_deref_mut() {
                let tangent = "a tangent GEMM needs both operands' tangents";
                let at = operand(a.t.expect(tangent), ai, s.m, s.k, a.trans);
                let bt = operand(b.t.expect(tangent), bi, s.k, s.n, b.trans);
                gemm(R::one(), at, bv, beta, MatMut::new(&mut ct[ci..], s.m, s.n));
                gemm(R::one(), av, bt, R::one(), MatMut::new(&mut ct[ci..], s.m, s.n));
            }
        }
    }

    fn embed_forward(&mut self, tokens: Tokens<Vec<u32>>, tok: Param<Vec<R>>, pos: Param<Vec<R>>, h: usize, x: PairMut<Vec<R>>) {
        let ((tv, tt), (pv, pt)) = (param(&tok), param(&pos));
        let l = tokens.len();
        let mut xt = x.t;
        for row in 0..tokens.rows() {
            let (e, p) = (input(&tokens, row) as usize * h, (row % l) * h);
            for c in 0..h {
                x.v[row * h + c] = tv[e + c] + pv[p + c];
            }
            if let (Some(xt), Some(tt), Some(pt)) = (xt.as_deref_mut(), tt, pt) {
                for c in 0..h {
                    xt[row * h + c] = tt[e + c] + pt[p + c];
                }
            }
        }
    }

    fn embed_backward(&mut self, tokens: Tokens<Vec<u32>>, g: Pair<Vec<R>>, h: usize, vocab: usize, out: ParamGrads<Vec<R>>) {
        let l = tokens.len();
        let (tok, pos) = (out.range.start, out.range.start + vocab * h);
        for (dst, src) in [(out.grad, Some(g.v)), (out.hvp, g.t)] {
            if let (Some(dst), Some(src)) = (dst, src) {
                for row in 0..tokens.rows() {
                    let (e, p) = (tok + input(&tokens, row) as usize * h, pos + (row % l) * h);
                    for c in 0..h {
                        dst[e + c] = dst[e + c] + src[row * h + c];
                        dst[p + c] = dst[p + c] + src[row * h + c];
                    }
                }
            }
        }
    }

    fn rmsnorm_forward(&mut self, m: usize, h: usize, x: Pair<Vec<R>>, w: Param<Vec<R>>, b: Param<Vec<R>>, nm: &mut Norm<Vec<R>>) {
        rmsnorm_forward(m, h, x, w, b, nm)
    }

    fn rmsnorm_backward(
        &mut self,
        m: usize,
        h: usize,
        nm: &Norm<Vec<R>>,
        x: Pair<Vec<R>>,
        w: Param<Vec<R>>,
        gy: Pair<Vec<R>>,
        gx: PairMut<Vec<R>>,
        out: ParamGrads<Vec<R>>,
    ) {
        rmsnorm_backward(m, h, nm, x, w, gy, gx, out)
    }

    fn relu_forward(&mut self, x: Pair<Vec<R>>, len: usize, y: PairMut<Vec<R>>) {
        y.v.resize(len, R::zero());
        relu(&x.v[..len], y.v);
        if let (Some(yt), Some(xt)) = (y.t, x.t) {
            yt.resize(len, R::zero());
            relu_tangent(&x.v[..len], &xt[..len], yt);
        }
    }

    fn relu_backward(&mut self, x: &Vec<R>, len: usize, g: PairMut<Vec<R>>) {
        relu_mask(&x[..len], &mut g.v[..len]);
        if let Some(gt) = g.t {
            relu_mask(&x[..len], &mut gt[..len]);
        }
    }

    fn attention_forward(
        &mut self,
        d: Dims,
        c: f64,
        q: Pair<Vec<R>>,
        k: Pair<Vec<R>>,
        v: Pair<Vec<R>>,
        p: &mut Act<Vec<R>>,
        o: PairMut<Vec<R>>,
    ) {
        match d.hidden / d.heads {
            16 => attention_forward::<R, 16>(d, c, q, k, v, p, o),
            32 => attention_forward::<R, 32>(d, c, q, k, v, p, o),
            _ => attention_forward::<R, 0>(d, c, q, k, v, p, o),
        }
    }

    fn attention_backward(
        &mut self,
        d: Dims,
        c: f64,
        q: Pair<Vec<R>>,
        k: Pair<Vec<R>>,
        v: Pair<Vec<R>>,
        p: &Act<Vec<R>>,
        go: Pair<Vec<R>>,
        gq: PairMut<Vec<R>>,
        gk: PairMut<Vec<R>>,
        gv: PairMut<Vec<R>>,
    ) {
        match d.hidden / d.heads {
            16 => attention_backward::<R, 16>(d, c, q, k, v, p, go, gq, gk, gv),
            32 => attention_backward::<R, 32>(d, c, q, k, v, p, go, gq, gk, gv),
            _ => attention_backward::<R, 0>(d, c, q, k, v, p, go, gq, gk, gv),
        }
    }

    /// The logits go into `probs`, which `softmax_cross_entropy` overwrites with the probabilities;
    /// its per-sequence sums of losses and dots become means over the non-PAD labels.
    fn head_forward(
        &mut self,
        tokens: Tokens<Vec<u32>>,
        x: Pair<Vec<R>>,
        w: Param<Vec<R>>,
        h: usize,
        vocab: usize,
        head: &mut CpuHead<R>,
        losses: &mut Vec<f64>,
        dots: &mut Vec<f64>,
    ) {
        let (b, m) = (tokens.seqs, tokens.rows());
        let tan = x.t.is_some();
        let z = &mut head.probs;
        self.resize(&mut z.v, m * vocab);
        if tan {
            self.resize(&mut z.t, m * vocab);
        }
        let out = Output { v: Some(&mut z.v), t: if tan { Some(&mut z.t) } else { None }, at: 0 };
        let xo = Operand { v: x.v, t: x.t, at: 0, trans: false };
        self.gemm(GemmShape::single(m, vocab, h), xo, Operand { v: w.theta, t: w.dir, at: w.range.start, trans: false }, 0.0, out);

        head.counts.clear();
        head.counts.resize(b, 0);
        losses.clear();
        losses.resize(b, 0.0);
        dots.clear();
        dots.resize(if tan { b } else { 0 }, 0.0);
        softmax_cross_entropy(tokens, vocab, z, tan, &mut head.counts, losses, dots);
        for n in 0..b {
            let c = head.counts[n].max(1) as f64;
            losses[n] /= c;
            if tan {
                dots[n] /= c;
            }
        }
    }

    /// d(Σ w_n l_n)/dz = c (p − onehot(y)) with c = w_n / count_n at non-PAD labels, then the
    /// head's linear backward.
    fn head_backward(
        &mut self,
        tokens: Tokens<Vec<u32>>,
        head: &mut CpuHead<R>,
        x: Pair<Vec<R>>,
        w: Param<Vec<R>>,
        h: usize,
        vocab: usize,
        (weights, at): (&Vec<R>, usize),
        gx: PairMut<Vec<R>>,
        out: ParamGrads<Vec<R>>,
    ) {
        let tan = gx.t.is_some();
        let CpuHead { probs, counts, gz } = head;
        // Sized only: `logit_gradients` writes every row.
        gz.v.resize(probs.v.len(), R::zero());
        if tan {
            gz.t.resize(probs.v.len(), R::zero());
        }
        logit_gradients(tokens, vocab, probs, counts, &weights[at..], tan, gz);
        linear_backward(self, tokens.rows(), x, w, gz.pair(tan), (h, vocab), gx, out);
    }
}

impl<R: Real> HostBuffers for CpuKernels<R> {
    fn upload(&mut self, host: &[f64]) -> Vec<R> {
        host.iter().map(|&x| R::of(x)).collect()
    }
    fn download(&mut self, b: &Vec<R>, len: usize) -> Vec<f64> {
        b[..len].iter().map(|x| x.f64()).collect()
    }
    fn upload_ids(&mut self, host: &[u32]) -> Vec<u32> {
        host.to_vec()
    }
    fn download_sums(&mut self, s: &Vec<f64>, len: usize) -> Vec<f64> {
        s[..len].to_vec()
    }
}

// The loops outside the GEMMs (which pick their own kernels at run time): attention,
// RMSNorm, the head's softmax and cross-entropy, ReLU and the residual adds, compiled for every
// x86-64 level and picked at run time like the perceptron's passes (multiversion), everything
// they call inlined into them. The embeddings are gathers and scatters and stay baseline.

/// y ← y + x.
#[multiversion(targets = "simd")]
fn add<R: Real>(y: &mut [R], x: &[R]) {
    y.iter_mut().zip(x).for_each(|(a, &b)| *a = *a + b);
}

/// y ← max(x, 0).
#[multiversion(targets = "simd")]
fn relu<R: Real>(x: &[R], y: &mut [R]) {
    y.iter_mut().zip(x).for_each(|(y, &a)| *y = a.max(R::zero()));
}

/// ẏ ← ẋ where x > 0, else 0: ReLU's tangent, in one pass.
#[multiversion(targets = "simd")]
fn relu_tangent<R: Real>(x: &[R], dx: &[R], y: &mut [R]) {
    y.iter_mut().zip(x.iter().zip(dx)).for_each(|(y, (&a, &d))| *y = if a > R::zero() { d } else { R::zero() });
}

/// g ← g where x > 0, else 0. Selects, not branches: the signs are random, so a branch would
/// mispredict half the time.
#[multiversion(targets = "simd")]
fn relu_mask<R: Real>(x: &[R], g: &mut [R]) {
    g.iter_mut().zip(x).for_each(|(g, &a)| *g = if a > R::zero() { *g } else { R::zero() });
}

/// Tangents: Ṡ = c(Q̇ Kᵀ + Q K̇ᵀ), Ṗ = P ⊙ (Ṡ − rowsum(P ⊙ Ṡ)), Ȯ = Ṗ V + P V̇.
/// Per head, a block of [`LANES`] rows i at a time, one row per lane: the scores against each
/// k_j ([`block_scores`]) and the softmax over j go lane-wise, with no horizontal sums, and P is
/// stored by columns ([`HeadSquare`]); then O = P V by [`head_product`]. The per-head products
/// are too small (L × head_dim) for a GEMM's packing to pay.
#[multiversion(targets = "simd")]
#[allow(clippy::too_many_arguments)]
fn attention_forward<R: Real, const DH: usize>(
    d: Dims,
    c: f64,
    q: Pair<Vec<R>>,
    k: Pair<Vec<R>>,
    v: Pair<Vec<R>>,
    p: &mut Act<Vec<R>>,
    o: PairMut<Vec<R>>,
) {
    let (l, c) = (d.len, R::of(c));
    let sq = HeadSquare::of(d);
    let tan = q.t.is_some();
    p.v.resize(d.seqs * d.heads * sq.len(), R::zero());
    if tan {
        p.t.resize(p.v.len(), R::zero());
    }
    let dh = head_dim::<DH>(d);
    let (mut q_tr, mut qt_tr) = (Vec::new(), Vec::new());
    let [mut sc, mut st, mut st2] = std::array::from_fn(|_| vec![[R::zero(); LANES]; sq.lp]);
    let mut ot = o.t;
    for s in 0..d.seqs {
        for hd in 0..d.heads {
            let head = sq.head(s * d.heads + hd);
            let rows = HeadRows::of(d, dh, s, hd);
            head_transposed_pair(l, rows, q, &mut q_tr, &mut qt_tr);
            for i0 in (0..l).step_by(LANES) {
                let terms = (i0 + LANES).min(l);
                block_scores(&q_tr, sq, i0, k.v, rows, terms, &mut sc);
                let mut top = [R::neg_infinity(); LANES];
                for (j, sj) in sc[..terms].iter_mut().enumerate() {
                    for z in 0..LANES {
                        sj[z] = c * sj[z];
                        top[z] = if live(sq, i0 + z, j) && sj[z] > top[z] { sj[z] } else { top[z] };
                    }
                }
                let mut total = [R::zero(); LANES];
                for (j, sj) in sc[..terms].iter_mut().enumerate() {
                    for z in 0..LANES {
                        sj[z] = if live(sq, i0 + z, j) { (sj[z] - top[z]).exp_inline() } else { R::zero() };
                        total[z] = total[z] + sj[z];
                    }
                }
                // The lanes past L sum to zero: their P stays zero.
                let mut inv = [R::zero(); LANES];
                for z in 0..LANES {
                    inv[z] = if total[z] > R::zero() { R::one() / total[z] } else { R::zero() };
                }
                for (j, sj) in sc[..terms].iter_mut().enumerate() {
                    for z in 0..LANES {
                        sj[z] = sj[z] * inv[z];
                    }
                    p.v[head.clone()][sq.column(j)][i0..i0 + LANES].copy_from_slice(sj);
                }
                if let Some(kt) = k.t {
                    block_scores(&qt_tr, sq, i0, k.v, rows, terms, &mut st);
                    block_scores(&q_tr, sq, i0, kt, rows, terms, &mut st2);
                    let mut mean = [R::zero(); LANES];
                    for ((pj, sj), s2) in sc[..terms].iter().zip(&mut st[..terms]).zip(&st2[..terms]) {
                        for z in 0..LANES {
                            sj[z] = c * (sj[z] + s2[z]);
                            mean[z] = pj[z].mul_add(sj[z], mean[z]);
                        }
                    }
                    for (j, (pj, sj)) in sc[..terms].iter().zip(&mut st[..terms]).enumerate() {
                        for z in 0..LANES {
                            sj[z] = pj[z] * (sj[z] - mean[z]);
                        }
                        p.t[head.clone()][sq.column(j)][i0..i0 + LANES].copy_from_slice(sj);
                    }
                }
            }
            let pv = &p.v[head.clone()];
            head_product(sq, Coef::Rows, pv, v.v, None, rows, o.v);
            if let (Some(ot), Some(vt)) = (ot.as_deref_mut(), v.t) {
                head_product(sq, Coef::Rows, &p.t[head.clone()], v.v, Some((pv, vt)), rows, ot);
            }
        }
    }
}

/// gP = gO Vᵀ, gV = Pᵀ gO, gS = P ⊙ (gP − ρ) with ρ = rowsum(gP ⊙ P), gQ = c·gS K,
/// gK = c·gSᵀ Q; and their tangents (the product rule on each factor). Per head: c·gS (and
/// c·gṠ) by blocks of [`LANES`] rows, one row per lane as in the forward, then the three
/// products by [`head_product`].
#[multiversion(targets = "simd")]
#[allow(clippy::too_many_arguments)]
fn attention_backward<R: Real, const DH: usize>(
    d: Dims,
    c: f64,
    q: Pair<Vec<R>>,
    k: Pair<Vec<R>>,
    v: Pair<Vec<R>>,
    p: &Act<Vec<R>>,
    go: Pair<Vec<R>>,
    gq: PairMut<Vec<R>>,
    gk: PairMut<Vec<R>>,
    gv: PairMut<Vec<R>>,
) {
    let (l, c) = (d.len, R::of(c));
    let sq = HeadSquare::of(d);
    let (mut gqt, mut gkt, mut gvt) = (gq.t, gk.t, gv.t);
    let [mut gp, mut gpt, mut gpt2] = std::array::from_fn(|_| vec![[R::zero(); LANES]; sq.lp]);
    // c·gS and c·gṠ of the head, stored as P is. Every head writes the same entries, so the
    // others stay zero.
    let (mut cgs, mut cgst) = (vec![R::zero(); sq.len()], vec![R::zero(); sq.len()]);
    let dh = head_dim::<DH>(d);
    let (mut go_tr, mut got_tr) = (Vec::new(), Vec::new());
    for s in 0..d.seqs {
        for hd in 0..d.heads {
            let head = sq.head(s * d.heads + hd);
            let (pv, pt) = (&p.v[head.clone()], go.t.map(|_| &p.t[head.clone()]));
            let rows = HeadRows::of(d, dh, s, hd);
            head_transposed_pair(l, rows, go, &mut go_tr, &mut got_tr);
            for i0 in (0..l).step_by(LANES) {
                let terms = (i0 + LANES).min(l);
                block_scores(&go_tr, sq, i0, v.v, rows, terms, &mut gp);
                let mut rho = [R::zero(); LANES];
                for (j, gpj) in gp[..terms].iter().enumerate() {
                    let pj = sq.lanes(pv, j, i0);
                    for z in 0..LANES {
                        rho[z] = pj[z].mul_add(gpj[z], rho[z]);
                    }
                }
                for (j, gpj) in gp[..terms].iter().enumerate() {
                    let pj = sq.lanes(pv, j, i0);
                    let cgs_j = &mut cgs[sq.column(j)][i0..i0 + LANES];
                    for z in 0..LANES {
                        cgs_j[z] = c * (pj[z] * (gpj[z] - rho[z]));
                    }
                }
                if let (Some(pt), Some(vt)) = (pt, v.t) {
                    block_scores(&got_tr, sq, i0, v.v, rows, terms, &mut gpt);
                    block_scores(&go_tr, sq, i0, vt, rows, terms, &mut gpt2);
                    let (mut rho_a, mut rho_b) = ([R::zero(); LANES], [R::zero(); LANES]);
                    for (j, ((gpj, gptj), gpt2j)) in gp[..terms].iter().zip(&mut gpt[..terms]).zip(&gpt2[..terms]).enumerate() {
                        let (pj, ptj) = (sq.lanes(pv, j, i0), sq.lanes(pt, j, i0));
                        for z in 0..LANES {
                            gptj[z] = gptj[z] + gpt2j[z];
                            rho_a[z] = gptj[z].mul_add(pj[z], rho_a[z]);
                            rho_b[z] = gpj[z].mul_add(ptj[z], rho_b[z]);
                        }
                    }
                    let mut rho_t = rho_a;
                    for z in 0..LANES {
                        rho_t[z] = rho_a[z] + rho_b[z];
                    }
                    for (j, (gpj, gptj)) in gp[..terms].iter().zip(&gpt[..terms]).enumerate() {
                        let (pj, ptj) = (sq.lanes(pv, j, i0), sq.lanes(pt, j, i0));
                        let cgst_j = &mut cgst[sq.column(j)][i0..i0 + LANES];
                        for z in 0..LANES {
                            cgst_j[z] = c * (ptj[z] * (gpj[z] - rho[z]) + pj[z] * (gptj[z] - rho_t[z]));
                        }
                    }
                }
            }
            head_product(sq, Coef::Columns, pv, go.v, None, rows, gv.v);
            head_product(sq, Coef::Columns, &cgs, q.v, None, rows, gk.v);
            head_product(sq, Coef::Rows, &cgs, k.v, None, rows, gq.v);
            if let (Some(pt), Some(got), Some(qt), Some(kt)) = (pt, go.t, q.t, k.t) {
                let tangent = "tangent mode has tangents";
                head_product(sq, Coef::Columns, pt, go.v, Some((pv, got)), rows, gvt.as_deref_mut().expect(tangent));
                head_product(sq, Coef::Columns, &cgst, q.v, Some((&cgs, qt)), rows, gkt.as_deref_mut().expect(tangent));
                head_product(sq, Coef::Rows, &cgst, k.v, Some((&cgs, kt)), rows, gqt.as_deref_mut().expect(tangent));
            }
        }
    }
}

/// Tangents: ṙ = (x·ẋ)/(H r), ṅ = (ẋ − n ṙ)/(r + ε), ȯut = ẇ ⊙ n + w ⊙ ṅ + ḃ.
#[multiversion(targets = "simd")]
fn rmsnorm_forward<R: Real>(m: usize, h: usize, x: Pair<Vec<R>>, w: Param<Vec<R>>, b: Param<Vec<R>>, nm: &mut Norm<Vec<R>>) {
    let ((wv, wt), (bv, bt)) = (param(&w), param(&b));
    let eps = R::of(NORM_EPS);
    let hr = R::of(h as f64);
    for row in 0..m {
        let span = row * h..(row + 1) * h;
        let xr = &x.v[span.clone()];
        let r = (dot(xr, xr) / hr).sqrt();
        let s = r + eps;
        nm.r.v[row] = r;
        let (nr, out) = (&mut nm.n.v[span.clone()], &mut nm.out.v[span.clone()]);
        for (((n, o), &xc), (&w, &b)) in nr.iter_mut().zip(out.iter_mut()).zip(xr).zip(wv.iter().zip(bv)) {
            *n = xc / s;
            *o = w * *n + b;
        }
        if let (Some(xt), Some(wt), Some(bt)) = (x.t, wt, bt) {
            let xt = &xt[span.clone()];
            let rt = if r > R::zero() { dot(xr, xt) / (hr * r) } else { R::zero() };
            nm.r.t[row] = rt;
            let (nt, out_t) = (&mut nm.n.t[span.clone()], &mut nm.out.t[span.clone()]);
            for (((nt, o), (&n, &xtc)), ((&w, &wtc), &btc)) in
                nt.iter_mut().zip(out_t.iter_mut()).zip(nm.n.v[span.clone()].iter().zip(xt)).zip(wv.iter().zip(wt).zip(bt))
            {
                *nt = (xtc - n * rt) / s;
                *o = wtc * n + w * *nt + btc;
            }
        }
    }
}

/// With gn = gy ⊙ w, a = gn·n and q = ∂r/∂x = x/(H r): gx = (gn − a q)/s, s = r + ε. The
/// tangent differentiates each factor: ġx = (ġn − ȧ q − a q̇ − gx ṙ)/s.
#[multiversion(targets = "simd")]
#[allow(clippy::too_many_arguments)]
fn rmsnorm_backward<R: Real>(
    m: usize,
    h: usize,
    nm: &Norm<Vec<R>>,
    x: Pair<Vec<R>>,
    w: Param<Vec<R>>,
    gy: Pair<Vec<R>>,
    gx: PairMut<Vec<R>>,
    out: ParamGrads<Vec<R>>,
) {
    let (wv, wt) = param(&w);
    let (eps, hr) = (R::of(NORM_EPS), R::of(h as f64));
    let wb = out.range;
    let (mut gw, mut hw) = (out.grad.map(|g| &mut g[wb.clone()]), out.hvp.map(|g| &mut g[wb.clone()]));
    let mut gxt = gx.t;
    let mut gn = vec![R::zero(); h];
    let mut gnt = vec![R::zero(); h];
    for row in 0..m {
        let span = row * h..(row + 1) * h;
        let (n, xr, g) = (&nm.n.v[span.clone()], &x.v[span.clone()], &gy.v[span.clone()]);
        let (r, s) = (nm.r.v[row], nm.r.v[row] + eps);
        if let Some(gw) = gw.as_deref_mut() {
            let (gw, gb) = gw.split_at_mut(h);
            for ((gw, gb), (&g, &n)) in gw.iter_mut().zip(gb).zip(g.iter().zip(n)) {
                *gw = *gw + g * n;
                *gb = *gb + g;
            }
        }
        let q_of = |a: R| if r > R::zero() { a / (hr * r) } else { R::zero() };
        for ((gn, &g), &w) in gn.iter_mut().zip(g).zip(wv) {
            *gn = g * w;
        }
        let a = dot(&gn, n);
        for ((gx, &gn), &xc) in gx.v[span.clone()].iter_mut().zip(&gn).zip(xr) {
            *gx = *gx + (gn - a * q_of(xc)) / s;
        }
        if let Some(gxt) = gxt.as_deref_mut() {
            let tangent = "tangent mode has tangents";
            let wt = wt.expect(tangent);
            let (nt, xt, gt) = (&nm.n.t[span.clone()], &x.t.expect(tangent)[span.clone()], &gy.t.expect(tangent)[span]);
            let rt = nm.r.t[row];
            if let Some(hw) = hw.as_deref_mut() {
                let (hw, hb) = hw.split_at_mut(h);
                for ((hw, hb), ((&gt, &n), (&g, &nt))) in hw.iter_mut().zip(hb).zip(gt.iter().zip(n).zip(g.iter().zip(nt))) {
                    *hw = *hw + gt * n + g * nt;
                    *hb = *hb + gt;
                }
            }
            for (((gnt, &gt), &g), (&w, &wt)) in gnt.iter_mut().zip(gt).zip(g).zip(wv.iter().zip(wt)) {
                *gnt = gt * w + g * wt;
            }
            let at = dot(&gnt, n) + dot(&gn, nt);
            for (c, gxt) in gxt[row * h..(row + 1) * h].iter_mut().enumerate() {
                let q = q_of(xr[c]);
                let qt = if r > R::zero() { xt[c] / (hr * r) - q * rt / r } else { R::zero() };
                let gxc = (gn[c] - a * q) / s;
                *gxt = *gxt + (gnt[c] - at * q - a * qt - gxc * rt) / s;
            }
        }
    }
}

/// The head's softmax and cross-entropy, row by row: the logits in `z` become probabilities in
/// place (zero rows at PAD labels), each row's loss max + ln Σ − z_y is added to its sequence's
/// sum and its label to `counts`; with tangents, l̇ = Σ_v p_v ż_v − ż_y is added to `dots` and
/// ṗ = p ⊙ (ż − Σ p ż) replaces ż.
#[multiversion(targets = "simd")]
#[allow(clippy::too_many_arguments)]
fn softmax_cross_entropy<R: Real>(
    tokens: Tokens<Vec<u32>>,
    vocab: usize,
    z: &mut Act<Vec<R>>,
    tan: bool,
    counts: &mut [usize],
    losses: &mut [f64],
    dots: &mut [f64],
) {
    let (l, m) = (tokens.len(), tokens.rows());
    for row in 0..m {
        let y = label(&tokens, row);
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
        counts[n] += 1;
        losses[n] += (max + sum.ln() - zy).f64();
        if tan {
            let zt = &mut z.t[span];
            let mean = dot(zr, zt);
            dots[n] += (mean - zt[y as usize]).f64();
            for (d, &p) in zt.iter_mut().zip(zr.iter()) {
                *d = p * (*d - mean);
            }
        }
    }
}

/// The gradient of Σ w_n l_n with respect to the logits, row by row (zero at PAD labels): c (p −
/// onehot(y)) with c = w_n / count_n, and its tangent c ṗ. Every row of `gz` is written.
#[multiversion(targets = "simd")]
fn logit_gradients<R: Real>(
    tokens: Tokens<Vec<u32>>,
    vocab: usize,
    probs: &Act<Vec<R>>,
    counts: &[usize],
    weights: &[R],
    tan: bool,
    gz: &mut Act<Vec<R>>,
) {
    let l = tokens.len();
    for row in 0..tokens.rows() {
        let y = label(&tokens, row);
        let n = row / l;
        let span = row * vocab..(row + 1) * vocab;
        if y == PAD || counts[n] == 0 {
            gz.v[span.clone()].fill(R::zero());
            if tan {
                gz.t[span].fill(R::zero());
            }
            continue;
        }
        let c = weights[n] / R::of(counts[n] as f64);
        for (g, &p) in gz.v[span.clone()].iter_mut().zip(&probs.v[span.clone()]) {
            *g = c * p;
        }
        gz.v[row * vocab + y as usize] = gz.v[row * vocab + y as usize] - c;
        if tan {
            for (g, &p) in gz.t[span.clone()].iter_mut().zip(&probs.t[span]) {
                *g = c * p;
            }
        }
    }
}

/// L rounded up to whole lane sets: the row length of a head's transpose and the side of its
/// [`HeadSquare`] matrices, so that loops over them vectorise without a scalar tail.
fn padded_len(l: usize) -> usize {
    l.next_multiple_of(LANES)
}

/// One head's rows (L of them) of a [M, H] activation, transposed into `out` with rows of
/// `padded_len(L)` (zeros past L): out\[dd·padded_len(L) + j\] = m\[row j\]\[dd\].
#[inline(always)]
fn head_transposed<R: Real>(l: usize, rows: HeadRows, m: &[R], out: &mut Vec<R>) {
    let lp = padded_len(l);
    out.clear();
    out.resize(rows.dh * lp, R::zero());
    for j in 0..l {
        for (dd, &x) in m[rows.row(j)].iter().enumerate() {
            out[dd * lp + j] = x;
        }
    }
}

/// `head_transposed` of a value and, in tangent mode, of its tangent.
#[inline(always)]
fn head_transposed_pair<R: Real>(l: usize, rows: HeadRows, m: Pair<Vec<R>>, out: &mut Vec<R>, out_t: &mut Vec<R>) {
    head_transposed(l, rows, m.v, out);
    if let Some(mt) = m.t {
        head_transposed(l, rows, mt, out_t);
    }
}

/// s_j = Σ_d aᵀ\[d\]\[i0 + z\]·m_j\[d\] in lane z, for j < `terms`: the products of a block of
/// [`LANES`] rows a_i (from their transpose `a_tr`, [`head_transposed`]) with the head's rows m_j,
/// one row i per lane, summed over d in order by fused multiply-adds.
#[inline(always)]
fn block_scores<R: Real>(a_tr: &[R], sq: HeadSquare, i0: usize, m: &[R], rows: HeadRows, terms: usize, out: &mut [[R; LANES]]) {
    for (j, o) in out[..terms].iter_mut().enumerate() {
        let mut acc = [R::zero(); LANES];
        for (dd, &mjd) in m[rows.row(j)].iter().enumerate() {
            let a: &[R; LANES] = a_tr[dd * sq.lp + i0..][..LANES].try_into().expect("a lane set");
            for z in 0..LANES {
                acc[z] = a[z].mul_add(mjd, acc[z]);
            }
        }
        *o = acc;
    }
}

/// The layout of a head's [L, L] matrices (P, its tangent, c·gS): [Lp, Lp] with Lp = L padded
/// to whole lane sets, stored by columns (M\[j·Lp + i\] = P\[i\]\[j\]: a lane set of rows i is
/// contiguous for each j). A block of [`LANES`] rows is written up to its last row's diagonal,
/// zero where j > i or i ≥ L; the columns past that are neither written nor read.
#[derive(Clone, Copy)]
struct HeadSquare {
    l: usize,
    lp: usize,
}

impl HeadSquare {
    #[inline(always)]
    fn of(d: Dims) -> Self {
        HeadSquare { l: d.len, lp: padded_len(d.len) }
    }
    #[inline(always)]
    fn len(self) -> usize {
        self.lp * self.lp
    }
    /// Head `h`'s matrix in a buffer of one per head.
    #[inline(always)]
    fn head(self, h: usize) -> Range<usize> {
        h * self.len()..(h + 1) * self.len()
    }
    /// Column j: P\[i\]\[j\] for every i.
    #[inline(always)]
    fn column(self, j: usize) -> Range<usize> {
        j * self.lp..(j + 1) * self.lp
    }
    /// P\[i\]\[j\].
    #[inline(always)]
    fn at<R: Real>(self, m: &[R], i: usize, j: usize) -> R {
        m[j * self.lp + i]
    }
    /// P\[i0 + z\]\[j\] in lane z.
    #[inline(always)]
    fn lanes<R: Real>(self, m: &[R], j: usize, i0: usize) -> [R; LANES] {
        *<&[R; LANES]>::try_from(&m[self.column(j)][i0..i0 + LANES]).expect("a lane set")
    }
}

/// Whether P\[i\]\[j\] is one of the softmax's: j ≤ i < L.
#[inline(always)]
fn live(sq: HeadSquare, i: usize, j: usize) -> bool {
    j <= i && i < sq.l
}

/// Output rows of a [`head_product`] held in registers together.
const BLOCK: usize = 8;

/// Which entry of its [`HeadSquare`] matrix P is [`head_product`]'s coefficient of output row r
/// and input row t.
#[derive(Clone, Copy)]
enum Coef {
    /// P\[r\]\[t\]: O = P V, gQ = c·gS K.
    Rows,
    /// P\[t\]\[r\]: gV = Pᵀ gO, gK = c·gSᵀ Q.
    Columns,
}

impl Coef {
    #[inline(always)]
    fn at<R: Real>(self, sq: HeadSquare, m: &[R], r: usize, t: usize) -> R {
        match self {
            Coef::Rows => sq.at(m, r, t),
            Coef::Columns => sq.at(m, t, r),
        }
    }
}

/// out_r = Σ_t a(r, t)·x_t, or Σ_t (a(r, t)·x_t + b(r, t)·w_t) with `bw`, overwriting each of the
/// head's rows r < L (in [M, H] activations): t ascending, each term by a fused multiply-add
/// (the a term, then the b term). A block of [`BLOCK`] output rows is summed in registers, each
/// x_t loaded once per block. P is lower triangular, so a block [r0, r0 + BLOCK)
/// takes t < r0 + BLOCK (`Coef::Rows`) or t ≥ r0 (`Coef::Columns`): a few zero terms in the
/// diagonal block.
#[inline(always)]
fn head_product<R: Real>(sq: HeadSquare, coef: Coef, a: &[R], x: &[R], bw: Option<(&[R], &[R])>, rows: HeadRows, out: &mut [R]) {
    for r0 in (0..sq.l).step_by(BLOCK) {
        let terms = match coef {
            Coef::Rows => 0..(r0 + BLOCK).min(sq.l),
            Coef::Columns => r0..sq.l,
        };
        for c0 in (0..rows.dh).step_by(LANES) {
            let cols = c0..(c0 + LANES).min(rows.dh);
            let mut acc = [[R::zero(); LANES]; BLOCK];
            match bw {
                None => {
                    for t in terms.clone() {
                        let xt = lane_set(&x[rows.row(t)][cols.clone()]);
                        for (r, acc_r) in acc.iter_mut().enumerate() {
                            let ar = coef.at(sq, a, r0 + r, t);
                            for z in 0..LANES {
                                acc_r[z] = ar.mul_add(xt[z], acc_r[z]);
                            }
                        }
                    }
                }
                Some((b, w)) => {
                    for t in terms.clone() {
                        let (xt, wt) = (lane_set(&x[rows.row(t)][cols.clone()]), lane_set(&w[rows.row(t)][cols.clone()]));
                        for (r, acc_r) in acc.iter_mut().enumerate() {
                            let (ar, br) = (coef.at(sq, a, r0 + r, t), coef.at(sq, b, r0 + r, t));
                            for z in 0..LANES {
                                acc_r[z] = br.mul_add(wt[z], ar.mul_add(xt[z], acc_r[z]));
                            }
                        }
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate().take(sq.l - r0) {
                out[rows.row(r0 + r)][cols.clone()].copy_from_slice(&acc_r[..cols.len()]);
            }
        }
    }
}

/// Up to a lane set of values, zero-padded to one.
#[inline(always)]
fn lane_set<R: Real>(s: &[R]) -> [R; LANES] {
    match <&[R; LANES]>::try_from(s) {
        Ok(full) => *full,
        Err(_) => {
            let mut v = [R::zero(); LANES];
            v[..s.len()].copy_from_slice(s);
            v
        }
    }
}

/// head_dim: `DH` where the loops were compiled for a constant one (so LLVM unrolls each row's
/// loop into whole registers), else (DH = 0) the model's.
#[inline(always)]
fn head_dim<const DH: usize>(d: Dims) -> usize {
    if DH == 0 {
        d.hidden / d.heads
    } else {
        DH
    }
}

/// Head `hd` of sequence `s`: its rows in [M, H] activations (head_dim values each).
#[derive(Clone, Copy)]
struct HeadRows {
    first: usize,
    hidden: usize,
    dh: usize,
}

impl HeadRows {
    #[inline(always)]
    fn of(d: Dims, dh: usize, s: usize, hd: usize) -> Self {
        HeadRows { first: s * d.len * d.hidden + hd * dh, hidden: d.hidden, dh }
    }
    #[inline(always)]
    fn row(self, i: usize) -> Range<usize> {
        let at = self.first + i * self.hidden;
        at..at + self.dh
    }
}
