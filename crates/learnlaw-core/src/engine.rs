//! The one interface between the policy-search driver and a backend.
//!
//! An engine owns one task's data (model + train/dev/test sets) on one backend (cpu, cuda, wgpu) and
//! does the fused per-step work of the unrolled training run. The driver (`unroll`, `search`,
//! `eval`) is written once against this trait; every backend's engine is checked against the CPU
//! reference by the conformance tests.
//!
//! Conventions: θ is a vector of `num_params()` reals; a policy γ is `[T, N]` row-major with
//! N = `num_train()`, and step t uses row t. Host-side scalars are f64 whatever the engine stores.
use crate::{Error, Real, Result};

/// An evaluation set of the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Set {
    /// The desired set: the search minimises the area under its loss curve.
    Dev,
    /// The held-out test set, never seen by the search; all reported metrics use it.
    Test,
}

/// FLOPs of one inner step of the unrolled run and of its adjoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepFlops {
    /// `forward_step`: the γ-weighted gradient, the update and L_dev(θ_t).
    pub forward: f64,
    /// `backward_step`: N per-example dots, the HVP and ∇L_dev(θ_t).
    pub backward: f64,
}

pub trait Engine {
    /// The element type of the engine's vectors.
    type Real: Real;
    /// A device-resident vector.
    type Vec;

    /// A short name for logs and configs, e.g. `cpu-f32`.
    fn name(&self) -> String;
    /// Number of model parameters (length of θ).
    fn num_params(&self) -> usize;
    /// Number of training examples N (length of one policy row).
    fn num_train(&self) -> usize;
    /// |V|, the number of output classes: 2 for the perceptron, the vocabulary for a language
    /// model. The compression ratio is CR = log2|V| / mean L_dev.
    fn num_classes(&self) -> usize;
    /// Analytic floating-point operations of one `forward_step` and one `backward_step` (a
    /// multiply-add counts 2), for AUC-per-FLOP accounting. The count is the algorithm's, the same
    /// on every backend of a task.
    fn step_flops(&self) -> StepFlops;

    fn zeros(&mut self, len: usize) -> Result<Self::Vec>;
    fn upload(&mut self, host: &[Self::Real]) -> Result<Self::Vec>;
    fn download(&mut self, v: &Self::Vec) -> Result<Vec<Self::Real>>;
    fn copy(&mut self, src: &Self::Vec, dst: &mut Self::Vec) -> Result<()>;
    /// x ← a·x.
    fn scale(&mut self, a: f64, x: &mut Self::Vec) -> Result<()>;
    /// y ← y + a·x.
    fn axpy(&mut self, a: f64, x: &Self::Vec, y: &mut Self::Vec) -> Result<()>;
    /// Projects every row (of length `row_len`) of `v` onto the probability simplex, exactly.
    /// A non-finite value is an `Error::Numerical`, not a silent garbage policy.
    fn project_simplex_rows(&mut self, v: &mut Self::Vec, row_len: usize) -> Result<()>;
    /// The outer SGD step on a policy: y ← y + a·x, then every row of y projected onto the
    /// simplex (`axpy`, then `project_simplex_rows`, the default). An engine may do both in one
    /// pass over each row, with the same results.
    fn axpy_project_simplex_rows(&mut self, a: f64, x: &Self::Vec, y: &mut Self::Vec, row_len: usize) -> Result<()> {
        self.axpy(a, x, y)?;
        self.project_simplex_rows(y, row_len)
    }

    /// One step of γ-weighted full-batch gradient descent:
    /// θ_next = θ − η ∇_θ Σ_n γ_{t,n} l_n(θ). With `dev_loss = Some((curve, i))`, L_dev(θ) is also
    /// written to `curve[i]` on the device, so an unroll reads its whole curve back in one
    /// transfer instead of waiting for the device every step.
    #[allow(clippy::too_many_arguments)]
    fn forward_step(
        &mut self,
        theta: &Self::Vec,
        gamma: &Self::Vec,
        t: usize,
        eta: f64,
        theta_next: &mut Self::Vec,
        dev_loss: Option<(&mut Self::Vec, usize)>,
    ) -> Result<()>;

