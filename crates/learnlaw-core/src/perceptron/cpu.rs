//! The perceptron on the CPU: the fast backend (f32) and the f64 one the finite-difference tests use.
//!
//! Each step is one pass over the training matrix, split into fixed chunks of rows that rayon
//! spreads over the cores, with the desired set's pass beside it (one fork–join per step). Rows go
//! in blocks of 16: their dots (the backward step's two per row for 4 rows at once, so the FMA
//! chains overlap), their sigmoids in one vectorised loop, then their axpys while the block is in
//! L1, with 64 columns of the accumulator in registers across the block's rows (those two in fused
//! multiply-adds). The backward step's ∇L_dev skips the desired set's losses. Chunk partial sums
//! are reduced in a fixed order, so results do not depend on the thread count or on scheduling (a
//! resumed f32 search reproduces an uninterrupted one bit for bit).
use multiversion::multiversion;
use rayon::prelude::*;

use super::{bce_with_logits, sigmoid};
use crate::data::{Examples, PerceptronData};
use crate::engine::{Engine, Set, StepFlops};
use crate::host::{self, dot};
use crate::perceptron;
use crate::{Real, Result};

/// Rows per parallel chunk: large enough to amortise scheduling, small enough to balance 2–16 cores.
const CHUNK_ROWS: usize = 256;
/// Rows per block inside a chunk: their dots first, then their sigmoids in one vectorised loop,
/// then their axpys while the rows are still in L1 (16 rows of D = 128 f32 are 8 KiB).
const BLOCK: usize = 16;

/// A data set converted to the engine's precision.
struct Matrix<R> {
    x: Vec<R>,
    y: Vec<R>,
}

impl<R: Real> Matrix<R> {
    fn new(set: &Examples) -> Self {
        let cast = |v: &[f32]| v.iter().map(|&a| R::of(a as f64)).collect();
        Matrix { x: cast(&set.x), y: cast(&set.y) }
    }
    fn rows(&self) -> usize {
        self.y.len()
    }

    /// Mean loss at θ (with `want_loss`; else 0) and, when `grad` is given, its gradient
    /// (1/n) Σ (σ(z_n) − y_n) x_n, with `partials` (a D-vector per chunk) as the chunks' scratch.
    fn mean_loss_grad(&self, theta: &[R], partials: &mut [R], want_loss: bool, grad: Option<&mut [R]>) -> f64 {
        let dim = theta.len();
        let chunks = self.rows().div_ceil(CHUNK_ROWS);
        let want_grad = grad.is_some();
        let losses: Vec<f64> = partials[..chunks * dim]
            .par_chunks_mut(dim)
            .zip(self.x.par_chunks(CHUNK_ROWS * dim).zip(self.y.par_chunks(CHUNK_ROWS)))
            .map(|(g, (x, y))| loss_grad_chunk(x, y, theta, want_loss, want_grad.then_some(g)))
            .collect();
        let n = self.rows() as f64;
        if let Some(grad) = grad {
            reduce_partials(partials, dim, chunks, grad);
            let inv = R::of(1.0 / n);
            grad.iter_mut().for_each(|g| *g = *g * inv);
        }
        losses.iter().sum::<f64>() / n
    }
}

/// Σ over chunks of `partials`, in chunk order, into `out`.
fn reduce_partials<R: Real>(partials: &[R], dim: usize, chunks: usize, out: &mut [R]) {
    out.fill(R::zero());
    for p in partials[..chunks * dim].chunks_exact(dim) {
        for (o, &v) in out.iter_mut().zip(p) {
            *o = *o + v;
        }
    }
}

pub struct CpuPerceptron<R: Real> {
    dim: usize,
    train: Matrix<R>,
    dev: Matrix<R>,
    test: Matrix<R>,
    /// Per-chunk partial sums of a D-vector over the training rows, reduced in chunk order.
    partials: Vec<R>,
    /// The same for the desired or test set's pass, which runs beside the training pass.
    set_partials: Vec<R>,
    /// Scratch for ∇L_dev in the backward step.
    dev_grad: Vec<R>,
}

impl<R: Real> CpuPerceptron<R> {
    /// An evaluation set and the scratch of its pass.
    fn set(&mut self, set: Set) -> (&Matrix<R>, &mut [R]) {
        let m = match set {
            Set::Dev => &self.dev,
            Set::Test => &self.test,
        };
        (m, &mut self.set_partials)
    }

