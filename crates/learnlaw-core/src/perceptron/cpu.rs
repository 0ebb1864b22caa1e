//! The perceptron on the CPU: the fast backend (f32, X stored as f32 or bf16) and the f64 one the
//! finite-difference tests use.
//!
//! Each step is one pass over the training matrix, split into fixed chunks of rows, with the
//! desired set's chunks beside them; every thread of the engine's own [`Crew`] takes the same
//! contiguous share of the chunks at every step, so a core keeps reading the same rows and they
//! stay in its cache, and a step starts with a signal, not a thread pool's fork–join. Rows go in
//! blocks of 32: their dots (4 rows at a time, so the FMA chains overlap; the backward step's two
//! per row in the same pass), their sigmoids in one vectorised loop, then their axpys while the
//! block is in L1, with 64 or 128 columns of the accumulator in registers across the block's rows.
//! The row kernels are written once over 16 SIMD lanes ([`crate::lanes`]: AVX-512, AVX2 or portable
//! arrays, picked at run time, the same bits on each), with X's rows zero-padded to whole pairs
//! of lane sets (32 columns; bf16 stores each pair interleaved, to widen without a shuffle). In
//! an unroll the desired set is not in the steps at all: its losses and gradients at every θ_t
//! come from two GEMMs (`DevBatch`); a step called on its own takes them in its pass, the
//! backward step's ∇L_dev without the losses. Chunk partial sums are reduced in a
//! fixed order, so results do not depend on the thread count, the CPU or scheduling (a resumed
//! f32 search reproduces an uninterrupted one bit for bit).
use std::sync::Mutex;

use super::{bce_with_logits, sigmoid};
use crate::crew::Crew;
use crate::data::{Examples, PerceptronData};
use crate::engine::{Engine, Set, StepFlops};
use crate::host;
use crate::lanes::{halves_mut, Isa, LaneKernel, Lanes, Stored, PAIR};
use crate::linalg::{gemm, Mat, MatMut};
use crate::perceptron;
use crate::{Error, Real, Result};

/// Rows per parallel chunk: large enough to amortise a pass's setup, small enough to share a
/// step out evenly over 2–16 cores.
const CHUNK_ROWS: usize = 256;
/// Rows per block inside a chunk: their dots first, then their sigmoids in one vectorised loop,
/// then their axpys while the rows are still in L1 (32 rows of D = 128 f32 are 16 KiB, half of a
/// 32 KiB L1; 32 rows measured 3–14% faster per row than 16 on the EPYC of BENCHMARKS.md).
const BLOCK: usize = 32;

/// The length rows of X and the D-vectors are zero-padded to: whole pairs of lane sets.
fn row_stride(dim: usize) -> usize {
    dim.next_multiple_of(PAIR)
}

/// A data set in the engine's storage, each row of X zero-padded to `stride` ([`row_stride`]) and
/// stored in pairs of lane sets ([`Stored::store2`]).
struct Matrix<R, X> {
    x: Vec<X>,
    y: Vec<R>,
    stride: usize,
}

impl<R: Real, X: Stored<R>> Matrix<R, X> {
    fn new(what: &str, set: &Examples, dim: usize) -> Result<Self> {
        let stride = row_stride(dim);
        let mut x = Vec::with_capacity(set.len() * stride);
        let mut padded = vec![0.0; stride];
        for (r, row) in set.x.chunks_exact(dim).enumerate() {
            if let Some((c, &v)) = row.iter().enumerate().find(|(_, &v)| !X::from_f32(v).is_finite()) {
                let problem = format!("x[{r}, {c}] = {v} does not fit the {} storage", X::name());
                return Err(Error::bad_input(what, problem));
            }
            padded[..dim].copy_from_slice(row);
            x.extend(padded.as_chunks::<PAIR>().0.iter().flat_map(X::store2));
        }
        Ok(Matrix { x, y: set.y.iter().map(|&v| R::of(v as f64)).collect(), stride })
    }
    fn rows(&self) -> usize {
        self.y.len()
    }
    fn chunks(&self) -> usize {
        self.rows().div_ceil(CHUNK_ROWS)
    }
    /// The chunks' rows of X and their labels.
    fn row_chunks(&self) -> impl Iterator<Item = (&[X], &[R])> {
        self.x.chunks(CHUNK_ROWS * self.stride).zip(self.y.chunks(CHUNK_ROWS))
    }

    /// The loss-and-gradient passes over the chunks: each returns its Σ of losses (with
    /// `want_loss`; else 0) and, with `want_grad`, sums its rows' (σ(z_n) − y_n) x_n into its
    /// stride-vector of `partials`. θ is padded to the stride.
    fn loss_grad_passes<'a>(
        &'a self,
        theta: &'a [R],
        partials: &'a mut [R],
        want_loss: bool,
        want_grad: bool,
    ) -> impl Iterator<Item = Pass<'a, R, X>> {
        partials[..self.chunks() * self.stride].chunks_mut(self.stride).zip(self.row_chunks()).map(move |(g, (x, y))| Pass::LossGrad {
            x,
            y,
            theta,
            want_loss,
            g: want_grad.then_some(g),
        })
    }

    /// The mean loss from the passes' sums and, with `grad`, the mean gradient from their
    /// partials (both in chunk order).
    fn mean(&self, chunk_losses: &[f64], partials: &[R], grad: Option<&mut [R]>) -> f64 {
        let n = self.rows() as f64;
        if let Some(grad) = grad {
            reduce_partials(partials, self.stride, self.chunks(), grad);
            let inv = R::of(1.0 / n);
            grad.iter_mut().for_each(|g| *g = *g * inv);
        }
        chunk_losses.iter().sum::<f64>() / n
    }

    /// Mean loss at θ (with `want_loss`; else 0) and, when `grad` is given, its gradient
    /// (1/n) Σ (σ(z_n) − y_n) x_n, with `partials` as the chunks' scratch.
    fn mean_loss_grad(
        &self,
        sweeps: &mut Sweeps,
        isa: Isa,
        theta: &[R],
        partials: &mut [R],
        want_loss: bool,
        grad: Option<&mut [R]>,
    ) -> f64 {
        let losses = sweeps.run(isa, self.loss_grad_passes(theta, partials, want_loss, grad.is_some()).collect());
        self.mean(&losses, partials, grad)
    }
}

