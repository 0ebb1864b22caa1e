//! The perceptron on the CPU: the fast backend (f32, X stored as f32 or bf16) and the f64 one the
//! finite-difference tests use.
//!
//! Each step is one pass over the training matrix, split into fixed chunks of rows, with the
//! desired set's smaller chunks spread among them; every thread of the engine's own [`Crew`]
//! takes the same contiguous share of the chunks at every step, so a core keeps reading the same
//! rows and they stay in its cache, and a step starts with a signal, not a thread pool's
//! fork–join. Rows go in blocks of 32: their dots (4 rows at a time, so the FMA chains overlap),
//! their sigmoids in one vectorised loop, then their axpys while the block is in L1, with 64 or
//! 128 columns of the accumulator in registers across the block's rows. The forward step saves
//! its sigmoids σ(x·θ_t), so the backward step at θ_t takes one dot per row (x·λ), not two
//! (`Saved`).
//! The row kernels are written once over 16 SIMD lanes ([`crate::lanes`]: AVX-512, AVX2 or portable
//! arrays, picked at run time, the same bits on each), with X's rows zero-padded to whole pairs
//! of lane sets (32 columns; bf16 stores each pair interleaved, to widen without a shuffle). The
//! backward step's ∇L_dev skips the desired set's losses. Chunk partial sums are reduced in a
//! fixed order, so results do not depend on the thread count, the CPU or scheduling (a resumed
//! f32 search reproduces an uninterrupted one bit for bit).
use std::sync::Mutex;

use super::{bce_with_logits, sigmoid};
use crate::crew::Crew;
use crate::data::{Examples, PerceptronData};
use crate::engine::{Engine, Set, StepFlops};
use crate::host;
use crate::lanes::{halves_mut, Isa, LaneKernel, Lanes, Stored, PAIR};
use crate::perceptron;
use crate::{Error, Real, Result};

/// Training rows per parallel chunk: large enough to amortise a pass's setup, small enough to
/// share a step out evenly over 2–16 cores.
const CHUNK_ROWS: usize = 256;
/// Desired- and test-set rows per chunk: a step's desired-set chunks are spread among its
/// training chunks ([`spread`]), and smaller ones let each thread's share take its part of them
/// (with 256, two threads took 2 + 7 and 9 of 18 chunks: one waited a tenth of each forward step).
const SET_CHUNK_ROWS: usize = 64;
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
    /// Rows per parallel chunk.
    chunk_rows: usize,
}

impl<R: Real, X: Stored<R>> Matrix<R, X> {
    fn new(what: &str, set: &Examples, dim: usize, chunk_rows: usize) -> Result<Self> {
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
        Ok(Matrix { x, y: set.y.iter().map(|&v| R::of(v as f64)).collect(), stride, chunk_rows })
    }
    fn rows(&self) -> usize {
        self.y.len()
    }
    fn chunks(&self) -> usize {
        self.rows().div_ceil(self.chunk_rows)
    }
    /// The chunks' rows of X and their labels.
    fn row_chunks(&self) -> impl Iterator<Item = (&[X], &[R])> {
        self.x.chunks(self.chunk_rows * self.stride).zip(self.y.chunks(self.chunk_rows))
    }