    pub fn new(data: &PerceptronData) -> Result<Self> {
        data.validate()?;
        let dim = data.dim;
        let chunks = [&data.train, &data.dev, &data.test].map(|s| s.len().div_ceil(CHUNK_ROWS));
        Ok(CpuPerceptron {
            dim,
            train: Matrix::new(&data.train),
            dev: Matrix::new(&data.dev),
            test: Matrix::new(&data.test),
            partials: vec![R::zero(); chunks[0] * dim],
            set_partials: vec![R::zero(); chunks[1].max(chunks[2]) * dim],
            dev_grad: vec![R::zero(); dim],
        })
    }
}

/// Rows whose dots run together: their independent accumulator chains keep the FMA units busy
/// where one row's chain would wait on each add's latency.
const DOT_ROWS: usize = 4;

/// out\[r\] = x_r·a for the rows of `xb` (rows of `a.len()`).
#[inline(always)]
fn block_dots<R: Real>(xb: &[R], a: &[R], out: &mut [R]) {
    for (o, row) in out.iter_mut().zip(xb.chunks_exact(a.len())) {
        *o = dot(row, a);
    }
}

/// (x_r·a, x_r·b) for the rows of `xb` in one pass over them, `DOT_ROWS` at a time, each pair
/// summed in 8 lanes with fused multiply-adds, then the tail.
#[inline(always)]
fn block_dots2<R: Real>(xb: &[R], a: &[R], b: &[R], out_a: &mut [R], out_b: &mut [R]) {
    let d = a.len();
    let ((a8, at), (b8, bt)) = (a.as_chunks::<8>(), b[..d].as_chunks::<8>());
    let tail_at = d - at.len();
    let finish = |row: &[R], p: &[R; 8], q: &[R; 8]| -> (R, R) {
        let (mut pt, mut qt) = (R::zero(), R::zero());
        for ((&xi, &ai), &bi) in row[tail_at..].iter().zip(at).zip(bt) {
            pt = xi.mul_add(ai, pt);
            qt = xi.mul_add(bi, qt);
        }
        (p.iter().copied().sum::<R>() + pt, q.iter().copied().sum::<R>() + qt)
    };
    let mut groups = xb.chunks_exact(DOT_ROWS * d);
    let mut k = 0;
    for group in &mut groups {
        let mut p = [[R::zero(); 8]; DOT_ROWS];
        let mut q = [[R::zero(); 8]; DOT_ROWS];
        // The rows as chunks of 8, walked by iterators: no bounds check in the loop, which would
        // keep the vectoriser from turning each row's 8 lanes into one vector.
        let [x0, x1, x2, x3]: [&[[R; 8]]; DOT_ROWS] = std::array::from_fn(|r| group[r * d..(r + 1) * d].as_chunks::<8>().0);
        for ((av, bv), (x01, x23)) in a8.iter().zip(b8).zip(x0.iter().zip(x1).zip(x2.iter().zip(x3))) {
            for (r, x) in [x01.0, x01.1, x23.0, x23.1].into_iter().enumerate() {
                for i in 0..8 {
                    p[r][i] = x[i].mul_add(av[i], p[r][i]);
                    q[r][i] = x[i].mul_add(bv[i], q[r][i]);
                }
            }
        }
        for r in 0..DOT_ROWS {
            (out_a[k], out_b[k]) = finish(&group[r * d..(r + 1) * d], &p[r], &q[r]);
            k += 1;
        }
    }
    for row in groups.remainder().chunks_exact(d) {
        let (mut p, mut q) = ([R::zero(); 8], [R::zero(); 8]);
        for ((x, av), bv) in row.as_chunks::<8>().0.iter().zip(a8).zip(b8) {
            for i in 0..8 {
                p[i] = x[i].mul_add(av[i], p[i]);
                q[i] = x[i].mul_add(bv[i], q[i]);
            }
        }
        (out_a[k], out_b[k]) = finish(row, &p, &q);
        k += 1;
    }
}

/// Columns of `g` held in registers while a block's rows are added in (8 vectors of 8).
const ACC_COLS: usize = 64;

