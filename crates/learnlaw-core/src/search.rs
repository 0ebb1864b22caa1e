//! The outer loop: optimise the policy γ ∈ (Δ^N)^T to minimise J(γ) (reference §3).
//!
//! The paper's method, kept exactly as the reproduction default: one full-gradient SGD step on all
//! γ per outer epoch with the learning rate decayed linearly from `outer_lr` to 0 over the epochs
//! (lr_e = outer_lr·(E−e)/E), then the exact Euclidean projection of every row onto the simplex.
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::unroll::{Forward, Unroll, Workspace};
use crate::{Error, Result};

/// How the policy is updated from ∂J/∂γ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OuterOptimizer {
    /// The paper's: SGD, linear decay to 0, then projection onto the simplex.
    Sgd,
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
}

/// Memory the θ history may take before the unroll switches to √T checkpointing.
const THETA_HISTORY_BUDGET: usize = 2 << 30;

impl SearchConfig {
    /// The official perceptron script: T = 2000, η = 0.1, 500 epochs at outer lr 0.001.
    pub fn paper_perceptron() -> Self {
        SearchConfig { steps: 2000, eta: 0.1, epochs: 500, outer_lr: 0.001, optimizer: OuterOptimizer::Sgd, checkpoint_every: None }
    }

    pub fn unroll(&self) -> Unroll {
        Unroll { steps: self.steps, eta: self.eta }
    }

    pub fn validate(&self) -> Result<()> {
        self.unroll().validate()?;
        if !(self.outer_lr.is_finite() && self.outer_lr >= 0.0) {
            return Err(Error::config("outer_lr", self.outer_lr, "must be a finite number ≥ 0"));
        }
        if self.checkpoint_every == Some(0) {
            return Err(Error::config("checkpoint_every", 0, "must be at least 1"));
        }
        Ok(())
    }

    /// The outer learning rate of epoch e (0-based).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        match self.optimizer {
            OuterOptimizer::Sgd => self.outer_lr * (self.epochs.saturating_sub(epoch)) as f64 / self.epochs.max(1) as f64,
        }
    }
}

/// A policy search in progress: the device-resident policy, its gradient and the unroll buffers.
pub struct Search<E: Engine> {
    cfg: SearchConfig,
    ws: Workspace<E>,
    theta0: E::Vec,
    gamma: E::Vec,
    grad: E::Vec,
    epoch: usize,
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
        let real_bytes = std::mem::size_of::<E::Real>();
        let every =
            cfg.checkpoint_every.unwrap_or_else(|| cfg.unroll().checkpoint_interval(e.num_params(), real_bytes, THETA_HISTORY_BUDGET));
        Ok(Search {
            cfg: cfg.clone(),
            ws: Workspace::new(e, cfg.unroll(), every)?,
            theta0: e.upload(theta0)?,
            gamma: e.upload(gamma)?,
            grad: e.zeros(gamma.len())?,
            epoch,
        })
    }

    /// Outer epochs completed so far.
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// One outer epoch: J(γ_e) and ∂J/∂γ, then γ_{e+1} = Π(γ_e − lr_e ∂J/∂γ). Returns γ_e's forward.
    pub fn step(&mut self, e: &mut E) -> Result<Forward> {
        let fwd = self.ws.gradient(e, &self.theta0, &self.gamma, &mut self.grad)?;
        e.axpy(-self.cfg.lr_at(self.epoch), &self.grad, &mut self.gamma)?;
        e.project_simplex_rows(&mut self.gamma, e.num_train())?;
        self.epoch += 1;
        Ok(fwd)
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
