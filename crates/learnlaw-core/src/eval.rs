//! Evaluation of a policy (reference §2, §6): retrain from θ_0, record the dev and test curves,
//! and measure the Learning Law's quantities along the way.
//!
//! - AR = T / min{t ≥ 1 : L_opt(θ_t) ≤ L_const(θ_T)}: how many times fewer steps the policy needs
//!   to reach the constant policy's final loss.
//! - CT_{n,t} = ∇L_dev(θ_t)·∇l_n(θ_t), the contribution of example n at step t (γ not included).
//! - SIM_t = mean_t / s_t with mean_t = Σ_n γ_{t,n} CT_{n,t} and s_t the sample std of CT over the
//!   examples with γ ≠ 0: large when all used examples contribute equally (the Learning Law).
//! - zero share = #{γ = 0 and CT ≤ 0} / #{CT ≤ 0}: do harmful examples get no weight?
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, Set};
use crate::unroll::Unroll;
use crate::{Error, Real, Result};

/// Loss curves over θ_0..θ_T (T+1 points).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Curves {
    pub dev: Vec<f64>,
    pub test: Vec<f64>,
}

/// The Learning-Law statistics of one retraining run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LawStats {
    /// SIM_t for t = 0..T−1 (NaN where fewer than two examples have weight or CT has no spread).
    pub sim: Vec<f64>,
    /// (1/T) Σ_t SIM_t over the steps where it is defined.
    pub sim_mean: f64,
    /// #{γ = 0 and CT ≤ 0} / #{CT ≤ 0} over all steps and examples.
    pub zero_share: f64,
}

/// A weight at or below this counts as γ = 0 (the exact projection yields true zeros; policies
/// from iterative solvers such as the official code's cvxpy carry ~1e-10 residues).
pub const ZERO_WEIGHT: f64 = 1e-9;

/// Retrains from θ_0 with policy `gamma` ([T, N], on the host), recording both curves and, with
/// `law`, the Learning-Law statistics.
pub fn retrain<E: Engine>(
    e: &mut E,
    theta0: &[E::Real],
    gamma: &[E::Real],
    unroll: Unroll,
    law: bool,
) -> Result<(Curves, Option<LawStats>)> {
    unroll.validate()?;
    let (p, n) = (e.num_params(), e.num_train());
    let gamma_dev = e.upload(gamma)?;
    let mut theta = e.upload(theta0)?;
    let mut next = e.zeros(p)?;
    let (mut g_dev, mut ct) = (e.zeros(p)?, e.zeros(n)?);
    let mut curves = Curves::default();
    let mut acc = LawAccumulator::default();
    for t in 0..unroll.steps {
        curves.test.push(e.loss(Set::Test, &theta)?);
        if law {
            curves.dev.push(e.loss_grad(Set::Dev, &theta, &mut g_dev)?);
            e.train_dots(&theta, &g_dev, &mut ct)?;
            acc.add(&gamma[t * n..(t + 1) * n], &e.download(&ct)?);
        } else {
            curves.dev.push(e.loss(Set::Dev, &theta)?);
        }
        e.forward_step(&theta, &gamma_dev, t, unroll.eta, &mut next, None)?;
        std::mem::swap(&mut theta, &mut next);
    }
    curves.dev.push(e.loss(Set::Dev, &theta)?);
    curves.test.push(e.loss(Set::Test, &theta)?);
    if let Some(t) = curves.dev.iter().zip(&curves.test).position(|(d, t)| !(d.is_finite() && t.is_finite())) {
        return Err(Error::Numerical(format!("retraining diverged: loss {} / {} at step {t}", curves.dev[t], curves.test[t])));
    }
    Ok((curves, law.then(|| acc.finish())))
}

#[derive(Default)]
struct LawAccumulator {
    sim: Vec<f64>,
    harmful: u64,
    harmful_zero: u64,
}

impl LawAccumulator {
    fn add<R: Real>(&mut self, gamma: &[R], ct: &[R]) {
        let (mut mean, mut used) = (0.0, 0usize);
        for (&g, &c) in gamma.iter().zip(ct) {
            let (g, c) = (g.f64(), c.f64());
            mean += g * c;
            used += (g > ZERO_WEIGHT) as usize;
            if c <= 0.0 {
                self.harmful += 1;
                self.harmful_zero += (g <= ZERO_WEIGHT) as u64;
            }
        }
        let ss: f64 = gamma.iter().zip(ct).filter(|(g, _)| g.f64() > ZERO_WEIGHT).map(|(_, c)| (c.f64() - mean).powi(2)).sum();
        let s = if used > 1 { (ss / (used - 1) as f64).sqrt() } else { 0.0 };
        self.sim.push(if s > 0.0 { mean / s } else { f64::NAN });
    }

    fn finish(self) -> LawStats {
        let defined: Vec<f64> = self.sim.iter().copied().filter(|s| s.is_finite()).collect();
        LawStats {
            sim_mean: defined.iter().sum::<f64>() / defined.len().max(1) as f64,
            zero_share: if self.harmful > 0 { self.harmful_zero as f64 / self.harmful as f64 } else { 0.0 },
            sim: self.sim,
        }
    }
}

/// AR = T / min{t ≥ 1 : curve[t] ≤ target}, with T = curve.len() − 1; None if never reached.
pub fn acceleration_ratio(curve: &[f64], target: f64) -> Option<f64> {
    let steps = curve.len().checked_sub(1)?;
    curve.iter().enumerate().skip(1).find(|(_, &l)| l <= target).map(|(t, _)| steps as f64 / t as f64)
}