/// g ← g + Σ_r c_r x_r over the rows of `xb` (in row order, so it sums exactly like one axpy per
/// row), skipping rows with c_r = 0. `ACC_COLS` columns of g stay in registers across the rows,
/// instead of a load and a store of all of g per row.
#[inline(always)]
fn block_axpy<R: Real>(xb: &[R], c: &[R], g: &mut [R]) {
    let d = g.len();
    let (g64, gt) = g.as_chunks_mut::<ACC_COLS>();
    for (s, gs) in g64.iter_mut().enumerate() {
        let mut acc = *gs;
        for (row, &cr) in xb.chunks_exact(d).zip(c) {
            if cr != R::zero() {
                let x = &row[ACC_COLS * s..ACC_COLS * s + ACC_COLS];
                for i in 0..ACC_COLS {
                    acc[i] = cr.mul_add(x[i], acc[i]);
                }
            }
        }
        *gs = acc;
    }
    let tail_at = d - gt.len();
    for (row, &cr) in xb.chunks_exact(d).zip(c) {
        if cr != R::zero() {
            for (gi, &xi) in gt.iter_mut().zip(&row[tail_at..]) {
                *gi = *gi + cr * xi;
            }
        }
    }
}

/// σ of a whole block (rows past its end included: a fixed trip count, so it vectorises).
#[inline(always)]
fn sigmoids<R: Real>(z: &[R; BLOCK]) -> [R; BLOCK] {
    let mut p = [R::zero(); BLOCK];
    for i in 0..BLOCK {
        p[i] = sigmoid(z[i]);
    }
    p
}

// The passes over one chunk of rows, what a step's parallel loop runs. Each is compiled for every
// x86-64 level (v4: AVX-512; v3: AVX2 + FMA; v2; the baseline) and the best one the CPU has is
// picked at run time (multiversion): the binary runs on any x86-64, and the loops above, inlined
// into these, get the widest vectors and fused multiply-adds the machine has. Everything inside
// must inline (a call out of a clone runs baseline code), hence plain loops, not `array::map`, and
// fixed trip counts or iterators where a bounds check would stop the vectoriser.

/// Σ of the chunk's losses (with `want_loss`; else 0) and, with `g`, its rows' (σ(z_n) − y_n) x_n
/// summed into `g`.
#[multiversion(targets = "simd")]
fn loss_grad_chunk<R: Real>(x: &[R], y: &[R], theta: &[R], want_loss: bool, mut g: Option<&mut [R]>) -> f64 {
    let dim = theta.len();
    if let Some(g) = g.as_deref_mut() {
        g.fill(R::zero());
    }
    let mut loss = 0.0;
    for (xb, yb) in x.chunks(BLOCK * dim).zip(y.chunks(BLOCK)) {
        let mut z = [R::zero(); BLOCK];
        block_dots(xb, theta, &mut z[..yb.len()]);
        if want_loss {
            for (&zn, &yn) in z.iter().zip(yb) {
                loss += bce_with_logits(zn, yn).f64();
            }
        }
        if let Some(g) = g.as_deref_mut() {
            let p = sigmoids(&z);
            let mut c = [R::zero(); BLOCK];
            for ((cn, &pn), &yn) in c.iter_mut().zip(&p).zip(yb) {
                *cn = pn - yn;
            }
            block_axpy(xb, &c, g);
        }
    }
    loss
}

/// g ← Σ_n w_n (σ(x_n·θ) − y_n) x_n over the chunk's rows (the forward step's gradient).
#[multiversion(targets = "simd")]
fn forward_chunk<R: Real>(x: &[R], y: &[R], w: &[R], theta: &[R], g: &mut [R]) {
    let dim = theta.len();
    g.fill(R::zero());
    for ((xb, yb), wb) in x.chunks(BLOCK * dim).zip(y.chunks(BLOCK)).zip(w.chunks(BLOCK)) {
        if wb.iter().all(|&wn| wn == R::zero()) {
            continue; // a block the policy drops (sparse γ): no pass over its rows
        }
        let mut z = [R::zero(); BLOCK];
        block_dots(xb, theta, &mut z[..yb.len()]);
        let p = sigmoids(&z);
        let mut c = [R::zero(); BLOCK];
        for (((cn, &pn), &yn), &wn) in c.iter_mut().zip(&p).zip(yb).zip(wb) {
            *cn = wn * (pn - yn);
        }
        block_axpy(xb, &c, g);
    }
}