    /// One step of the adjoint recursion, at θ = θ_t with λ_next = λ_{t+1}:
    /// - `grad_gamma[t, n]` = −η ∇l_n(θ)·λ_next (the policy gradient row t);
    /// - λ = dev_weight·∇L_dev(θ) + λ_next − η H_t λ_next, H_t the Hessian of Σ_n γ_{t,n} l_n at θ.
    #[allow(clippy::too_many_arguments)]
    fn backward_step(
        &mut self,
        theta: &Self::Vec,
        gamma: &Self::Vec,
        t: usize,
        lambda_next: &Self::Vec,
        eta: f64,
        dev_weight: f64,
        grad_gamma: &mut Self::Vec,
        lambda: &mut Self::Vec,
    ) -> Result<()>;

    /// Runs `steps`, a sequence of `forward_step`/`backward_step` calls that the caller repeats
    /// (one pass of an unroll), letting the engine submit them together: the CUDA engine replays
    /// a sequence it has seen before as one CUDA graph, the wgpu engine submits the sequence as
    /// one command buffer. The results are the same as calling the steps directly (the default).
    /// Contract: every vector a step uses must outlive this call, since the engine may launch the
    /// recorded steps only at its end.
    fn run_steps<T>(&mut self, steps: impl FnOnce(&mut Self) -> Result<T>) -> Result<T>
    where
        Self: Sized,
    {
        steps(self)
    }

    /// Whether an unroll of `steps` steps should take its L_dev curve from `dev_losses` rather
    /// than from the forward steps (`forward_step`'s `dev_loss`): all θ_t at once after the
    /// forward pass where it keeps them all, else θ_t before each step. The CPU perceptron's do
    /// (two GEMMs over the desired set, which also give its backward steps their ∇L_dev(θ_t));
    /// the GPU engines' steps compute L_dev within their own launches.
    fn batches_dev_losses(&self, steps: usize) -> bool {
        let _ = steps;
        false
    }
    /// L_dev(θ) at each of `thetas`, written to `curve[first + i]` for the i-th: the same bits for
    /// a θ whether it comes alone or with others. The default takes `loss` at each.
    fn dev_losses(&mut self, thetas: &[Self::Vec], curve: &mut Self::Vec, first: usize) -> Result<()> {
        let mut host = self.download(curve)?;
        let len = host.len();
        let entries = host
            .get_mut(first..first + thetas.len())
            .ok_or_else(|| Error::shape("dev-loss curve", format!("at least {} entries", first + thetas.len()), len))?;
        for (entry, theta) in entries.iter_mut().zip(thetas) {
            *entry = Self::Real::of(self.loss(Set::Dev, theta)?);
        }
        *curve = self.upload(&host)?;
        Ok(())
    }

    /// Mean loss on an evaluation set.
    fn loss(&mut self, set: Set, theta: &Self::Vec) -> Result<f64>;
    /// Mean loss on an evaluation set, and its gradient written to `grad`.
    fn loss_grad(&mut self, set: Set, theta: &Self::Vec, grad: &mut Self::Vec) -> Result<f64>;
    /// Per-example training losses l_n(θ), written to `out` (length N).
    fn train_losses(&mut self, theta: &Self::Vec, out: &mut Self::Vec) -> Result<()>;
    /// Per-example gradient dots ∇l_n(θ)·v, written to `out` (length N), without materialising
    /// per-example gradients. With v = ∇L_dev(θ) these are the contributions CT_n.
    fn train_dots(&mut self, theta: &Self::Vec, v: &Self::Vec, out: &mut Self::Vec) -> Result<()>;

    /// Largest |x_i| of a vector (0 for an empty one). The default goes through the host.
    fn max_abs(&mut self, x: &Self::Vec) -> Result<f64> {
        Ok(self.download(x)?.iter().fold(0.0f64, |m, v| m.max(v.f64().abs())))
    }

