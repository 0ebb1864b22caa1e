//! Evaluation of a policy (reference §2, §6): retrain from θ_0, record the dev and test curves,
//! and measure the Learning Law's quantities along the way.
//!
//! - AR = t_c / t_p with t_p = min{t ≥ 1 : L_opt(θ_t) ≤ L_const(θ_T)} and t_c the same for the
//!   constant policy's own curve: how many times fewer steps the policy needs to reach the constant
//!   policy's final loss. When the constant curve falls to its end t_c = T, the paper's T / t_p;
//!   equal curves give 1; a flat constant curve (training makes no progress) has t_c = 1, so AR ≤ 1;
//!   a policy that never reaches the target has no AR (None, "not reached").
//! - CT_{n,t} = ∇L_dev(θ_t)·∇l_n(θ_t), the contribution of example n at step t (γ not included).
//! - SIM_t = mean_t / s_t with mean_t = Σ_n γ_{t,n} CT_{n,t} and s_t the sample std of CT over the
//!   examples with γ ≠ 0: large when all used examples contribute equally (the Learning Law).
//! - zero share = #{γ = 0 and CT ≤ 0} / #{CT ≤ 0}: do harmful examples get no weight? (Fig. 8)
//! - well-learned examples (training loss l_n(θ_t) < 1e-6): the distribution of γ_{t,n}/max_n γ_{t,n}
//!   over them — do perfectly learned examples get (almost) no weight? (Fig. 9: >90% below 0.2)
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
    /// SIM_t for t = 0..T−1 (NaN where fewer than two examples have weight or CT has no spread;
    /// JSON writes NaN as null, which reads back as NaN).
    #[serde(deserialize_with = "nan_for_null")]
    pub sim: Vec<f64>,
    /// (1/T) Σ_t SIM_t over the steps where it is defined.
    pub sim_mean: f64,
    /// #{γ = 0 and CT ≤ 0} / #{CT ≤ 0} over all steps and examples.
    pub zero_share: f64,
    /// The same share per step t = 0..T−1 (None where no example has CT ≤ 0 at that step).
    #[serde(default)]
    pub zero_share_per_step: Vec<Option<f64>>,
    /// γ/max γ over the well-learned examples (l_n(θ_t) < `WELL_LEARNED_LOSS`), over all steps.
    #[serde(default)]
    pub well_learned: WellLearned,
}

/// A training loss below this counts as perfectly learned (the paper's Fig. 9 threshold).
pub const WELL_LEARNED_LOSS: f64 = 1e-6;
/// Bins of the γ/max γ histogram: equal bins on [0, 1] (0.2 falls on a bin edge).
pub const RATIO_BINS: usize = 50;
/// The paper's cut for "almost no weight": γ < 0.2·max_n γ_t.
pub const SMALL_RATIO: f64 = 0.2;

/// How the policy weights the examples it has already learned perfectly (reference §2, Fig. 9):
/// over all (t, n) with l_n(θ_t) < `WELL_LEARNED_LOSS`, the ratio r = γ_{t,n}/max_m γ_{t,m}.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WellLearned {
    /// Number of such (t, n) pairs.
    pub count: u64,
    /// Counts of r in `RATIO_BINS` equal bins on [0, 1] (r = 1 in the last); empty if none.
    pub ratio_histogram: Vec<u64>,
    /// The share with r < 0.2 (exact, not from the bins); None if there are none.
    pub share_below_0_2: Option<f64>,
    /// Well-learned pairs per step t = 0..T−1 (how many examples are learned when).
    #[serde(default)]
    pub per_step: Vec<u32>,
}

impl WellLearned {
    /// The empirical CDF at the bins' upper edges: (edge, share of ratios < edge (≤ for 1)).
    pub fn cdf(&self) -> Vec<(f64, f64)> {
        let total: u64 = self.ratio_histogram.iter().sum();
        let bins = self.ratio_histogram.len();
        let mut acc = 0u64;
        self.ratio_histogram
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                acc += c;
                ((i + 1) as f64 / bins as f64, if total > 0 { acc as f64 / total as f64 } else { 0.0 })
            })
            .collect()
    }
}