/// Per row: z = x·θ and u = x·λ_next in one pass; ∂J/∂γ_n = −η (σ(z) − y) u into `out`; the HVP
/// term w σ'(z) u x summed into `h`.
#[multiversion(targets = "simd")]
#[allow(clippy::too_many_arguments)]
fn backward_chunk<R: Real>(x: &[R], y: &[R], w: &[R], theta: &[R], lambda_next: &[R], neg_eta: R, out: &mut [R], h: &mut [R]) {
    let dim = theta.len();
    h.fill(R::zero());
    let blocks = x.chunks(BLOCK * dim).zip(y.chunks(BLOCK)).zip(w.chunks(BLOCK).zip(out.chunks_mut(BLOCK)));
    for ((xb, yb), (wb, ob)) in blocks {
        let rows = yb.len();
        let (mut z, mut u) = ([R::zero(); BLOCK], [R::zero(); BLOCK]);
        block_dots2(xb, theta, lambda_next, &mut z[..rows], &mut u[..rows]);
        let p = sigmoids(&z);
        let mut c = [R::zero(); BLOCK];
        for ((((cn, o), &pn), &un), (&yn, &wn)) in c.iter_mut().zip(ob).zip(&p).zip(&u).zip(yb.iter().zip(wb)) {
            *o = neg_eta * (pn - yn) * un;
            *cn = wn * pn * (R::one() - pn) * un;
        }
        block_axpy(xb, &c, h);
    }
}

/// The chunk's per-example losses.
#[multiversion(targets = "simd")]
fn losses_chunk<R: Real>(x: &[R], y: &[R], theta: &[R], out: &mut [R]) {
    let dim = theta.len();
    for ((ob, xb), yb) in out.chunks_mut(BLOCK).zip(x.chunks(BLOCK * dim)).zip(y.chunks(BLOCK)) {
        block_dots(xb, theta, ob);
        ob.iter_mut().zip(yb).for_each(|(on, &yn)| *on = bce_with_logits(*on, yn));
    }
}

/// The chunk's per-example dots ∇l_n·v = (σ(x_n·θ) − y_n)(x_n·v).
#[multiversion(targets = "simd")]
fn dots_chunk<R: Real>(x: &[R], y: &[R], theta: &[R], v: &[R], out: &mut [R]) {
    let dim = theta.len();
    for ((ob, xb), yb) in out.chunks_mut(BLOCK).zip(x.chunks(BLOCK * dim)).zip(y.chunks(BLOCK)) {
        let mut z = [R::zero(); BLOCK];
        block_dots2(xb, theta, v, &mut z[..yb.len()], ob);
        for ((on, &pn), &yn) in ob.iter_mut().zip(&sigmoids(&z)).zip(yb) {
            *on = (pn - yn) * *on;
        }
    }
}

impl<R: Real> Engine for CpuPerceptron<R> {
    type Real = R;
    type Vec = Vec<R>;

    fn name(&self) -> String {
        format!("cpu-{}", std::any::type_name::<R>())
    }
    fn num_params(&self) -> usize {
        self.dim
    }
    fn num_train(&self) -> usize {
        self.train.rows()
    }
    fn num_classes(&self) -> usize {
        2
    }
    fn step_flops(&self) -> StepFlops {
        perceptron::step_flops(self.num_train(), self.dev.rows(), self.dim)
    }

    host::host_vector_methods!();

    fn forward_step(
        &mut self,
        theta: &Vec<R>,
        gamma: &Vec<R>,
        t: usize,
        eta: f64,
        theta_next: &mut Vec<R>,
        dev_loss: Option<(&mut Vec<R>, usize)>,
    ) -> Result<()> {
        let (dim, n) = (self.dim, self.num_train());
        host::check_len("theta", theta, dim)?;
        host::check_len("theta_next", theta_next, dim)?;
        let gamma_t = host::policy_row(gamma, t, n)?;
        let chunks = n.div_ceil(CHUNK_ROWS);
        let (train, dev, set_partials) = (&self.train, &self.dev, &mut self.set_partials);
        // The training pass and L_dev(θ) side by side: one fork–join for the step.
        let train_pass = || {
            self.partials[..chunks * dim]
                .par_chunks_mut(dim)
                .zip(train.x.par_chunks(CHUNK_ROWS * dim).zip(train.y.par_chunks(CHUNK_ROWS)))
                .zip(gamma_t.par_chunks(CHUNK_ROWS))
                .for_each(|((g, (x, y)), w)| forward_chunk(x, y, w, theta, g))
        };
        let want_dev = dev_loss.is_some();
        let ((), dev_value) = rayon::join(train_pass, || want_dev.then(|| dev.mean_loss_grad(theta, set_partials, true, None)));
        reduce_partials(&self.partials, dim, chunks, theta_next);
        let eta = R::of(eta);
        for (next, &th) in theta_next.iter_mut().zip(theta) {
            *next = th - eta * *next;
        }
        if let (Some((curve, i)), Some(value)) = (dev_loss, dev_value) {
            host::set_curve_entry(curve, i, value)?;
        }
        Ok(())
    }