/// The engine's threads and the direction of their next sweep.
struct Sweeps {
    crew: Crew,
    /// Whether the next call runs each thread's share last chunk first.
    backwards: bool,
}

impl Sweeps {
    /// Runs the passes on the crew, each thread taking a contiguous share of about equal cost,
    /// the same at every call, so a core reads the same rows of X step after step; their results
    /// in order. Each call sweeps its share the other way round from the last: where the share
    /// is a little larger than the core's cache, the rows the last sweep read last are still
    /// there for this sweep to read first, where one direction would find none of them (each
    /// row evicted just before its turn). Each chunk has its own partial sums, reduced in chunk
    /// order, so the direction does not change a bit.
    fn run<R: Real, X: Stored<R>>(&mut self, isa: Isa, passes: Vec<Pass<'_, R, X>>) -> Vec<f64> {
        let costs: Vec<usize> = passes.iter().map(Pass::cost).collect();
        let mut passes = passes.into_iter();
        let mut start = 0;
        let shares: Vec<Mutex<Vec<Pass<'_, R, X>>>> = balanced_ends(&costs, self.crew.threads())
            .into_iter()
            .map(|end| {
                let share = passes.by_ref().take(end - start).collect();
                start = end;
                Mutex::new(share)
            })
            .collect();
        let results: Vec<Mutex<Vec<f64>>> = shares.iter().map(|_| Mutex::new(Vec::new())).collect();
        let backwards = self.backwards;
        self.backwards = !backwards;
        self.crew.run(&|i| {
            let share = std::mem::take(&mut *shares[i].lock().unwrap_or_else(|p| p.into_inner()));
            let mut out = vec![0.0; share.len()];
            let passes = share.into_iter().zip(&mut out);
            let run = |(pass, o): (Pass<'_, R, X>, &mut f64)| *o = R::on_lanes(isa, pass);
            if backwards {
                passes.rev().for_each(run);
            } else {
                passes.for_each(run);
            }
            *results[i].lock().unwrap_or_else(|p| p.into_inner()) = out;
        });
        results.into_iter().flat_map(|r| r.into_inner().unwrap_or_else(|p| p.into_inner())).collect()
    }
}

/// Where to cut a sequence of `costs` into `parts` contiguous runs of about equal sum: each run's
/// end (the last is `costs.len()`). A cut goes at the prefix sum nearest its share of the total,
/// the earlier one on a tie (the first run's thread also does the serial work after a step).
fn balanced_ends(costs: &[usize], parts: usize) -> Vec<usize> {
    let total: usize = costs.iter().sum();
    let prefix: Vec<usize> = std::iter::once(0)
        .chain(costs.iter().scan(0, |run, &c| {
            *run += c;
            Some(*run)
        }))
        .collect();
    let mut ends: Vec<usize> = (1..parts)
        .map(|i| {
            let target = total * i / parts;
            let k = prefix.partition_point(|&p| p < target);
            if k > 0 && target - prefix[k - 1] <= prefix[k] - target {
                k - 1
            } else {
                k
            }
        })
        .collect();
    ends.push(costs.len());
    ends
}

/// Σ over chunks of `partials` (rows of `stride`), in chunk order, into `out` (its first columns).
fn reduce_partials<R: Real>(partials: &[R], stride: usize, chunks: usize, out: &mut [R]) {
    out.fill(R::zero());
    for p in partials[..chunks * stride].chunks_exact(stride) {
        for (o, &v) in out.iter_mut().zip(p) {
            *o = *o + v;
        }
    }
}

/// `v` zero-padded to `stride` in `buf` (or `v` itself when it has that length already).
fn padded<'a, R: Real>(v: &'a [R], buf: &'a mut Vec<R>, stride: usize) -> &'a [R] {
    if v.len() == stride {
        return v;
    }
    buf.clear();
    buf.extend_from_slice(v);
    buf.resize(stride, R::zero());
    buf
}

/// The most the kept θ_t and ∇L_dev(θ_t) of [`DevBatch`] may take (the paper's size: 2 MB).
const DEV_BATCH_BUDGET: usize = 1 << 28;

/// The desired set's losses and gradients at all the θ_t of a forward pass, taken after it by two
/// GEMMs ([`Engine::dev_losses`]) rather than by a pass over the desired set in every step: a GEMM
/// reuses each row of X_dev for many θ, a step's pass reads it for one. The backward step at
/// θ_t takes its ∇L_dev from here when its θ equals the θ_t it was taken at.
struct DevBatch<R> {
    /// X_dev in `R` (bf16 widened exactly), [K, D].
    x: Vec<R>,
    /// The θ_t the gradients were taken at, [T, D].
    thetas: Vec<R>,
    /// ∇L_dev(θ_t), [T, D].
    grads: Vec<R>,
}

impl<R: Real> DevBatch<R> {
    /// ∇L_dev at θ, if it was taken at step t's θ and that is θ.
    fn grad_at(&self, t: usize, theta: &[R]) -> Option<&[R]> {
        let d = theta.len();
        let at = self.thetas.get(t * d..(t + 1) * d)?;
        (at == theta).then(|| &self.grads[t * d..(t + 1) * d])
    }

