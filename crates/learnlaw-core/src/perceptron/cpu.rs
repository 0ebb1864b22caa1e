//! The perceptron on the CPU: the fast backend (f32) and the f64 one the finite-difference tests use.
//!
//! Each step is one pass over the training matrix, split into fixed chunks of rows that rayon
//! spreads over the cores. A row is loaded once and used for all its dots and its axpy while it is
//! in L1. Chunk partial sums are reduced in a fixed order, so results do not depend on the thread
//! count or on scheduling (a resumed f32 search reproduces an uninterrupted one bit for bit).
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
}

pub struct CpuPerceptron<R: Real> {
    dim: usize,
    train: Matrix<R>,
    dev: Matrix<R>,
    test: Matrix<R>,
    /// Per-chunk partial sums of a D-vector, reduced in chunk order.
    partials: Vec<R>,
    /// Scratch for ∇L_dev in the backward step.
    dev_grad: Vec<R>,
}

impl<R: Real> CpuPerceptron<R> {
    pub fn new(data: &PerceptronData) -> Result<Self> {
        data.validate()?;
        let dim = data.dim;
        let chunks = [&data.train, &data.dev, &data.test].map(|s| s.len().div_ceil(CHUNK_ROWS));
        Ok(CpuPerceptron {
            dim,
            train: Matrix::new(&data.train),
            dev: Matrix::new(&data.dev),
            test: Matrix::new(&data.test),
            partials: vec![R::zero(); chunks.iter().max().copied().unwrap_or(0) * dim],
            dev_grad: vec![R::zero(); dim],
        })
    }

    /// Σ over chunks of `partials`, in chunk order, into `out`.
    fn reduce_partials(partials: &[R], dim: usize, chunks: usize, out: &mut [R]) {
        out.fill(R::zero());
        for p in partials[..chunks * dim].chunks_exact(dim) {
            for (o, &v) in out.iter_mut().zip(p) {
                *o = *o + v;
            }
        }
    }

    /// Mean loss of `m` at θ and, when `grad` is given, its gradient (1/n) Σ (σ(z_n) − y_n) x_n.
    fn mean_loss_grad(&mut self, which: Set, theta: &[R], grad: Option<&mut [R]>) -> f64 {
        let dim = self.dim;
        let m = match which {
            Set::Dev => &self.dev,
            Set::Test => &self.test,
        };
        let chunks = m.rows().div_ceil(CHUNK_ROWS);
        let want_grad = grad.is_some();
        let losses: Vec<f64> = self.partials[..chunks * dim]
            .par_chunks_mut(dim)
            .zip(m.x.par_chunks(CHUNK_ROWS * dim).zip(m.y.par_chunks(CHUNK_ROWS)))
            .map(|(g, (x, y))| {
                g.fill(R::zero());
                let mut loss = 0.0;
                for (xn, &yn) in x.chunks_exact(dim).zip(y) {
                    let z = dot(xn, theta);
                    loss += bce_with_logits(z, yn).f64();
                    if want_grad {
                        axpy(sigmoid(z) - yn, xn, g);
                    }
                }
                loss
            })
            .collect();
        let n = m.rows() as f64;
        if let Some(grad) = grad {
            Self::reduce_partials(&self.partials, dim, chunks, grad);
            let inv = R::of(1.0 / n);
            grad.iter_mut().for_each(|g| *g = *g * inv);
        }
        losses.iter().sum::<f64>() / n
    }
}

/// Both a·b and a·c in one pass over a.
#[inline(always)]
fn dot2<R: Real>(a: &[R], b: &[R], c: &[R]) -> (R, R) {
    let (a8, at) = a.as_chunks::<8>();
    let (b8, bt) = b[..a.len()].as_chunks::<8>();
    let (c8, ct) = c[..a.len()].as_chunks::<8>();
    let (mut p, mut q) = ([R::zero(); 8], [R::zero(); 8]);
    for ((x, y), w) in a8.iter().zip(b8).zip(c8) {
        for i in 0..8 {
            p[i] = p[i] + x[i] * y[i];
            q[i] = q[i] + x[i] * w[i];
        }
    }
    let (mut pt, mut qt) = (R::zero(), R::zero());
    for ((&x, &y), &w) in at.iter().zip(bt).zip(ct) {
        pt = pt + x * y;
        qt = qt + x * w;
    }
    (p.iter().copied().sum::<R>() + pt, q.iter().copied().sum::<R>() + qt)
}

