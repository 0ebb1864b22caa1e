//! The outer loop: optimise the policy γ ∈ (Δ^N)^T to minimise J(γ) (reference §3).
//!
//! The paper's method, kept exactly as the reproduction default: one full-gradient SGD step on all
//! γ per outer epoch with the learning rate decayed linearly from `outer_lr` to 0 over the epochs
//! (lr_e = outer_lr·(E−e)/E), then the exact Euclidean projection of every row onto the simplex.
//!
//! Beside it (same linear decay of lr_e, step sizes normalised so one lr works across sizes):
//! - `ExpGrad`: exponentiated gradient (mirror descent on the simplex),
//!   γ_t ← γ_t ⊙ exp(−lr_e·g_t / max|g|) / Σ — rows stay on the simplex, no projection;
//! - `Adam`: Adam moments (β = 0.9, 0.999, bias-corrected), step (lr_e/N)·m̂/(√v̂ + ε) with
//!   ε = 1e-8·max√v̂ (scale-free), then the projection.
//!
//! Block policies (`block_steps` = B > 1): γ is shared by B consecutive steps, γ_t = β_⌊t/B⌋,
//! a T/B-times smaller search space. The gradient of J with respect to β_b is Σ_{t ∈ block b}
//! ∂J/∂γ_t, so the search writes that sum into every row of the block (`Engine::tie_rows`) and
//! runs the optimiser unchanged: rows that start equal (the constant policy) get equal updates
//! and stay equal, and the policy file keeps its [T, N] shape.
//!
//! The optional L2 pull toward the constant policy, reg·‖γ − 1/N‖², is applied as its exact
//! proximal step after the optimiser's step, γ ← (γ + κ/N)/(1 + κ) with κ = 2·reg·lr_e: for SGD
//! this is the implicit form of adding 2·reg·(γ − 1/N) to ∂J/∂γ (the explicit form diverges once
//! 2·reg·lr_e > 2), and for every optimiser a huge reg keeps γ at the constant policy. A convex
//! combination of two points of the simplex stays on it, so no further projection is needed.
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::unroll::{Forward, Unroll, Workspace};
use crate::{Error, Real, Result};

/// How the policy is updated from ∂J/∂γ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OuterOptimizer {
    /// The paper's: SGD, linear decay to 0, then projection onto the simplex.
    Sgd,
    /// Exponentiated gradient (mirror descent on the simplex), step lr_e / max|∂J/∂γ|.
    ExpGrad,
    /// Adam moments, step lr_e/N per entry, then projection onto the simplex.
    Adam,
}

impl OuterOptimizer {
    /// A reasonable outer learning rate for the optimiser (SGD: the paper's).
    pub fn default_lr(self) -> f64 {
        match self {
            OuterOptimizer::Sgd => 0.001,
            OuterOptimizer::ExpGrad => 1.0,
            OuterOptimizer::Adam => 0.1,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    /// T, the number of inner gradient-descent steps.
    pub steps: usize,
    /// η, the inner learning rate.
    pub eta: f64,
    /// E, the number of outer epochs.
    pub epochs: usize,
    /// The outer learning rate on the code's J (= the paper's ε·T).
    pub outer_lr: f64,
    pub optimizer: OuterOptimizer,
    /// Keep θ every k inner steps and recompute between (None: keep all when they fit in 2 GiB).
    pub checkpoint_every: Option<usize>,
    /// Fraction of the desired set held out from the search (the last ⌈F·K⌉ examples) to pick
    /// the best policy by held-out J (early stopping). None: search on the whole desired set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<f64>,
    /// Strength of the L2 pull reg·‖γ − 1/N‖² toward the constant policy (None: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reg_l2: Option<f64>,
    /// Share γ across blocks of this many consecutive steps (None: one γ per step, the paper's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_steps: Option<usize>,
}

/// Memory the θ history may take before the unroll switches to √T checkpointing.
pub const THETA_HISTORY_BUDGET: usize = 2 << 30;

impl SearchConfig {
    /// The official perceptron script: T = 2000, η = 0.1, 500 epochs at outer lr 0.001.
    pub fn paper_perceptron() -> Self {
        SearchConfig {
            steps: 2000,
            eta: 0.1,
            epochs: 500,
            outer_lr: 0.001,
            optimizer: OuterOptimizer::Sgd,
            checkpoint_every: None,
            holdout: None,
            reg_l2: None,
            block_steps: None,
        }
    }

    pub fn unroll(&self) -> Unroll {
        Unroll { steps: self.steps, eta: self.eta }
    }

    pub fn validate(&self) -> Result<()> {
        self.unroll().validate()?;
        if !(self.outer_lr.is_finite() && self.outer_lr >= 0.0) {
            return Err(Error::config("outer_lr", self.outer_lr, "must be a finite number ≥ 0"));
        }
        if let Some(f) = self.holdout {
            if !(f > 0.0 && f < 1.0) {
                return Err(Error::config("holdout", f, "must be a fraction strictly between 0 and 1"));
            }
        }
        if let Some(r) = self.reg_l2 {
            if !(r.is_finite() && r >= 0.0) {
                return Err(Error::config("reg_l2", r, "must be a finite number ≥ 0"));
            }
        }
        if let Some(b) = self.block_steps.filter(|&b| b == 0 || b > self.steps) {
            return Err(Error::config("block_steps", b, format!("must be between 1 and the inner steps T = {}", self.steps)));
        }
        if self.checkpoint_every == Some(0) {
            return Err(Error::config("checkpoint_every", 0, "must be at least 1"));
        }
        Ok(())
    }

    /// Bytes a search of this size holds at its peak beyond its data, roughly: γ and ∂J/∂γ [T, N]
    /// in reals of `real_bytes`, the host copies a save makes (γ downloaded, as f32, serialised),
    /// Adam's two f64 moments with their saved copies, and the θ kept for the adjoint (P each).
    pub fn memory_needed(&self, num_params: usize, examples: usize, real_bytes: usize) -> u64 {
        let (t, p, r) = (self.steps as u64, num_params as u64, real_bytes as u64);
        let policy = t.saturating_mul(examples as u64);
        let adam = if self.optimizer == OuterOptimizer::Adam { 2 * 8 * 2 } else { 0 };
        let every = self.theta_interval(num_params, real_bytes);
        let thetas = t.div_ceil(every as u64) + every as u64;
        policy.saturating_mul(3 * r + 8 + adam).saturating_add(thetas.saturating_mul(p).saturating_mul(r))
    }

    /// Every how many inner steps θ is kept for the adjoint: `checkpoint_every`, else all of them
    /// while they fit in `THETA_HISTORY_BUDGET`.
    fn theta_interval(&self, num_params: usize, real_bytes: usize) -> usize {
        self.checkpoint_every.unwrap_or_else(|| self.unroll().checkpoint_interval(num_params, real_bytes, THETA_HISTORY_BUDGET))
    }

    /// The outer learning rate of epoch e (0-based): linear decay to 0, for every optimiser.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        self.outer_lr * (self.epochs.saturating_sub(epoch)) as f64 / self.epochs.max(1) as f64
    }
}

/// Adam's state: first and second moments ([T, N], like γ) and the steps taken (bias correction).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamState {
    pub m: Vec<f64>,
    pub v: Vec<f64>,
    pub steps: u32,
}