    /// For the θs of `thetas` ([m, D]): their mean losses into `losses` and their gradients into
    /// `grads` ([m, D]), with `z` ([m, K]) as scratch. Z = Θ X_devᵀ, then each entry's loss and
    /// residual σ(z) − y ([`Residuals`]), then ∇ = R X_dev / K.
    fn losses_and_grads(isa: Isa, x: &[R], y: &[R], thetas: &[R], z: &mut [R], grads: &mut [R], losses: &mut [f64]) {
        let (k, m) = (y.len(), losses.len());
        let d = x.len() / k.max(1);
        gemm(R::one(), Mat::new(thetas, m, d), Mat::new(x, k, d).t(), R::zero(), MatMut::new(z, m, k));
        R::on_lanes(isa, Residuals { z, y, losses });
        gemm(R::of(1.0 / k as f64), Mat::new(z, m, k), Mat::new(x, k, d), R::zero(), MatMut::new(grads, m, d));
    }
}

/// Each row of `z` (the desired set's logits at one θ): its mean loss into `losses`, then the row
/// replaced by its residuals σ(z) − y, in blocks of [`BLOCK`] entries the lanes' instructions
/// vectorise.
struct Residuals<'a, R> {
    z: &'a mut [R],
    y: &'a [R],
    losses: &'a mut [f64],
}

impl<R: Real> LaneKernel<R> for Residuals<'_, R> {
    type Out = ();

    #[inline(always)]
    fn run<L: Lanes<R>>(self) {
        let k = self.y.len().max(1);
        for (row, loss) in self.z.chunks_exact_mut(k).zip(self.losses.iter_mut()) {
            let mut sum = 0.0;
            for (zb, yb) in row.chunks_mut(BLOCK).zip(self.y.chunks(BLOCK)) {
                let mut z = [R::zero(); BLOCK];
                z[..yb.len()].copy_from_slice(zb);
                add_block_losses(&z, yb, &mut sum);
                zb.copy_from_slice(&block_residuals(&z, yb)[..yb.len()]);
            }
            *loss = sum / self.y.len() as f64;
        }
    }
}

/// The perceptron on the CPU in precision `R`, with X stored as `X` (`R` itself, or bf16 for f32).
pub struct CpuPerceptron<R: Real, X: Stored<R> = R> {
    dim: usize,
    isa: Isa,
    train: Matrix<R, X>,
    dev: Matrix<R, X>,
    test: Matrix<R, X>,
    /// Per-chunk partial sums of a stride-vector over the training rows, reduced in chunk order.
    partials: Vec<R>,
    /// The same for the desired or test set's pass, which runs beside the training pass.
    set_partials: Vec<R>,
    /// Scratch for ∇L_dev in the backward step.
    dev_grad: Vec<R>,
    /// The desired set's losses and gradients at the θ_t of the last unroll's forward pass.
    dev_batch: DevBatch<R>,
    /// θ and λ zero-padded to the stride (used where D is not a multiple of 32).
    pad_theta: Vec<R>,
    pad_lambda: Vec<R>,
    /// The threads every pass runs on, each with the same share of the chunks at every step.
    sweeps: Sweeps,
}

impl<R: Real, X: Stored<R>> CpuPerceptron<R, X> {
    /// The engine on the widest SIMD lanes this CPU has.
    pub fn new(data: &PerceptronData) -> Result<Self> {
        data.validate()?;
        let dim = data.dim;
        let stride = row_stride(dim);
        let chunks = [&data.train, &data.dev, &data.test].map(|s| s.len().div_ceil(CHUNK_ROWS));
        Ok(CpuPerceptron {
            dim,
            isa: Isa::widest(),
            train: Matrix::new("training inputs", &data.train, dim)?,
            dev: Matrix::new("desired-set inputs", &data.dev, dim)?,
            test: Matrix::new("test inputs", &data.test, dim)?,
            partials: vec![R::zero(); chunks[0] * stride],
            set_partials: vec![R::zero(); chunks[1].max(chunks[2]) * stride],
            dev_grad: vec![R::zero(); dim],
            dev_batch: DevBatch {
                x: data.dev.x.iter().map(|&v| X::from_f32(v).to_real()).collect(),
                thetas: Vec::new(),
                grads: Vec::new(),
            },
            pad_theta: Vec::new(),
            pad_lambda: Vec::new(),
            sweeps: Sweeps { crew: Crew::new(rayon::current_num_threads())?, backwards: false },
        })
    }

    /// The same engine on the lanes of `isa` (same results, other speed; f64 runs portable lanes
    /// whatever `isa` says). Errors where this CPU lacks the instructions.
    pub fn with_isa(mut self, isa: Isa) -> Result<Self> {
        if !isa.available() {
            return Err(Error::bad_input("CPU lanes", format!("this CPU has no {} instructions", isa.name())));
        }
        self.isa = isa;
        Ok(self)
    }

    /// The SIMD lanes the row kernels run on.
    pub fn isa(&self) -> Isa {
        R::lanes(self.isa)
    }

    /// z = Xθ over the training rows: one pass over X through the steps' own dot kernel and
    /// chunking, nothing else — the floor the benches measure each step against.
    pub fn train_gemv(&mut self, theta: &[R], z: &mut [R]) -> Result<()> {
        host::check_len("theta", theta, self.dim)?;
        host::check_len("z", z, self.train.rows())?;
        let (isa, s, m) = (self.isa, self.train.stride, &self.train);
        let theta = padded(theta, &mut self.pad_theta, s);
        let passes = z.chunks_mut(CHUNK_ROWS).zip(m.row_chunks()).map(|(out, (x, _))| Pass::Gemv { x, theta, out });
        self.sweeps.run(isa, passes.collect());
        Ok(())
    }