    /// The loss-and-gradient passes over the chunks: each returns its Σ of losses (with
    /// `want_loss`; else 0) and, with `want_grad`, sums its rows' (σ(z_n) − y_n) x_n into its
    /// stride-vector of `partials`. θ is padded to the stride. With `save`, the rows' σ(z_n) go
    /// there too; with `saved`, they come from there (computed at θ), and no dots are taken.
    fn loss_grad_passes<'a>(
        &'a self,
        theta: &'a [R],
        partials: &'a mut [R],
        want_loss: bool,
        want_grad: bool,
        save: Option<&'a mut [R]>,
        saved: Option<&'a [R]>,
    ) -> impl Iterator<Item = Pass<'a, R, X>> {
        let rows = self.chunk_rows;
        let partials = partials[..self.chunks() * self.stride].chunks_mut(self.stride);
        let sigmoids = chunks_or_none_mut(save, rows).zip(chunks_or_none(saved, rows));
        partials.zip(self.row_chunks()).zip(sigmoids).map(move |((g, (x, y)), (save, saved))| Pass::LossGrad {
            x,
            y,
            theta,
            want_loss,
            g: want_grad.then_some(g),
            save,
            saved,
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
        let losses = sweeps.run(isa, self.loss_grad_passes(theta, partials, want_loss, grad.is_some(), None, None).collect());
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

/// The desired set's passes `set` spread evenly among the training passes `train`: the i-th of m
/// goes after the j-th of n when (2j + 1)·m ≤ (2i + 1)·n (where its place in its own set falls
/// among the training set's), so each contiguous share [`Sweeps::run`] hands a thread holds about
/// the same part of both. The sequence, and where each pass of `set` went, in its order.
fn spread<T>(set: Vec<T>, train: Vec<T>) -> (Vec<T>, Vec<usize>) {
    let (m, n) = (set.len(), train.len());
    let mut out = Vec::with_capacity(m + n);
    let mut at = Vec::with_capacity(m);
    let mut train = train.into_iter();
    let mut placed = 0;
    for (i, pass) in set.into_iter().enumerate() {
        while placed < n && (2 * placed + 1) * m <= (2 * i + 1) * n {
            out.extend(train.next());
            placed += 1;
        }
        at.push(out.len());
        out.push(pass);
    }
    out.extend(train);
    (out, at)
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

/// `v`'s chunks of `rows`, then `None` for ever: zipped with a set's passes, each pass gets its
/// chunk, or none when there is no `v`.
fn chunks_or_none_mut<R>(v: Option<&mut [R]>, rows: usize) -> impl Iterator<Item = Option<&mut [R]>> {
    v.into_iter().flat_map(move |v| v.chunks_mut(rows)).map(Some).chain(std::iter::repeat_with(|| None))
}

/// `chunks_or_none_mut` for a shared slice.
fn chunks_or_none<R>(v: Option<&[R]>, rows: usize) -> impl Iterator<Item = Option<&[R]>> {
    v.into_iter().flat_map(move |v| v.chunks(rows)).map(Some).chain(std::iter::repeat(None))
}

/// The most bytes [`Saved`] holds by default.
const SAVED_BUDGET: usize = 1 << 30;

/// The forward pass's σ(x_n·θ_t) at every step t, for the training and the desired set, so that
/// the backward step at the same θ_t takes one dot per training row (x·λ) where it would take
/// two, and none in the desired set's gradient: the dots with θ_t are the forward step's, the
/// same bits. Saved by the forward steps that evaluate L_dev (a checkpointed backward pass's
/// recomputed steps do not, and need not: their θ_t are the same bits). Each step's rows are
/// keyed by θ_t's bits; a backward step at any other θ takes its dots. Kept only where an
/// unroll's rows fit `budget` and half the free memory.
struct Saved<R> {
    /// Training and desired-set rows.
    n: usize,
    n_dev: usize,
    /// The most bytes the buffers may take.
    budget: usize,
    /// The unroll's steps the buffers are sized for (0: none yet, or too large).
    steps: usize,
    /// The θ_t (padded) each step's rows were computed at.
    keys: Vec<R>,
    /// Whether step t's rows hold σ at its key.
    ok: Vec<bool>,
    train: Vec<R>,
    dev: Vec<R>,
}

impl<R: Real> Saved<R> {
    fn new(n: usize, n_dev: usize, budget: usize) -> Self {
        Saved { n, n_dev, budget, steps: 0, keys: Vec::new(), ok: Vec::new(), train: Vec::new(), dev: Vec::new() }
    }

    /// Step t's rows (training, desired set) for a forward step at θ of an unroll of `steps` to
    /// write, keyed by θ from now on; None where they do not fit.
    fn for_forward(&mut self, t: usize, steps: usize, theta: &[R]) -> Option<(&mut [R], &mut [R])> {
        let (n, n_dev, s) = (self.n, self.n_dev, theta.len());
        if steps != self.steps {
            *self = Saved::new(n, n_dev, self.budget);
            let bytes = steps.saturating_mul(n + n_dev + s).saturating_mul(std::mem::size_of::<R>());
            if bytes > self.budget || crate::memory::available().is_some_and(|free| bytes as u64 > free / 2) {
                return None;
            }
            self.steps = steps;
            self.keys = vec![R::zero(); steps * s];
            self.ok = vec![false; steps];
            self.train = vec![R::zero(); steps * n];
            self.dev = vec![R::zero(); steps * n_dev];
        }
        if t >= self.steps {
            return None;
        }
        self.keys[t * s..(t + 1) * s].copy_from_slice(theta);
        self.ok[t] = true;
        Some((&mut self.train[t * n..(t + 1) * n], &mut self.dev[t * n_dev..(t + 1) * n_dev]))
    }

    /// Step t's saved rows where they were computed at θ: (training, desired set).
    fn for_backward(&self, t: usize, theta: &[R]) -> Option<(&[R], &[R])> {
        let (n, n_dev, s) = (self.n, self.n_dev, theta.len());
        let found = t < self.steps && self.ok[t] && same_bits(&self.keys[t * s..(t + 1) * s], theta);
        found.then(|| (&self.train[t * n..(t + 1) * n], &self.dev[t * n_dev..(t + 1) * n_dev]))
    }
}

/// Whether `a` and `b` hold the same bits (−0 ≠ +0; a NaN is never the same).
fn same_bits<R: Real>(a: &[R], b: &[R]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.f64().to_bits() == y.f64().to_bits() && !x.f64().is_nan())
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
    /// θ and λ zero-padded to the stride (used where D is not a multiple of 32).
    pad_theta: Vec<R>,
    pad_lambda: Vec<R>,
    /// The threads every pass runs on, each with the same share of the chunks at every step.
    sweeps: Sweeps,
    /// The forward steps' sigmoids, for the backward steps at the same θ.
    saved: Saved<R>,
}

impl<R: Real, X: Stored<R>> CpuPerceptron<R, X> {
    /// The engine on the widest SIMD lanes this CPU has.
    pub fn new(data: &PerceptronData) -> Result<Self> {
        data.validate()?;
        let dim = data.dim;
        let stride = row_stride(dim);
        let train = Matrix::new("training inputs", &data.train, dim, CHUNK_ROWS)?;
        let dev = Matrix::new("desired-set inputs", &data.dev, dim, SET_CHUNK_ROWS)?;
        let test = Matrix::new("test inputs", &data.test, dim, SET_CHUNK_ROWS)?;
        Ok(CpuPerceptron {
            dim,
            isa: Isa::widest(),
            partials: vec![R::zero(); train.chunks() * stride],
            set_partials: vec![R::zero(); dev.chunks().max(test.chunks()) * stride],
            train,
            dev,
            test,
            dev_grad: vec![R::zero(); dim],
            pad_theta: Vec::new(),
            pad_lambda: Vec::new(),
            sweeps: Sweeps { crew: Crew::new(rayon::current_num_threads())?, backwards: false },
            saved: Saved::new(data.train.len(), data.dev.len(), SAVED_BUDGET),
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

/// The forward step's pass over a chunk: g ← Σ_n w_n (σ(x_n·θ) − y_n) x_n, and with `SAVE` the
/// rows' σ into `save` (a compile-time switch: without it the loop is the plain forward pass).
#[inline(always)]
fn forward_pass<R: Real, X: Stored<R>, L: Lanes<R>, const SAVE: bool>(x: &[X], y: &[R], w: &[R], theta: &[R], g: &mut [R], save: &mut [R]) {
    let s = theta.len();
    g.fill(R::zero());
    let mut save = save.chunks_mut(BLOCK);
    for ((xb, yb), wb) in x.chunks(BLOCK * s).zip(y.chunks(BLOCK)).zip(w.chunks(BLOCK)) {
        // A block the policy drops (sparse γ) adds nothing: no pass over its rows unless its
        // sigmoids are to be saved.
        let dropped = wb.iter().all(|&wn| wn == R::zero());
        if dropped && !SAVE {
            continue;
        }
        let mut z = [R::zero(); BLOCK];
        block_dots::<R, X, L>(xb, theta, &mut z[..yb.len()]);
        let p = sigmoids(&z);
        if SAVE {
            if let Some(out) = save.next() {
                match out.as_mut_array::<BLOCK>() {
                    Some(whole) => *whole = p,
                    None => out.copy_from_slice(&p[..out.len()]),
                }
            }
        }
        if dropped {
            continue;
        }
        let mut c = [R::zero(); BLOCK];
        for (((cn, &pn), &yn), &wn) in c.iter_mut().zip(&p).zip(yb).zip(wb) {
            *cn = wn * (pn - yn);
        }
        block_axpy::<R, X, L>(xb, &c, g);
    }
}

/// One chunk's pass, what a step's parallel loop runs, on the engine's lanes (`Real::on_lanes`
/// compiles it into a function with those instructions enabled, so everything in it must inline:
/// plain loops, fixed trip counts or iterators where a bounds check would stop the vectoriser).
/// θ and the other D-vectors are padded to the stride. A `save` receives the rows' σ(x_n·θ) for
/// a later step at the same θ; a `saved` holds them from an earlier one, and the pass takes no
/// dots with θ.
enum Pass<'a, R, X> {
    /// Σ of the chunk's losses (with `want_loss`, which needs the dots; else 0) and, with `g`, its
    /// rows' (σ(z_n) − y_n) x_n summed into `g`.
    LossGrad {
        x: &'a [X],
        y: &'a [R],
        theta: &'a [R],
        want_loss: bool,
        g: Option<&'a mut [R]>,
        save: Option<&'a mut [R]>,
        saved: Option<&'a [R]>,
    },
    /// g ← Σ_n w_n (σ(x_n·θ) − y_n) x_n over the chunk's rows (the forward step's gradient).
    Forward { x: &'a [X], y: &'a [R], w: &'a [R], theta: &'a [R], g: &'a mut [R], save: Option<&'a mut [R]> },
    /// Per row: z = x·θ and u = x·λ_next in one pass (u alone with `saved`); ∂J/∂γ_n =
    /// −η (σ(z) − y) u into `out`; the HVP term w σ'(z) u x summed into `h`.
    Backward {
        x: &'a [X],
        y: &'a [R],
        w: &'a [R],
        theta: &'a [R],
        saved: Option<&'a [R]>,
        lambda_next: &'a [R],
        neg_eta: R,
        out: &'a mut [R],
        h: &'a mut [R],
    },
    /// The chunk's z_n = x_n·θ alone.
    Gemv { x: &'a [X], theta: &'a [R], out: &'a mut [R] },
    /// The chunk's per-example losses.
    Losses { x: &'a [X], y: &'a [R], theta: &'a [R], out: &'a mut [R] },
    /// The chunk's per-example dots ∇l_n·v = (σ(x_n·θ) − y_n)(x_n·v).
    Dots { x: &'a [X], y: &'a [R], theta: &'a [R], v: &'a [R], out: &'a mut [R] },
}

impl<R: Real, X: Stored<R>> Pass<'_, R, X> {
    /// The pass's time in arbitrary units, for sharing a step's passes out evenly, per row: 5
    /// for one dot per row (the one-pass floor), 6 with a loss, 9 with an axpy from L1 after the
    /// dots, 13 for the backward step's two dots and axpy; the ratios of the steps to the floor
    /// and to each other measured on the EPYC of BENCHMARKS.md.
    fn cost(&self) -> usize {
        let (rows, per_row) = match self {
            Pass::LossGrad { y, g: Some(_), saved: Some(_), .. } => (y.len(), 4),
            Pass::LossGrad { y, g: Some(_), .. } | Pass::Forward { y, .. } => (y.len(), 9),
            Pass::LossGrad { y, g: None, .. } => (y.len(), 6),
            Pass::Backward { y, saved: None, .. } => (y.len(), 13),
            Pass::Backward { y, saved: Some(_), .. } => (y.len(), 9),
            Pass::Gemv { out, .. } => (out.len(), 5),
            Pass::Losses { out, .. } => (out.len(), 6),
            Pass::Dots { out, .. } => (out.len(), 8),
        };
        rows * per_row
    }
}

impl<R: Real, X: Stored<R>> LaneKernel<R> for Pass<'_, R, X> {
    /// The chunk's Σ of losses for `LossGrad`, else 0.
    type Out = f64;

    #[inline(always)]
    fn run<L: Lanes<R>>(self) -> f64 {
        match self {
            Pass::LossGrad { x, y, theta, want_loss, mut g, mut save, saved } => {
                let s = theta.len();
                if let Some(g) = g.as_deref_mut() {
                    g.fill(R::zero());
                }
                let mut loss = 0.0;
                for (b, (xb, yb)) in x.chunks(BLOCK * s).zip(y.chunks(BLOCK)).enumerate() {
                    let rows = b * BLOCK..b * BLOCK + yb.len();
                    if let (Some(saved), Some(g)) = (saved, g.as_deref_mut()) {
                        let mut c = [R::zero(); BLOCK];
                        for ((cn, &pn), &yn) in c.iter_mut().zip(&saved[rows]).zip(yb) {
                            *cn = pn - yn;
                        }
                        block_axpy::<R, X, L>(xb, &c, g);
                        continue;
                    }
                    let mut z = [R::zero(); BLOCK];
                    block_dots::<R, X, L>(xb, theta, &mut z[..yb.len()]);
                    if want_loss {
                        // The block's losses in one vectorised loop (rows past its end included),
                        // then summed in row order.
                        let mut yv = [R::zero(); BLOCK];
                        yv[..yb.len()].copy_from_slice(yb);
                        let mut l = [R::zero(); BLOCK];
                        for i in 0..BLOCK {
                            l[i] = bce_with_logits(z[i], yv[i]);
                        }
                        for &ln in &l[..yb.len()] {
                            loss += ln.f64();
                        }
                    }
                    if g.is_none() && save.is_none() {
                        continue;
                    }
                    let p = sigmoids(&z);
                    if let Some(save) = save.as_deref_mut() {
                        save[rows].copy_from_slice(&p[..yb.len()]);
                    }
                    if let Some(g) = g.as_deref_mut() {
                        let mut c = [R::zero(); BLOCK];
                        for ((cn, &pn), &yn) in c.iter_mut().zip(&p).zip(yb) {
                            *cn = pn - yn;
                        }
                        block_axpy::<R, X, L>(xb, &c, g);
                    }
                }
                loss
            }
            Pass::Forward { x, y, w, theta, g, save } => {
                match save {
                    Some(save) => forward_pass::<R, X, L, true>(x, y, w, theta, g, save),
                    None => forward_pass::<R, X, L, false>(x, y, w, theta, g, &mut []),
                }
                0.0
            }
            Pass::Backward { x, y, w, theta, saved, lambda_next, neg_eta, out, h } => {
                let s = theta.len();
                h.fill(R::zero());
                let blocks = x.chunks(BLOCK * s).zip(y.chunks(BLOCK)).zip(w.chunks(BLOCK).zip(out.chunks_mut(BLOCK)));
                for (b, ((xb, yb), (wb, ob))) in blocks.enumerate() {
                    let rows = yb.len();
                    let (mut p, mut u) = ([R::zero(); BLOCK], [R::zero(); BLOCK]);
                    if let Some(saved) = saved {
                        block_dots::<R, X, L>(xb, lambda_next, &mut u[..rows]);
                        p[..rows].copy_from_slice(&saved[b * BLOCK..b * BLOCK + rows]);
                    } else {
                        let mut z = [R::zero(); BLOCK];
                        block_dots2::<R, X, L>(xb, theta, lambda_next, &mut z[..rows], &mut u[..rows]);
                        p = sigmoids(&z);
                    }
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
        // L_dev(θ)'s chunks spread among the training pass's, shared out over the threads; with
        // L_dev, both save their sigmoids for the backward step at θ.
        let want_dev = dev_loss.is_some();
        let dev_chunks = if want_dev { dev.chunks() } else { 0 };
        let saving = if want_dev { self.saved.for_forward(t, gamma.len() / n.max(1), theta_p) } else { None };
        let (save_train, save_dev) = saving.unzip();
        let train_passes = self.partials[..chunks * s]
            .chunks_mut(s)
            .zip(train.row_chunks())
            .zip(gamma_t.chunks(CHUNK_ROWS).zip(chunks_or_none_mut(save_train, CHUNK_ROWS)))
            .map(|((g, (x, y)), (w, save))| Pass::Forward { x, y, w, theta: theta_p, g, save });
        let dev_passes = dev.loss_grad_passes(theta_p, set_partials, true, false, save_dev, None).take(dev_chunks);
        let (passes, dev_at) = spread(dev_passes.collect(), train_passes.collect());
        let sums = self.sweeps.run(isa, passes);
        let dev_value = want_dev.then(|| dev.mean(&dev_at.iter().map(|&i| sums[i]).collect::<Vec<_>>(), &[], None));
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
        // Per row: z = x·θ and u = x·λ_next in one pass (or u alone, where the forward step at θ
        // saved σ(z)); ∂J/∂γ = −η (σ(z) − y) u; the HVP term γ σ'(z) u x accumulates into the
        // chunk's partial. ∇L_dev(θ)'s chunks are spread among them, all shared out over the
        // threads.
        let (saved_train, saved_dev) = self.saved.for_backward(t, theta_p).unzip();
        let train_passes = self.partials[..chunks * s]
            .chunks_mut(s)
            .zip(train.row_chunks())
            .zip(gamma_t.chunks(CHUNK_ROWS).zip(grad_t.chunks_mut(CHUNK_ROWS)).zip(chunks_or_none(saved_train, CHUNK_ROWS)))
            .map(|((h, (x, y)), ((w, out), saved))| Pass::Backward {
                x,
                y,
                w,
                theta: theta_p,
                saved,
                lambda_next: lambda_p,
                neg_eta,
                out,
                h,
            });
        let dev_passes = dev.loss_grad_passes(theta_p, set_partials, false, true, None, saved_dev);
        self.sweeps.run(isa, spread(dev_passes.collect(), train_passes.collect()).0);
        dev.mean(&[], set_partials, Some(&mut self.dev_grad));
        // λ holds H λ_next for now.
        reduce_partials(&self.partials, s, chunks, lambda);
        let (w, e) = (R::of(dev_weight), R::of(eta));
        for ((l, &gd), &ln) in lambda.iter_mut().zip(&self.dev_grad).zip(lambda_next) {
            *l = w * gd + ln - e * *l;
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

    #[test]
    fn spread_places_each_set_pass_where_it_falls_among_the_training_passes() {
        let (seq, at) = spread(vec!["d0", "d1"], vec!["t0", "t1", "t2", "t3"]);
        assert_eq!((seq, at), (vec!["t0", "d0", "t1", "t2", "d1", "t3"], vec![1, 4]));
        // Two threads' halves of 16 training chunks and 8 desired-set ones hold 8 and 4 each.
        let (seq, at) = spread((0..8).map(|i| (true, i)).collect(), (0..16).map(|j| (false, j)).collect());
        assert_eq!(seq[..12].iter().filter(|(dev, _)| *dev).count(), 4);
        assert!(at.iter().enumerate().all(|(i, &k)| seq[k] == (true, i)));
        assert_eq!(spread(vec![1, 2], vec![]), (vec![1, 2], vec![0, 1]));
        assert_eq!(spread(vec![], vec![1, 2]), (vec![1, 2], vec![]));
    }

    /// The backward steps take the forward steps' saved sigmoids, or their own dots where none
    /// were saved: the same bits either way. A backward step at a θ no forward step saw takes
    /// its own dots too.
    #[test]
    fn saved_sigmoids_change_no_bit() {
        let data = data();
        let unsaved = |e: CpuPerceptron<f32>| CpuPerceptron { saved: Saved::new(e.num_train(), e.dev.rows(), 0), ..e };
        let want = unroll_bits(unsaved(CpuPerceptron::<f32>::new(&data).unwrap()));
        assert!(want == unroll_bits(CpuPerceptron::<f32>::new(&data).unwrap()));

        let backward_at = |e: &mut CpuPerceptron<f32>, seed: u64| {
            let (p, n) = (e.num_params(), e.num_train());
            let theta = e.upload(&crate::data::init_theta(p, seed)).unwrap();
            let gamma = e.upload(&vec![1.0 / n as f32; n]).unwrap();
            let (lambda_next, mut lambda, mut grad) = (e.upload(&vec![0.01; p]).unwrap(), e.zeros(p).unwrap(), e.zeros(n).unwrap());
            e.backward_step(&theta, &gamma, 0, &lambda_next, 0.3, 0.5, &mut grad, &mut lambda).unwrap();
            grad.into_iter().chain(lambda).map(f32::to_bits).collect::<Vec<_>>()
        };
        let mut e = CpuPerceptron::<f32>::new(&data).unwrap();
        let (p, n) = (e.num_params(), e.num_train());
        let (theta, gamma) = (e.upload(&crate::data::init_theta(p, 3)).unwrap(), e.upload(&vec![1.0 / n as f32; n]).unwrap());
        let (mut next, mut curve) = (e.zeros(p).unwrap(), e.zeros(1).unwrap());
        e.forward_step(&theta, &gamma, 0, 0.3, &mut next, Some((&mut curve, 0))).unwrap();
        let fresh = backward_at(&mut unsaved(CpuPerceptron::<f32>::new(&data).unwrap()), 4);
        assert_eq!(backward_at(&mut e, 4), fresh);
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