    /// Block sums of rows: for rows of length `row_len` in blocks of `block` consecutive rows (the
    /// last block may be shorter), every row of a block becomes the sum of the block's rows, in
    /// row order. The default goes through the host.
    fn tie_rows(&mut self, v: &mut Self::Vec, block: usize, row_len: usize) -> Result<()> {
        let mut h = self.download(v)?;
        tie_rows_shape(h.len(), block, row_len)?;
        let mut sum = vec![<Self::Real as num_traits::Zero>::zero(); row_len];
        for rows in h.chunks_mut(block * row_len) {
            sum.fill(<Self::Real as num_traits::Zero>::zero());
            for row in rows.chunks(row_len) {
                sum.iter_mut().zip(row).for_each(|(s, &x)| *s = *s + x);
            }
            for row in rows.chunks_mut(row_len) {
                row.copy_from_slice(&sum);
            }
        }
        let tied = self.upload(&h)?;
        self.copy(&tied, v)
    }

    /// One exponentiated-gradient (mirror-descent) step on every row of `gamma` (rows of length
    /// `row_len`, each on the simplex): γ_t ← γ_t ⊙ exp(−step·g_t) / Σ_n γ_{t,n} exp(−step·g_{t,n}).
    /// Rows stay on the simplex without a projection. The default goes through the host.
    fn exp_grad_rows(&mut self, gamma: &mut Self::Vec, grad: &Self::Vec, step: f64, row_len: usize) -> Result<()> {
        exp_grad_rows_on_host(self, gamma, grad, step, row_len)
    }
}

/// `Engine::exp_grad_rows` through the host, in f64: the default, and the reference the device
/// kernels are benchmarked against.
pub fn exp_grad_rows_on_host<E: Engine + ?Sized>(e: &mut E, gamma: &mut E::Vec, grad: &E::Vec, step: f64, row_len: usize) -> Result<()> {
    let mut g = e.download(gamma)?;
    let d = e.download(grad)?;
    rows_of_pair("exp_grad_rows", g.len(), d.len(), row_len)?;
    for (row, drow) in g.chunks_mut(row_len).zip(d.chunks(row_len)) {
        // Subtracting the row's smallest gradient keeps every exponent ≤ 0 (no overflow).
        let min = drow.iter().fold(f64::INFINITY, |m, v| m.min(v.f64()));
        let w: Vec<f64> = row.iter().zip(drow).map(|(x, v)| x.f64() * (-step * (v.f64() - min)).exp()).collect();
        let sum: f64 = w.iter().sum();
        if !(sum.is_finite() && sum > 0.0) {
            return Err(Error::Numerical(format!("exponentiated-gradient row sum {sum}")));
        }
        for (x, w) in row.iter_mut().zip(&w) {
            *x = E::Real::of(w / sum);
        }
    }
    // Into the same buffer, so a recorded step sequence that reads γ stays valid.
    let updated = e.upload(&g)?;
    e.copy(&updated, gamma)
}

/// The number of rows of length `row_len` in a vector of `len` values (a policy [T, N], its
/// gradient): a shape error naming `what` unless `row_len` ≥ 1 divides `len`.
pub fn rows_of(what: &str, len: usize, row_len: usize) -> Result<usize> {
    if row_len == 0 || !len.is_multiple_of(row_len) {
        return Err(Error::shape(what, format!("a multiple of {row_len}"), len));
    }
    Ok(len / row_len)
}

/// `rows_of` for a policy and its gradient, which must also have the same length.
pub fn rows_of_pair(what: &str, len: usize, other: usize, row_len: usize) -> Result<usize> {
    if len != other {
        return Err(Error::shape(what, len, other));
    }
    rows_of(what, len, row_len)
}

/// The rows of a `tie_rows` call (`block` ≥ 1 rows of `row_len` per block).
pub fn tie_rows_shape(len: usize, block: usize, row_len: usize) -> Result<usize> {
    if block == 0 {
        return Err(Error::config("block_steps", 0, "must be at least 1"));
    }
    rows_of("tie_rows", len, row_len)
}