    /// Mean loss on an evaluation set at θ and, with `grad`, its gradient.
    fn set_loss_grad(&mut self, set: Set, theta: &[R], grad: Option<&mut [R]>) -> Result<f64> {
        host::check_len("theta", theta, self.dim)?;
        if let Some(grad) = grad.as_deref() {
            host::check_len("grad", grad, self.dim)?;
        }
        let theta = padded(theta, &mut self.pad_theta, self.train.stride);
        let m = match set {
            Set::Dev => &self.dev,
            Set::Test => &self.test,
        };
        Ok(m.mean_loss_grad(&mut self.sweeps, self.isa, theta, &mut self.set_partials, true, grad))
    }
}

/// Rows whose dots run together: their independent accumulator chains keep the FMA units busy
/// where one row's chain would wait on each add's latency.
const DOT_ROWS: usize = 4;

/// out\[r\] = x_r·a for the rows of `xb` (rows of stride `a.len()`), `DOT_ROWS` at a time. Each
/// row's accumulator takes its lane sets in order.
#[inline(always)]
fn block_dots<R: Real, X: Stored<R>, L: Lanes<R>>(xb: &[X], a: &[R], out: &mut [R]) {
    let s = a.len();
    let a32 = a.as_chunks::<PAIR>().0;
    let mut groups = xb.chunks_exact(DOT_ROWS * s);
    let mut k = 0;
    for group in &mut groups {
        let [x0, x1, x2, x3]: [&[[X; PAIR]]; DOT_ROWS] = std::array::from_fn(|r| group[r * s..(r + 1) * s].as_chunks().0);
        let mut acc = [L::zero(); DOT_ROWS];
        for (ap, (x01, x23)) in a32.iter().zip(x0.iter().zip(x1).zip(x2.iter().zip(x3))) {
            let [a0, a1] = R::load2::<L>(ap);
            for (r, x) in [x01.0, x01.1, x23.0, x23.1].into_iter().enumerate() {
                let [x0, x1] = X::load2::<L>(x);
                acc[r] = L::mul_add(x1, a1, L::mul_add(x0, a0, acc[r]));
            }
        }
        out[k..k + DOT_ROWS].copy_from_slice(&L::sum4(acc));
        k += DOT_ROWS;
    }
    for row in groups.remainder().chunks_exact(s) {
        let mut acc = L::zero();
        for (x, ap) in row.as_chunks().0.iter().zip(a32) {
            let ([x0, x1], [a0, a1]) = (X::load2::<L>(x), R::load2::<L>(ap));
            acc = L::mul_add(x1, a1, L::mul_add(x0, a0, acc));
        }
        out[k] = L::sum(acc);
        k += 1;
    }
}

/// (x_r·a, x_r·b) for the rows of `xb` in one pass over them, `DOT_ROWS` at a time; each row's
/// dots in the same order as `block_dots`.
#[inline(always)]
fn block_dots2<R: Real, X: Stored<R>, L: Lanes<R>>(xb: &[X], a: &[R], b: &[R], out_a: &mut [R], out_b: &mut [R]) {
    let s = a.len();
    let (a32, b32) = (a.as_chunks::<PAIR>().0, b[..s].as_chunks::<PAIR>().0);
    let mut groups = xb.chunks_exact(DOT_ROWS * s);
    let mut k = 0;
    for group in &mut groups {
        let [x0, x1, x2, x3]: [&[[X; PAIR]]; DOT_ROWS] = std::array::from_fn(|r| group[r * s..(r + 1) * s].as_chunks().0);
        let (mut p, mut q) = ([L::zero(); DOT_ROWS], [L::zero(); DOT_ROWS]);
        for ((ap, bp), (x01, x23)) in a32.iter().zip(b32).zip(x0.iter().zip(x1).zip(x2.iter().zip(x3))) {
            let ([a0, a1], [b0, b1]) = (R::load2::<L>(ap), R::load2::<L>(bp));
            for (r, x) in [x01.0, x01.1, x23.0, x23.1].into_iter().enumerate() {
                let [x0, x1] = X::load2::<L>(x);
                p[r] = L::mul_add(x1, a1, L::mul_add(x0, a0, p[r]));
                q[r] = L::mul_add(x1, b1, L::mul_add(x0, b0, q[r]));
            }
        }
        out_a[k..k + DOT_ROWS].copy_from_slice(&L::sum4(p));
        out_b[k..k + DOT_ROWS].copy_from_slice(&L::sum4(q));
        k += DOT_ROWS;
    }
    for row in groups.remainder().chunks_exact(s) {
        let (mut p, mut q) = (L::zero(), L::zero());
        for ((x, ap), bp) in row.as_chunks().0.iter().zip(a32).zip(b32) {
            let ([x0, x1], [a0, a1], [b0, b1]) = (X::load2::<L>(x), R::load2::<L>(ap), R::load2::<L>(bp));
            p = L::mul_add(x1, a1, L::mul_add(x0, a0, p));
            q = L::mul_add(x1, b1, L::mul_add(x0, b0, q));
        }
        (out_a[k], out_b[k]) = (L::sum(p), L::sum(q));
        k += 1;
    }
}

/// g ← g + Σ_r c_r x_r over the rows of `xb` (in row order, so it sums exactly like one axpy per
/// row; a row with c_r = 0 adds exact zeros: no branch per row, which cost more than the FMAs it
/// saved). As many lane sets of g as the registers hold ([`Lanes::ACC_SETS`]) stay in registers
/// across the rows, instead of a load and a store of all of g per row.
#[inline(always)]
fn block_axpy<R: Real, X: Stored<R>, L: Lanes<R>>(xb: &[X], c: &[R], g: &mut [R]) {
    if L::ACC_SETS >= 8 {
        block_axpy_by::<R, X, L, 4>(xb, c, g)
    } else {
        block_axpy_by::<R, X, L, 2>(xb, c, g)
    }
}