    fn backward_step(
        &mut self,
        theta: &Vec<R>,
        gamma: &Vec<R>,
        t: usize,
        lambda_next: &Vec<R>,
        eta: f64,
        dev_weight: f64,
        grad_gamma: &mut Vec<R>,
        lambda: &mut Vec<R>,
    ) -> Result<()> {
        let (dim, n) = (self.dim, self.num_train());
        host::check_len("theta", theta, dim)?;
        host::check_len("lambda_next", lambda_next, dim)?;
        host::check_len("lambda", lambda, dim)?;
        let gamma_t = host::policy_row(gamma, t, n)?;
        host::check_len("grad_gamma", grad_gamma, gamma.len())?;
        let grad_t = &mut grad_gamma[t * n..(t + 1) * n];
        let chunks = n.div_ceil(CHUNK_ROWS);
        let neg_eta = R::of(-eta);
        let (train, dev, set_partials, g_dev) = (&self.train, &self.dev, &mut self.set_partials, &mut self.dev_grad);
        // Per row: z = x·θ and u = x·λ_next in one pass; ∂J/∂γ = −η (σ(z) − y) u; the HVP term
        // γ σ'(z) u x accumulates into the chunk's partial. ∇L_dev(θ) runs beside it.
        let train_pass = || {
            self.partials[..chunks * dim]
                .par_chunks_mut(dim)
                .zip(train.x.par_chunks(CHUNK_ROWS * dim).zip(train.y.par_chunks(CHUNK_ROWS)))
                .zip(gamma_t.par_chunks(CHUNK_ROWS).zip(grad_t.par_chunks_mut(CHUNK_ROWS)))
                .for_each(|((h, (x, y)), (w, out))| backward_chunk(x, y, w, theta, lambda_next, neg_eta, out, h))
        };
        rayon::join(train_pass, || dev.mean_loss_grad(theta, set_partials, false, Some(g_dev)));
        // λ holds H λ_next for now.
        reduce_partials(&self.partials, dim, chunks, lambda);
        let (w, e) = (R::of(dev_weight), R::of(eta));
        for ((l, &gd), &ln) in lambda.iter_mut().zip(&self.dev_grad).zip(lambda_next) {
            *l = w * gd + ln - e * *l;
        }
        Ok(())
    }

    fn loss(&mut self, set: Set, theta: &Vec<R>) -> Result<f64> {
        host::check_len("theta", theta, self.dim)?;
        let (m, partials) = self.set(set);
        Ok(m.mean_loss_grad(theta, partials, true, None))
    }
    fn loss_grad(&mut self, set: Set, theta: &Vec<R>, grad: &mut Vec<R>) -> Result<f64> {
        host::check_len("theta", theta, self.dim)?;
        host::check_len("grad", grad, self.dim)?;
        let (m, partials) = self.set(set);
        Ok(m.mean_loss_grad(theta, partials, true, Some(grad)))
    }
    fn train_losses(&mut self, theta: &Vec<R>, out: &mut Vec<R>) -> Result<()> {
        let dim = self.dim;
        host::check_len("theta", theta, dim)?;
        host::check_len("losses", out, self.num_train())?;
        let m = &self.train;
        out.par_chunks_mut(CHUNK_ROWS)
            .zip(m.x.par_chunks(CHUNK_ROWS * dim).zip(m.y.par_chunks(CHUNK_ROWS)))
            .for_each(|(o, (x, y))| losses_chunk(x, y, theta, o));
        Ok(())
    }
    fn train_dots(&mut self, theta: &Vec<R>, v: &Vec<R>, out: &mut Vec<R>) -> Result<()> {
        let dim = self.dim;
        host::check_len("theta", theta, dim)?;
        host::check_len("v", v, dim)?;
        host::check_len("dots", out, self.num_train())?;
        let m = &self.train;
        out.par_chunks_mut(CHUNK_ROWS)
            .zip(m.x.par_chunks(CHUNK_ROWS * dim).zip(m.y.par_chunks(CHUNK_ROWS)))
            .for_each(|(o, (x, y))| dots_chunk(x, y, theta, v, o));
        Ok(())
    }
}