/// A policy search in progress: the device-resident policy, its gradient and the unroll buffers.
pub struct Search<E: Engine> {
    cfg: SearchConfig,
    ws: Workspace<E>,
    theta0: E::Vec,
    gamma: E::Vec,
    grad: E::Vec,
    /// N, the length of a policy row.
    examples: usize,
    epoch: usize,
    /// Adam's state (host; from the first Adam step, or restored by `resume_adam`).
    adam: Option<AdamState>,
    /// The constant policy 1/N, [T, N] (only with reg_l2).
    constant: Option<E::Vec>,
}

impl<E: Engine> Search<E> {
    /// Starts (or resumes, with `epoch` > 0) a search from policy `gamma` ([T, N]) and θ_0.
    pub fn new(e: &mut E, cfg: &SearchConfig, theta0: &[E::Real], gamma: &[E::Real], epoch: usize) -> Result<Self> {
        cfg.validate()?;
        if theta0.len() != e.num_params() {
            return Err(Error::shape("theta0", e.num_params(), theta0.len()));
        }
        let n = e.num_train();
        if gamma.len() != cfg.steps * n {
            return Err(Error::shape("policy", format!("[{}, {n}]", cfg.steps), format!("{} values", gamma.len())));
        }
        let every = cfg.theta_interval(e.num_params(), std::mem::size_of::<E::Real>());
        Ok(Search {
            cfg: cfg.clone(),
            ws: Workspace::new(e, cfg.unroll(), every)?,
            theta0: e.upload(theta0)?,
            gamma: e.upload(gamma)?,
            grad: e.zeros(gamma.len())?,
            examples: n,
            epoch,
            adam: None,
            constant: match cfg.reg_l2 {
                Some(_) => Some(e.upload(&vec![E::Real::of(1.0 / n as f64); gamma.len()])?),
                None => None,
            },
        })
    }

    /// Adam's state after the epochs so far (None before the first Adam step).
    pub fn adam_state(&self) -> Option<&AdamState> {
        self.adam.as_ref()
    }

    /// Restores Adam's state saved with the policy, so a resumed search continues exactly.
    pub fn resume_adam(&mut self, state: AdamState) -> Result<()> {
        let len = self.cfg.steps * self.examples;
        if state.m.len() != len || state.v.len() != len {
            return Err(Error::shape("Adam moments", len, format!("{} and {}", state.m.len(), state.v.len())));
        }
        self.adam = Some(state);
        Ok(())
    }