/// `block_axpy`, K pairs of lane sets of g at a time.
#[inline(always)]
fn block_axpy_by<R: Real, X: Stored<R>, L: Lanes<R>, const K: usize>(xb: &[X], c: &[R], g: &mut [R]) {
    let s = g.len();
    let mut groups = g.as_chunks_mut::<PAIR>().0.chunks_exact_mut(K);
    let mut first = 0;
    for gs in &mut groups {
        axpy_pairs::<R, X, L, K>(xb, c, s, first, gs.try_into().expect("K pairs"));
        first += K;
    }
    for gs in groups.into_remainder() {
        axpy_pairs::<R, X, L, 1>(xb, c, s, first, std::array::from_mut(gs));
        first += 1;
    }
}

/// `block_axpy` on K pairs of lane sets of g, from pair `first` of each row.
#[inline(always)]
fn axpy_pairs<R: Real, X: Stored<R>, L: Lanes<R>, const K: usize>(xb: &[X], c: &[R], s: usize, first: usize, g: &mut [[R; PAIR]; K]) {
    let mut acc = [[L::zero(); 2]; K];
    for i in 0..K {
        acc[i] = R::load2::<L>(&g[i]);
    }
    for (row, &cr) in xb.chunks_exact(s).zip(c) {
        let (cv, x) = (L::splat(cr), &row.as_chunks::<PAIR>().0[first..first + K]);
        for i in 0..K {
            let [x0, x1] = X::load2::<L>(&x[i]);
            acc[i] = [L::mul_add(cv, x0, acc[i][0]), L::mul_add(cv, x1, acc[i][1])];
        }
    }
    for i in 0..K {
        let [lo, hi] = halves_mut(&mut g[i]);
        L::store(acc[i][0], lo);
        L::store(acc[i][1], hi);
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

/// Adds a block's losses l(z_n, y_n) to `loss` in row order: one vectorised loop over the whole
/// block (rows past `y`'s end included, then ignored).
#[inline(always)]
fn add_block_losses<R: Real>(z: &[R; BLOCK], y: &[R], loss: &mut f64) {
    let mut yv = [R::zero(); BLOCK];
    yv[..y.len()].copy_from_slice(y);
    let mut l = [R::zero(); BLOCK];
    for i in 0..BLOCK {
        l[i] = bce_with_logits(z[i], yv[i]);
    }
    for &ln in &l[..y.len()] {
        *loss += ln.f64();
    }
}

/// A block's residuals σ(z_n) − y_n (0 past `y`'s end).
#[inline(always)]
fn block_residuals<R: Real>(z: &[R; BLOCK], y: &[R]) -> [R; BLOCK] {
    let p = sigmoids(z);
    let mut c = [R::zero(); BLOCK];
    for ((cn, &pn), &yn) in c.iter_mut().zip(&p).zip(y) {
        *cn = pn - yn;
    }
    c
}

/// One chunk's pass, what a step's parallel loop runs, on the engine's lanes (`Real::on_lanes`
/// compiles it into a function with those instructions enabled, so everything in it must inline:
/// plain loops, fixed trip counts or iterators where a bounds check would stop the vectoriser).
/// θ and the other D-vectors are padded to the stride.
enum Pass<'a, R, X> {
    /// Σ of the chunk's losses (with `want_loss`; else 0) and, with `g`, its rows' (σ(z_n) − y_n)
    /// x_n summed into `g`.
    LossGrad { x: &'a [X], y: &'a [R], theta: &'a [R], want_loss: bool, g: Option<&'a mut [R]> },
    /// g ← Σ_n w_n (σ(x_n·θ) − y_n) x_n over the chunk's rows (the forward step's gradient).
    Forward { x: &'a [X], y: &'a [R], w: &'a [R], theta: &'a [R], g: &'a mut [R] },
    /// Per row: z = x·θ and u = x·λ_next in one pass; ∂J/∂γ_n = −η (σ(z) − y) u into `out`; the
    /// HVP term w σ'(z) u x summed into `h`.
    Backward { x: &'a [X], y: &'a [R], w: &'a [R], theta: &'a [R], lambda_next: &'a [R], neg_eta: R, out: &'a mut [R], h: &'a mut [R] },
    /// The chunk's z_n = x_n·θ alone.
    Gemv { x: &'a [X], theta: &'a [R], out: &'a mut [R] },
    /// The chunk's per-example losses.
    Losses { x: &'a [X], y: &'a [R], theta: &'a [R], out: &'a mut [R] },
    /// The chunk's per-example dots ∇l_n·v = (σ(x_n·θ) − y_n)(x_n·v).
    Dots { x: &'a [X], y: &'a [R], theta: &'a [R], v: &'a [R], out: &'a mut [R] },
}

impl<R: Real, X: Stored<R>> Pass<'_, R, X> {
    /// The pass's time in arbitrary units, for sharing a step's passes out evenly: 5 per row
    /// for a pass that only reads its rows (dots), 9 for one that also adds them into a sum (an
    /// axpy from L1 after the dots), the ratio of the steps to their one-pass floor measured on
    /// the EPYC of BENCHMARKS.md.
    fn cost(&self) -> usize {
        let (rows, axpy) = match self {
            Pass::LossGrad { y, g, .. } => (y.len(), g.is_some()),
            Pass::Forward { y, .. } | Pass::Backward { y, .. } => (y.len(), true),
            Pass::Gemv { out, .. } | Pass::Losses { out, .. } | Pass::Dots { out, .. } => (out.len(), false),
        };
        rows * if axpy { 9 } else { 5 }
    }
}

impl<R: Real, X: Stored<R>> LaneKernel<R> for Pass<'_, R, X> {
    /// The chunk's Σ of losses for `LossGrad`, else 0.
    type Out = f64;

    #[inline(always)]
    fn run<L: Lanes<R>>(self) -> f64 {
        match self {
            Pass::LossGrad { x, y, theta, want_loss, mut g } => {
                let s = theta.len();
                if let Some(g) = g.as_deref_mut() {
                    g.fill(R::zero());
                }
                let mut loss = 0.0;
                for (xb, yb) in x.chunks(BLOCK * s).zip(y.chunks(BLOCK)) {
                    let mut z = [R::zero(); BLOCK];
                    block_dots::<R, X, L>(xb, theta, &mut z[..yb.len()]);
                    if want_loss {
                        add_block_losses(&z, yb, &mut loss);
                    }
                    if let Some(g) = g.as_deref_mut() {
                        block_axpy::<R, X, L>(xb, &block_residuals(&z, yb), g);
                    }
                }
                loss
            }
            Pass::Forward { x, y, w, theta, g } => {
                let s = theta.len();
                g.fill(R::zero());
                for ((xb, yb), wb) in x.chunks(BLOCK * s).zip(y.chunks(BLOCK)).zip(w.chunks(BLOCK)) {
                    if wb.iter().all(|&wn| wn == R::zero()) {
                        continue; // a block the policy drops (sparse γ): no pass over its rows
                    }
                    let mut z = [R::zero(); BLOCK];
                    block_dots::<R, X, L>(xb, theta, &mut z[..yb.len()]);
                    let p = sigmoids(&z);
                    let mut c = [R::zero(); BLOCK];
                    for (((cn, &pn), &yn), &wn) in c.iter_mut().zip(&p).zip(yb).zip(wb) {
                        *cn = wn * (pn - yn);
                    }
                    block_axpy::<R, X, L>(xb, &c, g);
                }
                0.0
            }
            Pass::Backward { x, y, w, theta, lambda_next, neg_eta, out, h } => {
                let s = theta.len();
                h.fill(R::zero());
                let blocks = x.chunks(BLOCK * s).zip(y.chunks(BLOCK)).zip(w.chunks(BLOCK).zip(out.chunks_mut(BLOCK)));
                for ((xb, yb), (wb, ob)) in blocks {
                    let rows = yb.len();
                    let (mut z, mut u) = ([R::zero(); BLOCK], [R::zero(); BLOCK]);
                    block_dots2::<R, X, L>(xb, theta, lambda_next, &mut z[..rows], &mut u[..rows]);
                    let p = sigmoids(&z);
                    let mut c = [R::zero(); BLOCK];
                    for ((((cn, o), &pn), &un), (&yn, &wn)) in c.iter_mut().zip(ob).zip(&p).zip(&u).zip(yb.iter().zip(wb)) {
                        *o = neg_eta * (pn - yn) * un;
                        *cn = wn * pn * (R::one() - pn) * un;
                    }
                    block_axpy::<R, X, L>(xb, &c, h);
                }
                0.0
            }
            Pass::Gemv { x, theta, out } => {
                let s = theta.len();
                for (ob, xb) in out.chunks_mut(BLOCK).zip(x.chunks(BLOCK * s)) {
                    block_dots::<R, X, L>(xb, theta, ob);
                }
                0.0
            }
            Pass::Losses { x, y, theta, out } => {
                let s = theta.len();
                for ((ob, xb), yb) in out.chunks_mut(BLOCK).zip(x.chunks(BLOCK * s)).zip(y.chunks(BLOCK)) {
                    block_dots::<R, X, L>(xb, theta, ob);
                    ob.iter_mut().zip(yb).for_each(|(on, &yn)| *on = bce_with_logits(*on, yn));
                }
                0.0
            }
            Pass::Dots { x, y, theta, v, out } => {
                let s = theta.len();
                for ((ob, xb), yb) in out.chunks_mut(BLOCK).zip(x.chunks(BLOCK * s)).zip(y.chunks(BLOCK)) {
                    let mut z = [R::zero(); BLOCK];
                    block_dots2::<R, X, L>(xb, theta, v, &mut z[..yb.len()], ob);
                    for ((on, &pn), &yn) in ob.iter_mut().zip(&sigmoids(&z)).zip(yb) {
                        *on = (pn - yn) * *on;
                    }
                }
                0.0
            }
        }
    }
}

impl<R: Real, X: Stored<R>> Engine for CpuPerceptron<R, X> {
    type Real = R;
    type Vec = Vec<R>;

    fn name(&self) -> String {
        format!("cpu-{}", X::name())
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
        let (dim, n, isa, s) = (self.dim, self.num_train(), self.isa, self.train.stride);
        host::check_len("theta", theta, dim)?;
        host::check_len("theta_next", theta_next, dim)?;
        let gamma_t = host::policy_row(gamma, t, n)?;
        let chunks = n.div_ceil(CHUNK_ROWS);
        let theta_p = padded(theta, &mut self.pad_theta, s);
        let (train, dev, set_partials) = (&self.train, &self.dev, &mut self.set_partials);
        // L_dev(θ)'s chunks, then the training pass's, shared out over the threads.
        let want_dev = dev_loss.is_some();
        let dev_chunks = if want_dev { dev.chunks() } else { 0 };
        let train_passes = self.partials[..chunks * s]
            .chunks_mut(s)
            .zip(train.row_chunks())
            .zip(gamma_t.chunks(CHUNK_ROWS))
            .map(|((g, (x, y)), w)| Pass::Forward { x, y, w, theta: theta_p, g });
        let passes = dev.loss_grad_passes(theta_p, set_partials, true, false).take(dev_chunks).chain(train_passes).collect();
        let sums = self.sweeps.run(isa, passes);
        let dev_value = want_dev.then(|| dev.mean(&sums[..dev_chunks], &[], None));
        reduce_partials(&self.partials, s, chunks, theta_next);
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
        let (dim, n, isa, s) = (self.dim, self.num_train(), self.isa, self.train.stride);
        host::check_len("theta", theta, dim)?;
        host::check_len("lambda_next", lambda_next, dim)?;
        host::check_len("lambda", lambda, dim)?;
        let gamma_t = host::policy_row(gamma, t, n)?;
        host::check_len("grad_gamma", grad_gamma, gamma.len())?;
        let grad_t = &mut grad_gamma[t * n..(t + 1) * n];
        let chunks = n.div_ceil(CHUNK_ROWS);
        let neg_eta = R::of(-eta);
        let theta_p = padded(theta, &mut self.pad_theta, s);
        let lambda_p = padded(lambda_next, &mut self.pad_lambda, s);
        let (train, dev, set_partials) = (&self.train, &self.dev, &mut self.set_partials);
        let batched = self.dev_batch.grad_at(t, theta);
        if let Some(g) = batched {
            self.dev_grad.copy_from_slice(g);
        }
        // Per row: z = x·θ and u = x·λ_next in one pass; ∂J/∂γ = −η (σ(z) − y) u; the HVP term
        // γ σ'(z) u x accumulates into the chunk's partial. ∇L_dev(θ)'s chunks (unless the
        // forward pass's batch took it) go first, all of them shared out over the threads.
        let dev_chunks = if batched.is_some() { 0 } else { dev.chunks() };
        let train_passes = self.partials[..chunks * s]
            .chunks_mut(s)
            .zip(train.row_chunks())
            .zip(gamma_t.chunks(CHUNK_ROWS).zip(grad_t.chunks_mut(CHUNK_ROWS)))
            .map(|((h, (x, y)), (w, out))| Pass::Backward { x, y, w, theta: theta_p, lambda_next: lambda_p, neg_eta, out, h });
        let passes = dev.loss_grad_passes(theta_p, set_partials, false, true).take(dev_chunks).chain(train_passes).collect();
        self.sweeps.run(isa, passes);
        if dev_chunks > 0 {
            dev.mean(&[], set_partials, Some(&mut self.dev_grad));
        }
        // λ holds H λ_next for now.
        reduce_partials(&self.partials, s, chunks, lambda);
        let (w, e) = (R::of(dev_weight), R::of(eta));
        for ((l, &gd), &ln) in lambda.iter_mut().zip(&self.dev_grad).zip(lambda_next) {
            *l = w * gd + ln - e * *l;
        }
        Ok(())
    }

    /// Where the kept θ_t and gradients (`DevBatch`) fit in `DEV_BATCH_BUDGET`.
    fn batches_dev_losses(&self, steps: usize) -> bool {
        2 * steps * self.dim * std::mem::size_of::<R>() <= DEV_BATCH_BUDGET
    }
    /// Two GEMMs over the desired set for all of `thetas` (`DevBatch`), each thread taking a
    /// contiguous share of the θs; the gradients are kept (as steps `first`…) for the backward
    /// steps.
    fn dev_losses(&mut self, thetas: &[Vec<R>], curve: &mut Vec<R>, first: usize) -> Result<()> {
        let (d, k, m) = (self.dim, self.dev.rows(), thetas.len());
        let end = first + m;
        if curve.len() < end {
            return Err(Error::shape("dev-loss curve", format!("at least {end} entries"), curve.len()));
        }
        let batch = &mut self.dev_batch;
        if batch.thetas.len() < end * d {
            // NaN never equals a θ: a row not yet taken is never taken for one.
            batch.thetas.resize(end * d, R::nan());
            batch.grads.resize(end * d, R::zero());
        }
        for (row, theta) in batch.thetas[first * d..end * d].chunks_exact_mut(d).zip(thetas) {
            host::check_len("theta", theta, d)?;
            row.copy_from_slice(theta);
        }
        let mut z = vec![R::zero(); m * k];
        let mut losses = vec![0.0; m];
        let per = m.div_ceil(self.sweeps.crew.threads()).max(1);
        let (isa, x, y) = (self.isa, &batch.x, &self.dev.y);
        let shares: Vec<_> = batch.thetas[first * d..end * d]
            .chunks(per * d)
            .zip(z.chunks_mut(per * k))
            .zip(batch.grads[first * d..end * d].chunks_mut(per * d).zip(losses.chunks_mut(per)))
            .map(Mutex::new)
            .collect();
        self.sweeps.crew.run(&|i| {
            if let Some(share) = shares.get(i) {
                let ((thetas, z), (grads, losses)) = &mut *share.lock().unwrap_or_else(|p| p.into_inner());
                DevBatch::losses_and_grads(isa, x, y, thetas, z, grads, losses);
            }
        });
        for (i, &l) in losses.iter().enumerate() {
            host::set_curve_entry(curve, first + i, l)?;
        }
        Ok(())
    }

    fn loss(&mut self, set: Set, theta: &Vec<R>) -> Result<f64> {
        self.set_loss_grad(set, theta, None)
    }
    fn loss_grad(&mut self, set: Set, theta: &Vec<R>, grad: &mut Vec<R>) -> Result<f64> {
        self.set_loss_grad(set, theta, Some(grad))
    }
    fn train_losses(&mut self, theta: &Vec<R>, out: &mut Vec<R>) -> Result<()> {
        host::check_len("theta", theta, self.dim)?;
        host::check_len("losses", out, self.num_train())?;
        let (isa, s, m) = (self.isa, self.train.stride, &self.train);
        let theta = padded(theta, &mut self.pad_theta, s);
        let passes = out.chunks_mut(CHUNK_ROWS).zip(m.row_chunks()).map(|(out, (x, y))| Pass::Losses { x, y, theta, out });
        self.sweeps.run(isa, passes.collect());
        Ok(())
    }
    fn train_dots(&mut self, theta: &Vec<R>, v: &Vec<R>, out: &mut Vec<R>) -> Result<()> {
        host::check_len("theta", theta, self.dim)?;
        host::check_len("v", v, self.dim)?;
        host::check_len("dots", out, self.num_train())?;
        let (isa, s, m) = (self.isa, self.train.stride, &self.train);
        let (theta, v) = (padded(theta, &mut self.pad_theta, s), padded(v, &mut self.pad_lambda, s));
        let passes = out.chunks_mut(CHUNK_ROWS).zip(m.row_chunks()).map(|(out, (x, y))| Pass::Dots { x, y, theta, v, out });
        self.sweeps.run(isa, passes.collect());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::PerceptronRecipe;
    use crate::unroll::{Unroll, Workspace};

    /// J, the dev curve and ∂J/∂γ of a 4-step unroll (θ checkpointed every 2 steps; at step 1
    /// the policy drops blocks 1 and 2, two whole blocks the forward step skips), as bits.
    fn unroll_bits<X: Stored<f32>>(mut e: CpuPerceptron<f32, X>) -> Vec<u64> {
        let (p, n, steps) = (e.num_params(), e.num_train(), 4);
        let theta0 = e.upload(&crate::data::init_theta(p, 3)).unwrap();
        let dropped = |i: usize| i.is_multiple_of(7) || (i / n == 1 && (BLOCK..3 * BLOCK).contains(&(i % n)));
        let gamma: Vec<f32> = (0..steps * n).map(|i| if dropped(i) { 0.0 } else { (1 + i % 5) as f32 / (3 * n) as f32 }).collect();
        let gamma = e.upload(&gamma).unwrap();
        let mut ws = Workspace::new(&mut e, Unroll { steps, eta: 0.3 }, 2).unwrap();
        let mut grad = e.zeros(steps * n).unwrap();
        let fwd = ws.gradient(&mut e, &theta0, &gamma, &mut grad).unwrap();
        let losses = e.zeros(n).and_then(|mut out| e.train_losses(&theta0, &mut out).map(|()| out)).unwrap();
        let dots = e.zeros(n).and_then(|mut out| e.train_dots(&theta0, ws.lambda0(), &mut out).map(|()| out)).unwrap();
        let floats = grad.iter().chain(&losses).chain(&dots).chain(ws.lambda0()).map(|&v| v.to_bits() as u64);
        fwd.dev.iter().chain([&fwd.j]).map(|v| v.to_bits()).chain(floats).collect()
    }

    /// D = 133 (not a multiple of 16: padded rows), 300 training rows (a partial chunk and block).
    fn data() -> PerceptronData {
        PerceptronData::generate(&PerceptronRecipe { dim: 133, n_train: 300, n_dev: 37, n_test: 5, ..PerceptronRecipe::default() }).unwrap()
    }

    #[test]
    fn every_isa_computes_the_same_bits() {
        let data = data();
        let want = unroll_bits(CpuPerceptron::<f32>::new(&data).unwrap().with_isa(Isa::Portable).unwrap());
        for isa in Isa::ALL.into_iter().filter(|isa| isa.available()) {
            assert!(want == unroll_bits(CpuPerceptron::<f32>::new(&data).unwrap().with_isa(isa).unwrap()), "{isa:?}");
        }
    }

    /// Each chunk has its own partial sums, reduced in chunk order: neither the number of
    /// threads nor the direction of a sweep changes a bit.
    #[test]
    fn every_thread_count_computes_the_same_bits() {
        let data =
            PerceptronData::generate(&PerceptronRecipe { dim: 40, n_train: 1500, n_dev: 600, n_test: 5, ..PerceptronRecipe::default() })
                .unwrap();
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let e = pool.install(|| CpuPerceptron::<f32>::new(&data)).unwrap();
            assert_eq!(e.sweeps.crew.threads(), threads);
            unroll_bits(e)
        };
        let want = on(1);
        for threads in [2, 3, 7] {
            assert!(want == on(threads), "{threads} threads");
        }
    }

    #[test]
    fn shares_are_contiguous_and_of_about_equal_cost() {
        assert_eq!(balanced_ends(&[5, 5, 5, 5], 2), [2, 4]);
        // The desired set's cheaper chunks first: the first share takes more of them.
        assert_eq!(balanced_ends(&[5, 5, 9, 9, 9, 9], 2), [3, 6]);
        assert_eq!(balanced_ends(&[9, 9, 9], 2), [1, 3]);
        assert_eq!(balanced_ends(&[9], 3), [0, 1, 1]);
        assert_eq!(balanced_ends(&[], 2), [0, 0]);
        assert_eq!(balanced_ends(&[1, 2, 3], 1), [3]);
    }

    /// bf16 storage is f32 arithmetic on X rounded to bf16: bit for bit, on every ISA.
    #[test]
    fn bf16_storage_is_f32_on_rounded_inputs() {
        let data = data();
        let mut rounded = data.clone();
        for set in [&mut rounded.train, &mut rounded.dev, &mut rounded.test] {
            set.x.iter_mut().for_each(|v| *v = crate::Storage::Bf16.round(*v));
        }
        let want = unroll_bits(CpuPerceptron::<f32>::new(&rounded).unwrap());
        for isa in Isa::ALL.into_iter().filter(|isa| isa.available()) {
            let e = CpuPerceptron::<f32, half::bf16>::new(&data).unwrap().with_isa(isa).unwrap();
            assert_eq!(e.name(), "cpu-bf16");
            assert!(want == unroll_bits(e), "{isa:?}");
        }
        let mut huge = data.clone();
        huge.train.x[5] = f32::MAX;
        assert!(matches!(CpuPerceptron::<f32, half::bf16>::new(&huge), Err(Error::BadInput { .. })));
    }
}