/// y ← y + a·x.
#[inline(always)]
fn axpy<R: Real>(a: R, x: &[R], y: &mut [R]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi = *yi + a * xi;
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
        let train = &self.train;
        self.partials[..chunks * dim]
            .par_chunks_mut(dim)
            .zip(train.x.par_chunks(CHUNK_ROWS * dim).zip(train.y.par_chunks(CHUNK_ROWS)))
            .zip(gamma_t.par_chunks(CHUNK_ROWS))
            .for_each(|((g, (x, y)), w)| {
                g.fill(R::zero());
                for ((xb, yb), wb) in x.chunks(BLOCK * dim).zip(y.chunks(BLOCK)).zip(w.chunks(BLOCK)) {
                    let mut p = [R::zero(); BLOCK];
                    for ((pn, xn), &wn) in p.iter_mut().zip(xb.chunks_exact(dim)).zip(wb) {
                        if wn != R::zero() {
                            *pn = dot(xn, theta);
                        }
                    }
                    p = p.map(sigmoid);
                    for (((&pn, xn), &yn), &wn) in p.iter().zip(xb.chunks_exact(dim)).zip(yb).zip(wb) {
                        if wn != R::zero() {
                            axpy(wn * (pn - yn), xn, g);
                        }
                    }
                }
            });
        Self::reduce_partials(&self.partials, dim, chunks, theta_next);
        let eta = R::of(eta);
        for (next, &th) in theta_next.iter_mut().zip(theta) {
            *next = th - eta * *next;
        }
        if let Some((curve, i)) = dev_loss {
            host::set_curve_entry(curve, i, self.mean_loss_grad(Set::Dev, theta, None))?;
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
        let train = &self.train;
        // Per row: z = x·θ and u = x·λ_next in one pass; ∂J/∂γ = −η (σ(z) − y) u; the HVP term
        // γ σ'(z) u x accumulates into the chunk's partial.
        self.partials[..chunks * dim]
            .par_chunks_mut(dim)
            .zip(train.x.par_chunks(CHUNK_ROWS * dim).zip(train.y.par_chunks(CHUNK_ROWS)))
            .zip(gamma_t.par_chunks(CHUNK_ROWS).zip(grad_t.par_chunks_mut(CHUNK_ROWS)))
            .for_each(|((h, (x, y)), (w, out))| {
                h.fill(R::zero());
                let blocks = x.chunks(BLOCK * dim).zip(y.chunks(BLOCK)).zip(w.chunks(BLOCK).zip(out.chunks_mut(BLOCK)));
                for ((xb, yb), (wb, ob)) in blocks {
                    let (mut p, mut u) = ([R::zero(); BLOCK], [R::zero(); BLOCK]);
                    for ((pn, un), xn) in p.iter_mut().zip(&mut u).zip(xb.chunks_exact(dim)) {
                        (*pn, *un) = dot2(xn, theta, lambda_next);
                    }
                    p = p.map(sigmoid);
                    for ((((&pn, &un), xn), (&yn, &wn)), o) in p.iter().zip(&u).zip(xb.chunks_exact(dim)).zip(yb.iter().zip(wb)).zip(ob) {
                        *o = neg_eta * (pn - yn) * un;
                        if wn != R::zero() {
                            axpy(wn * pn * (R::one() - pn) * un, xn, h);
                        }
                    }
                }
            });
        // λ holds H λ_next for now; `mean_loss_grad` reuses `partials`, so reduce first.
        Self::reduce_partials(&self.partials, dim, chunks, lambda);
        let mut g_dev = std::mem::take(&mut self.dev_grad);
        self.mean_loss_grad(Set::Dev, theta, Some(&mut g_dev));
        let (w, e) = (R::of(dev_weight), R::of(eta));
        for ((l, &gd), &ln) in lambda.iter_mut().zip(&g_dev).zip(lambda_next) {
            *l = w * gd + ln - e * *l;
        }
        self.dev_grad = g_dev;
        Ok(())
    }

    fn loss(&mut self, set: Set, theta: &Vec<R>) -> Result<f64> {
        host::check_len("theta", theta, self.dim)?;
        Ok(self.mean_loss_grad(set, theta, None))
    }
    fn loss_grad(&mut self, set: Set, theta: &Vec<R>, grad: &mut Vec<R>) -> Result<f64> {
        host::check_len("theta", theta, self.dim)?;
        host::check_len("grad", grad, self.dim)?;
        Ok(self.mean_loss_grad(set, theta, Some(grad)))
    }
    fn train_losses(&mut self, theta: &Vec<R>, out: &mut Vec<R>) -> Result<()> {
        let dim = self.dim;
        host::check_len("theta", theta, dim)?;
        host::check_len("losses", out, self.num_train())?;
        let m = &self.train;
        out.par_chunks_mut(CHUNK_ROWS).zip(m.x.par_chunks(CHUNK_ROWS * dim).zip(m.y.par_chunks(CHUNK_ROWS))).for_each(|(o, (x, y))| {
            for ((on, xn), &yn) in o.iter_mut().zip(x.chunks_exact(dim)).zip(y) {
                *on = bce_with_logits(dot(xn, theta), yn);
            }
        });
        Ok(())
    }
    fn train_dots(&mut self, theta: &Vec<R>, v: &Vec<R>, out: &mut Vec<R>) -> Result<()> {
        let dim = self.dim;
        host::check_len("theta", theta, dim)?;
        host::check_len("v", v, dim)?;
        host::check_len("dots", out, self.num_train())?;
        let m = &self.train;
        out.par_chunks_mut(CHUNK_ROWS).zip(m.x.par_chunks(CHUNK_ROWS * dim).zip(m.y.par_chunks(CHUNK_ROWS))).for_each(|(o, (x, y))| {
            for ((on, xn), &yn) in o.iter_mut().zip(x.chunks_exact(dim)).zip(y) {
                let (z, u) = dot2(xn, theta, v);
                *on = (sigmoid(z) - yn) * u;
            }
        });
        Ok(())
    }
}