/// Reads a JSON array of numbers in which null stands for NaN (as serde_json writes NaN).
fn nan_for_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<f64>, D::Error> {
    let v: Vec<Option<f64>> = Deserialize::deserialize(d)?;
    Ok(v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
}

/// A weight at or below this counts as γ = 0 (the exact projection yields true zeros; policies
/// from iterative solvers such as the official code's cvxpy carry ~1e-10 residues).
pub const ZERO_WEIGHT: f64 = 1e-9;

/// Retrains from θ_0 with policy `gamma` ([T, N], on the host), recording both curves and, with
/// `law`, the Learning-Law statistics (per step also ∇L_dev, the N contributions CT and the N
/// training losses at θ_t: two more passes over the training set than plain training).
pub fn retrain<E: Engine>(
    e: &mut E,
    theta0: &[E::Real],
    gamma: &[E::Real],
    unroll: Unroll,
    law: bool,
) -> Result<(Curves, Option<LawStats>)> {
    retrain_with_progress(e, theta0, gamma, unroll, law, &mut || {})
}

/// `retrain`, calling `step_done` after every inner step (for progress display).
pub fn retrain_with_progress<E: Engine>(
    e: &mut E,
    theta0: &[E::Real],
    gamma: &[E::Real],
    unroll: Unroll,
    law: bool,
    step_done: &mut dyn FnMut(),
) -> Result<(Curves, Option<LawStats>)> {
    unroll.validate()?;
    let (p, n) = (e.num_params(), e.num_train());
    let gamma_dev = e.upload(gamma)?;
    let mut theta = e.upload(theta0)?;
    let mut next = e.zeros(p)?;
    let (mut g_dev, mut ct, mut losses) = (e.zeros(p)?, e.zeros(n)?, e.zeros(n)?);
    let mut curves = Curves::default();
    let mut acc = LawAccumulator::default();
    for t in 0..unroll.steps {
        curves.test.push(e.loss(Set::Test, &theta)?);
        if law {
            curves.dev.push(e.loss_grad(Set::Dev, &theta, &mut g_dev)?);
            e.train_dots(&theta, &g_dev, &mut ct)?;
            e.train_losses(&theta, &mut losses)?;
            acc.add(&gamma[t * n..(t + 1) * n], &e.download(&ct)?, &e.download(&losses)?);
        } else {
            curves.dev.push(e.loss(Set::Dev, &theta)?);
        }
        e.forward_step(&theta, &gamma_dev, t, unroll.eta, &mut next, None)?;
        std::mem::swap(&mut theta, &mut next);
        step_done();
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
    zero_share_per_step: Vec<Option<f64>>,
    /// Ratio histogram, count and count below 0.2 of the well-learned examples.
    ratio_hist: Vec<u64>,
    well_learned: u64,
    well_learned_small: u64,
    well_learned_per_step: Vec<u32>,
}

impl LawAccumulator {
    /// One step: γ_t, CT_t and the training losses l_n(θ_t).
    fn add<R: Real>(&mut self, gamma: &[R], ct: &[R], losses: &[R]) {
        let (mut mean, mut used) = (0.0, 0usize);
        let (mut harmful, mut harmful_zero) = (0u64, 0u64);
        let mut max_gamma = 0.0f64;
        for (&g, &c) in gamma.iter().zip(ct) {
            let (g, c) = (g.f64(), c.f64());
            mean += g * c;
            used += (g > ZERO_WEIGHT) as usize;
            max_gamma = max_gamma.max(g);
            if c <= 0.0 {
                harmful += 1;
                harmful_zero += (g <= ZERO_WEIGHT) as u64;
            }
        }
        self.harmful += harmful;
        self.harmful_zero += harmful_zero;
        self.zero_share_per_step.push((harmful > 0).then(|| harmful_zero as f64 / harmful as f64));
        let ss: f64 = gamma.iter().zip(ct).filter(|(g, _)| g.f64() > ZERO_WEIGHT).map(|(_, c)| (c.f64() - mean).powi(2)).sum();
        let s = if used > 1 { (ss / (used - 1) as f64).sqrt() } else { 0.0 };
        self.sim.push(if s > 0.0 { mean / s } else { f64::NAN });

        if self.ratio_hist.is_empty() {
            self.ratio_hist = vec![0; RATIO_BINS];
        }
        let mut learned = 0u32;
        for (&g, &l) in gamma.iter().zip(losses) {
            if l.f64() < WELL_LEARNED_LOSS && max_gamma > 0.0 {
                let r = (g.f64() / max_gamma).clamp(0.0, 1.0);
                self.ratio_hist[((r * RATIO_BINS as f64) as usize).min(RATIO_BINS - 1)] += 1;
                self.well_learned_small += (r < SMALL_RATIO) as u64;
                learned += 1;
            }
        }
        self.well_learned += learned as u64;
        self.well_learned_per_step.push(learned);
    }

    fn finish(self) -> LawStats {
        let defined: Vec<f64> = self.sim.iter().copied().filter(|s| s.is_finite()).collect();
        let count = self.well_learned;
        LawStats {
            // 0 when SIM is nowhere defined (an empty float sum is −0).
            sim_mean: if defined.is_empty() { 0.0 } else { defined.iter().sum::<f64>() / defined.len() as f64 },
            zero_share: if self.harmful > 0 { self.harmful_zero as f64 / self.harmful as f64 } else { 0.0 },
            sim: self.sim,
            zero_share_per_step: self.zero_share_per_step,
            well_learned: WellLearned {
                count,
                ratio_histogram: if count > 0 { self.ratio_hist } else { Vec::new() },
                share_below_0_2: (count > 0).then(|| self.well_learned_small as f64 / count as f64),
                per_step: self.well_learned_per_step,
            },
        }
    }
}

/// The first step t ≥ 1 at which `curve` (over θ_0..θ_T) is at or below `target`; None if never.
pub fn steps_to(curve: &[f64], target: f64) -> Option<usize> {
    curve.iter().enumerate().skip(1).find(|(_, &l)| l <= target).map(|(t, _)| t)
}

/// How many times fewer steps than `steps` `curve` needs to reach `target`; None if never.
pub fn speedup(steps: usize, curve: &[f64], target: f64) -> Option<f64> {
    steps_to(curve, target).map(|t| steps as f64 / t as f64)
}

/// The paper's AR for a given target: T / min{t ≥ 1 : `curve[t]` ≤ target}, T = curve.len() − 1.
pub fn acceleration_ratio(curve: &[f64], target: f64) -> Option<f64> {
    speedup(curve.len().checked_sub(1)?, curve, target)
}

/// AR of a policy against the constant policy, from both curves over θ_0..θ_T (module docs): the
/// steps the constant policy needs to reach its own final loss over those the policy needs.
pub fn acceleration_ratio_against(policy: &[f64], constant: &[f64]) -> Option<f64> {
    let target = *constant.last()?;
    speedup(steps_to(constant, target)?, policy, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn law_accumulator_counts_per_step_shares_and_well_learned_ratios() {
        let mut acc = LawAccumulator::default();
        // Step 0: max γ = 0.5; examples 0 and 2 are well learned (ratios 0.1 and 1.0); two
        // examples have CT ≤ 0, one of them with γ = 0.
        acc.add(&[0.05, 0.0, 0.5, 0.45], &[1.0, -1.0, 2.0, 0.0], &[1e-7, 1.0, 0.0, 0.3]);
        // Step 1: no CT ≤ 0, nothing learned.
        acc.add(&[0.25; 4], &[1.0, 2.0, 3.0, 4.0], &[1.0; 4]);
        let law = acc.finish();
        assert_eq!(law.zero_share_per_step, vec![Some(0.5), None]);
        assert_eq!(law.zero_share, 0.5);
        let w = &law.well_learned;
        // Example 1 has γ = 0 but loss 1: not well learned. Ratios: 0.05/0.5 = 0.1 and 1.0.
        assert_eq!(w.count, 2);
        assert_eq!(w.per_step, vec![2, 0]);
        assert_eq!(w.share_below_0_2, Some(0.5));
        assert_eq!(w.ratio_histogram.len(), RATIO_BINS);
        assert_eq!(w.ratio_histogram[5], 1, "0.1 → bin 5 of 50");
        assert_eq!(w.ratio_histogram[RATIO_BINS - 1], 1, "1.0 → the last bin");
        let cdf = w.cdf();
        assert_eq!(cdf.len(), RATIO_BINS);
        assert!((cdf[9].0 - 0.2).abs() < 1e-12 && cdf[9].1 == 0.5, "{:?}", cdf[9]);
        assert_eq!(cdf[RATIO_BINS - 1], (1.0, 1.0));
    }

    #[test]
    fn no_well_learned_examples_is_none_not_nan() {
        let mut acc = LawAccumulator::default();
        acc.add(&[0.5, 0.5], &[1.0, 1.0], &[0.5, 0.5]);
        let law = acc.finish();
        assert_eq!(law.well_learned.count, 0);
        assert_eq!(law.well_learned.share_below_0_2, None);
        assert!(law.well_learned.ratio_histogram.is_empty());
        assert!(law.sim[0].is_nan(), "no spread: SIM undefined");
    }

    #[test]
    fn law_stats_json_round_trips_nan_and_reads_older_files() {
        let mut acc = LawAccumulator::default();
        acc.add(&[0.5, 0.5], &[1.0, 1.0], &[0.0, 0.5]);
        acc.add(&[0.5, 0.5], &[1.0, -2.0], &[0.0, 0.0]);
        let law = acc.finish();
        let json = serde_json::to_string(&law).unwrap();
        let back: LawStats = serde_json::from_str(&json).unwrap();
        assert!(back.sim[0].is_nan());
        assert_eq!(back.sim[1].to_bits(), law.sim[1].to_bits());
        assert_eq!(back.well_learned, law.well_learned);
        assert_eq!(back.zero_share_per_step, law.zero_share_per_step);
        // A summary written before the per-step and well-learned fields existed.
        let old: LawStats = serde_json::from_str(r#"{"sim":[1.5,null],"sim_mean":1.5,"zero_share":0.25}"#).unwrap();
        assert_eq!(old.sim[0], 1.5);
        assert!(old.sim[1].is_nan());
        assert!(old.zero_share_per_step.is_empty());
        assert_eq!(old.well_learned, WellLearned::default());
    }
}
