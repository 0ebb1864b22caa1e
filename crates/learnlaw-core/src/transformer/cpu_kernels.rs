//! The layer kernels on the CPU, generic over f32/f64: plain loops and GEMMs (`linalg::gemm`) on
//! host vectors. `CpuKernels<f64>` is the reference every other backend's kernels are held to.
//!
//! Summation orders (what fixes the bits): GEMMs are `linalg::gemm`'s; row reductions use
//! `host::dot`/`sum`/`max` (16 lanes, then the tail); per-sequence losses and dots add their
//! tokens in order in f64; gradient scatters (embeddings, norm weights) add rows in order.
use std::marker::PhantomData;

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
        let add = |y: &mut [R], x: &[R]| y.iter_mut().zip(x).for_each(|(a, &b)| *a = *a + b);
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
        y.v.clear();
        y.v.extend(x.v[..len].iter().map(|&a| a.max(R::zero())));
        if let (Some(yt), Some(xt)) = (y.t, x.t) {
            yt.clear();
            yt.extend(x.v[..len].iter().zip(&xt[..len]).map(|(&a, &d)| if a > R::zero() { d } else { R::zero() }));
        }
    }

    /// Selects, not branches: the signs are random, so a branch would mispredict half the time.
    fn relu_backward(&mut self, x: &Vec<R>, len: usize, g: PairMut<Vec<R>>) {
        let mask = |g: &mut [R]| g.iter_mut().zip(&x[..len]).for_each(|(g, &a)| *g = if a > R::zero() { *g } else { R::zero() });
        mask(&mut g.v[..len]);
        if let Some(gt) = g.t {
            mask(&mut gt[..len]);
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
        self.zero(&mut gz.v, probs.v.len());
        if tan {
            self.zero(&mut gz.t, probs.v.len());
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
// RMSNorm and the head's softmax and cross-entropy, compiled for every x86-64 level and picked at
// run time like the perceptron's passes (multiversion), everything they call inlined into them.
// Embeddings, ReLU and residual adds are memory-bound copies and stay baseline.

/// Tangents: Ṡ = c(Q̇ Kᵀ + Q K̇ᵀ), Ṗ = P ⊙ (Ṡ − rowsum(P ⊙ Ṡ)), Ȯ = Ṗ V + P V̇.
/// Loops over j ≤ i: the per-head products are too small (L × head_dim) for a GEMM's packing to
/// pay, and the causal half is skipped. A row of scores q_i·k_j comes from the head's Kᵀ
/// ([`row_times_transposed`]: vectorised over j, where a dot per j would end in a horizontal sum).
/// The output rows are axpys of V's rows (vectorised over head_dim), run once the head's P is
/// known with j outermost: consecutive axpys then go to different rows, where a loop over j
/// into one row would wait on each store. Each row still sums its j in order.
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
    let tan = q.t.is_some();
    let mut ot = o.t;
    // Each call writes every entry on and below the diagonal; nothing reads those above it.
    p.v.resize(d.seqs * d.heads * l * l, R::zero());
    if tan {
        p.t.resize(p.v.len(), R::zero());
    }
    o.v.fill(R::zero());
    if let Some(ot) = ot.as_deref_mut() {
        ot.fill(R::zero());
    }
    let dh = head_dim::<DH>(d);
    let mut scratch = [vec![R::zero(); padded_len(l)], vec![R::zero(); padded_len(l)], vec![R::zero(); padded_len(l)]];
    let (mut k_t, mut kt_t) = (Vec::new(), Vec::new());
    for s in 0..d.seqs {
        for hd in 0..d.heads {
            let at = (s * d.heads + hd) * l * l;
            let row = |i| head_row(d, dh, s, hd, i);
            head_transposed(d, dh, k.v, s, hd, &mut k_t);
            if let Some(kt) = k.t {
                head_transposed(d, dh, kt, s, hd, &mut kt_t);
            }
            for i in 0..l {
                // Row i in whole lane sets (n entries), the ones past i masked.
                let [st, st2, pi] = &mut scratch;
                let n = (i + 1).next_multiple_of(LANES);
                let qi = &q.v[row(i)];
                row_times_transposed(qi, &k_t, i + 1, st);
                causal_softmax(c, i, &st[..n], &mut pi[..n]);
                p.v[at + i * l..at + i * l + i + 1].copy_from_slice(&pi[..=i]);
                if let Some(qt) = q.t {
                    row_times_transposed(&qt[row(i)], &k_t, i + 1, st);
                    row_times_transposed(qi, &kt_t, i + 1, st2);
                    for (sj, &s2) in st[..n].iter_mut().zip(&st2[..n]) {
                        *sj = c * (*sj + s2);
                    }
                    let mean = dot(&pi[..n], &st[..n]);
                    let ptr = &mut p.t[at + i * l..at + i * l + i + 1];
                    for ((ptj, &pj), &sj) in ptr.iter_mut().zip(pi.iter()).zip(st.iter()) {
                        *ptj = pj * (sj - mean);
                    }
                }
            }
            for j in 0..l {
                let vj = &v.v[row(j)];
                for i in j..l {
                    axpy(p.v[at + i * l + j], vj, &mut o.v[row(i)]);
                }
                if let (Some(ot), Some(vt)) = (ot.as_deref_mut(), v.t) {
                    for i in j..l {
                        axpy2(p.t[at + i * l + j], vj, p.v[at + i * l + j], &vt[row(j)], &mut ot[row(i)]);
                    }
                }
            }
        }
    }
}

/// gP = gO Vᵀ, gV = Pᵀ gO, gS = P ⊙ (gP − ρ) with ρ = rowsum(gP ⊙ P), gQ = c·gS K,
/// gK = c·gSᵀ Q; and their tangents (the product rule on each factor). gQ's rows are summed
/// after the head's gS is known, j outermost (as the forward's output rows, and for the same
/// reason); the other gradients' rows already change with j.
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
    let (mut gqt, mut gkt, mut gvt) = (gq.t, gk.t, gv.t);
    for g in [&mut *gq.v, &mut *gk.v, &mut *gv.v].into_iter().chain(gqt.as_deref_mut()).chain(gkt.as_deref_mut()).chain(gvt.as_deref_mut())
    {
        g.fill(R::zero());
    }
    let mut scratch = [vec![R::zero(); padded_len(l)], vec![R::zero(); padded_len(l)], vec![R::zero(); padded_len(l)]];
    // c·gS and c·gṠ of the head, [L, L] (row i's first i + 1 entries).
    let (mut cgs, mut cgst) = (vec![R::zero(); l * l], vec![R::zero(); l * l]);
    let dh = head_dim::<DH>(d);
    let (mut v_t, mut vt_t) = (Vec::new(), Vec::new());
    for s in 0..d.seqs {
        for hd in 0..d.heads {
            let at = (s * d.heads + hd) * l * l;
            let row = |i| head_row(d, dh, s, hd, i);
            head_transposed(d, dh, v.v, s, hd, &mut v_t);
            if let Some(vt) = v.t {
                head_transposed(d, dh, vt, s, hd, &mut vt_t);
            }
            for i in 0..l {
                let [gp, gpt, gpt2] = &mut scratch;
                let pr = &p.v[at + i * l..at + i * l + i + 1];
                let (goi, qi) = (&go.v[row(i)], &q.v[row(i)]);
                row_times_transposed(goi, &v_t, i + 1, gp);
                let rho = dot(pr, &gp[..=i]);
                let cgs_i = &mut cgs[i * l..i * l + i + 1];
                for (j, (cgs_ij, (&pj, &gpj))) in cgs_i.iter_mut().zip(pr.iter().zip(gp.iter())).enumerate() {
                    axpy(pj, goi, &mut gv.v[row(j)]);
                    *cgs_ij = c * (pj * (gpj - rho));
                    axpy(*cgs_ij, qi, &mut gk.v[row(j)]);
                }
                if let (Some(gkt), Some(gvt)) = (gkt.as_deref_mut(), gvt.as_deref_mut()) {
                    let tangent = "tangent mode has tangents";
                    let ptr = &p.t[at + i * l..at + i * l + i + 1];
                    let (goti, qti) = (&go.t.expect(tangent)[row(i)], &q.t.expect(tangent)[row(i)]);
                    row_times_transposed(goti, &v_t, i + 1, gpt);
                    row_times_transposed(goi, &vt_t, i + 1, gpt2);
                    for j in 0..=i {
                        gpt[j] = gpt[j] + gpt2[j];
                        axpy2(ptr[j], goi, pr[j], goti, &mut gvt[row(j)]);
                    }
                    let rho_t = dot(&gpt[..=i], pr) + dot(&gp[..=i], ptr);
                    let cgst_i = &mut cgst[i * l..i * l + i + 1];
                    for j in 0..=i {
                        let gst = ptr[j] * (gp[j] - rho) + pr[j] * (gpt[j] - rho_t);
                        cgst_i[j] = c * gst;
                        axpy2(cgst_i[j], qi, cgs_i[j], qti, &mut gkt[row(j)]);
                    }
                }
            }
            for j in 0..l {
                let kj = &k.v[row(j)];
                for i in j..l {
                    axpy(cgs[i * l + j], kj, &mut gq.v[row(i)]);
                }
                if let (Some(gqt), Some(kt)) = (gqt.as_deref_mut(), k.t) {
                    for i in j..l {
                        axpy2(cgst[i * l + j], kj, cgs[i * l + j], &kt[row(j)], &mut gqt[row(i)]);
                    }
                }
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
        for (c, &xc) in xr.iter().enumerate() {
            let n = xc / s;
            nm.n.v[row * h + c] = n;
            nm.out.v[row * h + c] = wv[c] * n + bv[c];
        }
        if let (Some(xt), Some(wt), Some(bt)) = (x.t, wt, bt) {
            let xt = &xt[span];
            let rt = if r > R::zero() { dot(xr, xt) / (hr * r) } else { R::zero() };
            nm.r.t[row] = rt;
            for c in 0..h {
                let n = nm.n.v[row * h + c];
                let nt = (xt[c] - n * rt) / s;
                nm.n.t[row * h + c] = nt;
                nm.out.t[row * h + c] = wt[c] * n + wv[c] * nt + bt[c];
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
            for c in 0..h {
                gw[c] = gw[c] + g[c] * n[c];
                gw[h + c] = gw[h + c] + g[c];
            }
        }
        let q_of = |a: R| if r > R::zero() { a / (hr * r) } else { R::zero() };
        for c in 0..h {
            gn[c] = g[c] * wv[c];
        }
        let a = dot(&gn, n);
        for c in 0..h {
            gx.v[row * h + c] = gx.v[row * h + c] + (gn[c] - a * q_of(xr[c])) / s;
        }
        if let Some(gxt) = gxt.as_deref_mut() {
            let tangent = "tangent mode has tangents";
            let wt = wt.expect(tangent);
            let (nt, xt, gt) = (&nm.n.t[span.clone()], &x.t.expect(tangent)[span.clone()], &gy.t.expect(tangent)[span]);
            let rt = nm.r.t[row];
            if let Some(hw) = hw.as_deref_mut() {
                for c in 0..h {
                    hw[c] = hw[c] + gt[c] * n[c] + g[c] * nt[c];
                    hw[h + c] = hw[h + c] + gt[c];
                }
            }
            for c in 0..h {
                gnt[c] = gt[c] * wv[c] + g[c] * wt[c];
            }
            let at = dot(&gnt, n) + dot(&gn, nt);
            for c in 0..h {
                let q = q_of(xr[c]);
                let qt = if r > R::zero() { xt[c] / (hr * r) - q * rt / r } else { R::zero() };
                let gxc = (gn[c] - a * q) / s;
                gxt[row * h + c] = gxt[row * h + c] + (gnt[c] - at * q - a * qt - gxc * rt) / s;
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

/// The gradient of Σ w_n l_n with respect to the logits, row by row (the rows of PAD labels stay
/// zero): c (p − onehot(y)) with c = w_n / count_n, and its tangent c ṗ.
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
        if y == PAD || counts[n] == 0 {
            continue;
        }
        let c = weights[n] / R::of(counts[n] as f64);
        let span = row * vocab..(row + 1) * vocab;
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

/// p_j = softmax_j(c·s) over j ≤ i, and 0 past i, for `s` and `p` of whole lane sets: the
/// entries past i masked instead of cut off, so every loop vectorises without a scalar tail.
#[inline(always)]
fn causal_softmax<R: Real>(c: R, i: usize, s: &[R], p: &mut [R]) {
    for (j, (y, &x)) in p.iter_mut().zip(s).enumerate() {
        *y = if j <= i { c * x } else { R::neg_infinity() };
    }
    let top = max(p);
    for (j, y) in p.iter_mut().enumerate() {
        *y = if j <= i { (*y - top).exp_inline() } else { R::zero() };
    }
    let inv = R::one() / sum(p);
    p.iter_mut().for_each(|y| *y = *y * inv);
}

/// The row length of a head's transpose: L rounded up to whole lane sets, so that products
/// with it vectorise without a scalar tail.
fn padded_len(l: usize) -> usize {
    l.next_multiple_of(LANES)
}

/// One head's rows of a [M, H] activation of sequence `s`, transposed into `out` with rows of
/// `padded_len(L)` (zeros past L): out\[dd·padded_len(L) + j\] = m\[row j\]\[dd\].
#[inline(always)]
fn head_transposed<R: Real>(d: Dims, dh: usize, m: &[R], s: usize, hd: usize, out: &mut Vec<R>) {
    let (l, lp) = (d.len, padded_len(d.len));
    out.clear();
    out.resize(dh * lp, R::zero());
    for j in 0..l {
        for (dd, &x) in m[head_row(d, dh, s, hd, j)].iter().enumerate() {
            out[dd * lp + j] = x;
        }
    }
}

/// out\[j\] = a·m_j for j < n (and on to the end of that lane set), from the transpose `mt`
/// (`head_transposed`) of the m_j: per lane set of j, the products of a's entries with rows of
/// `mt` added in a's order (the order `host::dot` adds vectors of up to 16 in, so at head_dim 16
/// the same bits as a dot per j), the sums kept in registers.
#[inline(always)]
fn row_times_transposed<R: Real>(a: &[R], mt: &[R], n: usize, out: &mut [R]) {
    let lp = mt.len() / a.len();
    let sets = n.div_ceil(LANES);
    for (set, o) in out.as_chunks_mut::<LANES>().0[..sets].iter_mut().enumerate() {
        let column = |dd: usize| -> &[R; LANES] { mt[dd * lp + set * LANES..][..LANES].try_into().expect("a lane set") };
        let m0 = column(0);
        let mut acc: [R; LANES] = std::array::from_fn(|x| a[0] * m0[x]);
        for (dd, &ad) in a.iter().enumerate().skip(1) {
            let m = column(dd);
            for x in 0..LANES {
                acc[x] = acc[x] + ad * m[x];
            }
        }
        *o = acc;
    }
}

/// y ← y + a·x, a lane set at a time through locals: all of a set's loads come before its
/// stores, so a row of constant length (a constant head_dim) unrolls into vector instructions
/// (straight-line code through the slices would stay scalar: x might alias y).
#[inline(always)]
fn axpy<R: Real>(a: R, x: &[R], y: &mut [R]) {
    let n = y.len();
    let (y16, y_tail) = y.as_chunks_mut::<LANES>();
    let (x16, x_tail) = x[..n].as_chunks::<LANES>();
    for (ys, xs) in y16.iter_mut().zip(x16) {
        let (mut yv, xv) = (*ys, *xs);
        for i in 0..LANES {
            yv[i] = yv[i] + a * xv[i];
        }
        *ys = yv;
    }
    y_tail.iter_mut().zip(x_tail).for_each(|(y, &x)| *y = *y + a * x);
}

/// y ← (y + a·x) + b·w: two `axpy`s into one row (the same bits) with one load and one store
/// of y, where the second would wait for the first's store.
#[inline(always)]
fn axpy2<R: Real>(a: R, x: &[R], b: R, w: &[R], y: &mut [R]) {
    let n = y.len();
    let (y16, y_tail) = y.as_chunks_mut::<LANES>();
    let ((x16, x_tail), (w16, w_tail)) = (x[..n].as_chunks::<LANES>(), w[..n].as_chunks::<LANES>());
    for ((ys, xs), ws) in y16.iter_mut().zip(x16).zip(w16) {
        let (mut yv, xv, wv) = (*ys, *xs, *ws);
        for i in 0..LANES {
            yv[i] = (yv[i] + a * xv[i]) + b * wv[i];
        }
        *ys = yv;
    }
    y_tail.iter_mut().zip(x_tail.iter().zip(w_tail)).for_each(|(y, (&x, &w))| *y = (*y + a * x) + b * w);
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

/// Row i of head `hd` of sequence `s` in a [M, H] activation (head_dim values).
#[inline(always)]
fn head_row(d: Dims, dh: usize, s: usize, hd: usize, i: usize) -> std::ops::Range<usize> {
    let at = (s * d.len + i) * d.hidden + hd * dh;
    at..at + dh
}