    /// Outer epochs completed so far.
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// One outer epoch: J(γ_e) and ∂J/∂γ, then γ_{e+1} by the configured optimiser (SGD:
    /// Π(γ_e − lr_e ∂J/∂γ)). Returns γ_e's forward.
    pub fn step(&mut self, e: &mut E) -> Result<Forward> {
        let fwd = self.ws.gradient(e, &self.theta0, &self.gamma, &mut self.grad)?;
        let lr = self.cfg.lr_at(self.epoch);
        let n = e.num_train();
        if let Some(block) = self.cfg.block_steps.filter(|&b| b > 1) {
            e.tie_rows(&mut self.grad, block, n)?;
        }
        let updated = match self.cfg.optimizer {
            OuterOptimizer::Sgd => e.axpy_project_simplex_rows(-lr, &self.grad, &mut self.gamma, n),
            OuterOptimizer::ExpGrad => match e.max_abs(&self.grad)? {
                scale if !scale.is_finite() => Err(Error::Numerical(format!("policy gradient max |g| = {scale}"))),
                scale if scale > 0.0 => e.exp_grad_rows(&mut self.gamma, &self.grad, lr / scale, n),
                _ => Ok(()),
            },
            OuterOptimizer::Adam => self.adam_delta(e, lr, n).and_then(|delta| {
                let delta = e.upload(&delta)?;
                e.axpy_project_simplex_rows(-1.0, &delta, &mut self.gamma, n)
            }),
        };
        if let Err(err) = updated {
            // Name the first quantity that went non-finite: the losses are checked by the unroll,
            // so it is ∂J/∂γ (the inner training's adjoint) or else the update itself.
            let gradient = matches!(err, Error::Numerical(_)).then(|| e.download(&self.grad).ok()).flatten();
            return Err(gradient.and_then(|g| self.non_finite_gradient(&g)).unwrap_or(err));
        }
        if let (Some(reg), Some(constant)) = (self.cfg.reg_l2, &self.constant) {
            let kappa = 2.0 * reg * lr;
            if kappa > 0.0 {
                e.scale(1.0 / (1.0 + kappa), &mut self.gamma)?;
                e.axpy(kappa / (1.0 + kappa), constant, &mut self.gamma)?;
            }
        }
        self.epoch += 1;
        Ok(fwd)
    }

    /// Adam's step (lr/N)·m̂/(√v̂ + ε) from the current gradient, updating the moments.
    fn adam_delta(&mut self, e: &mut E, lr: f64, n: usize) -> Result<Vec<E::Real>> {
        const B1: f64 = 0.9;
        const B2: f64 = 0.999;
        let g = e.download(&self.grad)?;
        // Checked before the moments change, so a failed epoch leaves Adam's state as saved.
        if let Some(err) = self.non_finite_gradient(&g) {
            return Err(err);
        }
        let AdamState { m, v, steps } =
            self.adam.get_or_insert_with(|| AdamState { m: vec![0.0; g.len()], v: vec![0.0; g.len()], steps: 0 });
        for ((m, v), g) in m.iter_mut().zip(v.iter_mut()).zip(&g) {
            let g = g.f64();
            *m = B1 * *m + (1.0 - B1) * g;
            *v = B2 * *v + (1.0 - B2) * g * g;
        }
        *steps += 1;
        let t = *steps as i32;
        let (c1, c2) = (1.0 - B1.powi(t), 1.0 - B2.powi(t));
        let vmax = v.iter().fold(0.0f64, |a, &b| a.max(b)) / c2;
        let eps = 1e-8 * vmax.sqrt() + f64::MIN_POSITIVE;
        let step = lr / n as f64;
        let delta: Vec<E::Real> = m.iter().zip(v.iter()).map(|(m, v)| E::Real::of(step * (m / c1) / ((v / c2).sqrt() + eps))).collect();
        if delta.iter().any(|d| !d.f64().is_finite()) {
            return Err(Error::Numerical("non-finite Adam step".into()));
        }
        Ok(delta)
    }

    /// The error for a non-finite ∂J/∂γ (`g`) with finite losses, if it has one: the adjoint pass
    /// overflowed, which the inner learning rate (or the data's scale) decides, not the outer one.
    fn non_finite_gradient(&self, g: &[E::Real]) -> Option<Error> {
        let i = g.iter().position(|x| !x.f64().is_finite())?;
        let (t, k) = (i / self.examples, i % self.examples);
        Some(Error::Numerical(format!(
            "∂J/∂γ is {} at inner step {t}, example {k}, while the losses are finite: the adjoint of the inner training \
             overflows, so the inner learning rate η = {:?} is too large for this data (lower --eta, or rescale the data)",
            g[i].f64(),
            self.cfg.eta
        )))
    }

    /// J and the dev curve of the current policy.
    pub fn evaluate(&mut self, e: &mut E) -> Result<Forward> {
        self.ws.forward(e, &self.theta0, &self.gamma)
    }

    /// The current policy, [T, N].
    pub fn policy(&self, e: &mut E) -> Result<Vec<E::Real>> {
        e.download(&self.gamma)
    }
}

/// Compression ratio (paper App. A): T·log2|V| / Σ_{t=1..T} L_dev(θ_t), from a curve over θ_0..θ_T.
pub fn compression_ratio(dev_curve: &[f64], vocab: usize) -> f64 {
    let area: f64 = dev_curve.iter().skip(1).sum();
    (dev_curve.len().saturating_sub(1)) as f64 * (vocab as f64).log2() / area
}
