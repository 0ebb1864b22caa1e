//! Analysis of an evaluated run (reference §6–7): the numbers behind `learnlaw report`.
//!
//! - Scaling-law fit (Sec. 4.6): L(t) = L0 + (B/t)^β for t > t0. For given (L0, t0), linear
//!   regression of ln(L(t) − L0) on ln t gives slope −β and intercept β·ln B; t0 and L0 are searched
//!   (t0 on a grid up to T/10, L0 on a grid in [0, min L) refined by golden-section search) to
//!   maximise the correlation r. The paper assumes L0 does not depend on the policy, so the two
//!   policies of a run are fitted with one shared (L0, t0), chosen to maximise their mean r.
//! - The acceleration ratio those fits imply (Eq. 9): AR = T^{1−β1/β2} · B1^{β1/β2} / B2, with
//!   (B1, β1) the conventional (constant) policy's fit and (B2, β2) the near-optimal one's: the
//!   step t at which L0 + (B2/t)^β2 reaches the conventional L0 + (B1/T)^β1 is B2·(T/B1)^{β1/β2}.
//! - `RunAnalysis`: everything `learnlaw report` tabulates, from summary.json and curves.csv.
//! - `Heatmap`: the policy γ [T, N] as an image, examples sorted by their total weight and
//!   averaged into at most a few hundred cells per axis.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::eval::{Curves, LawStats};
use crate::policy::Policy;
use crate::run::{RunDir, Summary};
use crate::search::compression_ratio;
use crate::{Error, Result};

/// A fit L(t) = l0 + (b/t)^beta of a loss curve over t0 < t ≤ T.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalingFit {
    pub l0: f64,
    pub t0: usize,
    pub b: f64,
    pub beta: f64,
    /// r² of the linear regression of ln(L − l0) on ln t.
    pub r2: f64,
}

impl ScalingFit {
    /// The fitted loss at step t.
    pub fn loss(&self, t: f64) -> f64 {
        self.l0 + (self.b / t).powf(self.beta)
    }
}

/// The regression of ln(`curve[t]` − l0) on ln t over t0 < t < curve.len() (t ≥ 1): the fit and its
/// correlation r (positive for a falling curve). None with fewer than 3 points, a point at or
/// below l0, no spread, or no falling power law (β ≤ 0, or B not a positive finite number).
pub fn fit_at(curve: &[f64], l0: f64, t0: usize) -> Option<(ScalingFit, f64)> {
    let start = (t0 + 1).max(1);
    if curve.len() < start + 3 {
        return None;
    }
    let (mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (t, &l) in curve.iter().enumerate().skip(start) {
        let d = l - l0;
        if !(d > 0.0 && d.is_finite()) {
            return None;
        }
        let (x, y) = ((t as f64).ln(), d.ln());
        sx += x;
        sy += y;
        sxx += x * x;
        syy += y * y;
        sxy += x * y;
    }
    let n = (curve.len() - start) as f64;
    let (cxx, cyy, cxy) = (sxx - sx * sx / n, syy - sy * sy / n, sxy - sx * sy / n);
    if !(cxx > 0.0 && cyy > 0.0) {
        return None;
    }
    let slope = cxy / cxx;
    let intercept = (sy - slope * sx) / n;
    let r = -cxy / (cxx * cyy).sqrt();
    let beta = -slope;
    let b = (intercept / beta).exp();
    // A power law falls (β > 0) from a positive, finite B; a flat or rising curve has no fit.
    if !(beta > 0.0 && b > 0.0 && b.is_finite()) {
        return None;
    }
    Some((ScalingFit { l0, t0, b, beta, r2: r * r }, r))
}

/// The t0 candidates for a run of `steps` steps: 0 and a geometric grid up to T/10 (the paper's
/// Transformer fit has t0 = 400 of T = 4000), so every fit spans at least a decade of steps.
pub fn t0_grid(steps: usize) -> Vec<usize> {
    let top = steps / 10;
    let mut grid = vec![0];
    if top >= 1 {
        let k = 24;
        for i in 0..=k {
            let t = (top as f64).powf(i as f64 / k as f64).round() as usize;
            if grid.last() != Some(&t) {
                grid.push(t);
            }
        }
    }
    grid
}

/// Fits one curve (`curve[t]` = L(θ_t), t = 0..T), searching t0 and L0 to maximise r.
pub fn fit_scaling_law(curve: &[f64]) -> Option<ScalingFit> {
    fit_scaling_laws(&[curve]).map(|mut v| v.remove(0))
}

/// Fits several curves of the same length with one shared (L0, t0), chosen to maximise the
/// curves' mean r (the paper's assumption that L0 does not depend on the policy).
pub fn fit_scaling_laws(curves: &[&[f64]]) -> Option<Vec<ScalingFit>> {
    let len = curves.first()?.len();
    if curves.iter().any(|c| c.len() != len) || len < 5 {
        return None;
    }
    let mean_r = |l0: f64, t0: usize| -> Option<f64> {
        let mut sum = 0.0;
        for c in curves {
            sum += fit_at(c, l0, t0)?.1;
        }
        Some(sum / curves.len() as f64)
    };
    let mut best: Option<(f64, f64, usize)> = None; // (r, l0, t0)
    for t0 in t0_grid(len - 1) {
        let start = (t0 + 1).max(1);
        let min = curves.iter().flat_map(|c| c[start.min(len)..].iter().copied()).fold(f64::INFINITY, f64::min);
        if !(min > 0.0 && min.is_finite()) {
            continue;
        }
        // L0 = u·min: a uniform grid in u plus points crowding toward u = 1.
        let mut us: Vec<f64> = (0..100).map(|k| k as f64 / 100.0).collect();
        us.extend((1..=64).map(|j| 1.0 - 2f64.powf(-(j as f64) / 4.0)));
        us.sort_by(|a, b| a.total_cmp(b));
        us.dedup();
        let rs: Vec<Option<f64>> = us.iter().map(|&u| mean_r(u * min, t0)).collect();
        let Some((i, r)) = rs.iter().enumerate().filter_map(|(i, r)| r.map(|r| (i, r))).max_by(|a, b| a.1.total_cmp(&b.1)) else {
            continue;
        };
        // Golden-section refinement between the neighbouring grid points.
        let (mut lo, mut hi) = (us[i.saturating_sub(1)], us.get(i + 1).copied().unwrap_or(us[i]));
        let f = |u: f64| mean_r(u * min, t0).unwrap_or(f64::NEG_INFINITY);
        let (mut u_best, mut r_best) = (us[i], r);
        let g = (5f64.sqrt() - 1.0) / 2.0;
        let (mut a, mut b) = (hi - g * (hi - lo), lo + g * (hi - lo));
        let (mut fa, mut fb) = (f(a), f(b));
        for _ in 0..60 {
            if fa > fb {
                hi = b;
                b = a;
                fb = fa;
                a = hi - g * (hi - lo);
                fa = f(a);
            } else {
                lo = a;
                a = b;
                fa = fb;
                b = lo + g * (hi - lo);
                fb = f(b);
            }
        }
        for (u, r) in [(a, fa), (b, fb)] {
            if r > r_best {
                (u_best, r_best) = (u, r);
            }
        }
        if best.is_none_or(|(br, _, _)| r_best > br) {
            best = Some((r_best, u_best * min, t0));
        }
    }
    let (_, l0, t0) = best?;
    curves.iter().map(|c| fit_at(c, l0, t0).map(|(fit, _)| fit)).collect()
}

/// The acceleration ratio implied by two scaling-law fits (Eq. 9): how many times fewer steps the
/// near-optimal policy (fit 2) needs to reach the conventional policy's (fit 1) loss at step T,
/// AR = T^{1−β1/β2} · B1^{β1/β2} / B2 (both fits with the same L0).
pub fn acceleration_ratio_from_fits(steps: usize, conventional: &ScalingFit, optimised: &ScalingFit) -> f64 {
    let q = conventional.beta / optimised.beta;
    // In logs: the B's can be huge (the paper's 3.16e8) and the powers overflow-prone.
    ((1.0 - q) * (steps as f64).ln() + q * conventional.b.ln() - optimised.b.ln()).exp()
}

/// The constant and the optimised policy's fits of one curve kind, with one shared (L0, t0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitPair {
    pub constant: ScalingFit,
    pub policy: ScalingFit,
    /// |B_policy − B_constant| / B_constant (the paper's "96.6%"; Table 2's |ΔB|/B).
    pub rel_delta_b: f64,
    /// |β_policy − β_constant| / β_constant (the paper's "21.2%").
    pub rel_delta_beta: f64,
    /// Eq. 9's AR from the two fits.
    pub ar_from_fits: f64,
}

impl FitPair {
    pub fn new(steps: usize, constant: &[f64], policy: &[f64]) -> Option<Self> {
        let fits = fit_scaling_laws(&[constant, policy])?;
        let (c, p) = (fits[0], fits[1]);
        Some(FitPair {
            constant: c,
            policy: p,
            rel_delta_b: ((p.b - c.b) / c.b).abs(),
            rel_delta_beta: ((p.beta - c.beta) / c.beta).abs(),
            ar_from_fits: acceleration_ratio_from_fits(steps, &c, &p),
        })
    }
}

/// The constant and the optimised policy's curves of an evaluation (curves.csv).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvalCurves {
    pub constant: Curves,
    pub policy: Curves,
}

impl EvalCurves {
    /// Parses curves.csv (`step,dev_constant,test_constant,dev_policy,test_policy`).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text).map_err(|problem| Error::format(path, problem))
    }

    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut lines = text.lines();
        let header = lines.next().ok_or("empty file")?;
        let cols: Vec<&str> = header.split(',').map(str::trim).collect();
        let col = |name: &str| cols.iter().position(|c| *c == name).ok_or(format!("no column `{name}` in the header {header:?}"));
        let idx = [col("step")?, col("dev_constant")?, col("test_constant")?, col("dev_policy")?, col("test_policy")?];
        let mut out = EvalCurves::default();
        for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split(',').collect();
            let get = |k: usize| -> std::result::Result<f64, String> {
                let f = fields.get(idx[k]).ok_or(format!("line {}: too few columns", i + 2))?;
                f.trim().parse::<f64>().map_err(|e| format!("line {}: {f:?}: {e}", i + 2))
            };
            if get(0)? as usize != i {
                return Err(format!("line {}: step {} out of order", i + 2, get(0)?));
            }
            out.constant.dev.push(get(1)?);
            out.constant.test.push(get(2)?);
            out.policy.dev.push(get(3)?);
            out.policy.test.push(get(4)?);
        }
        if out.constant.dev.len() < 2 {
            return Err("fewer than two steps".into());
        }
        Ok(out)
    }

    /// T, the number of inner steps (the curves hold θ_0..θ_T).
    pub fn steps(&self) -> usize {
        self.constant.dev.len() - 1
    }
}

/// The numbers of one policy's evaluation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyNumbers {
    /// Area under the curves, (1/T) Σ_{t=0..T} L(θ_t).
    pub auc_test: f64,
    pub auc_dev: f64,
    pub final_test: f64,
    pub final_dev: f64,
    /// CR on the (whole) desired set, from the evaluation's dev curve.
    pub cr_dev: f64,
    pub sim_mean: f64,
    /// #{γ = 0, CT ≤ 0} / #{CT ≤ 0}.
    pub zero_share: f64,
    /// Well-learned (l < 1e-6) (t, n) pairs and the share of them with γ < 0.2·max γ.
    pub well_learned: u64,
    pub well_learned_small_share: Option<f64>,
}

impl PolicyNumbers {
    fn new(curves: &Curves, law: &LawStats, classes: f64) -> Self {
        let steps = curves.dev.len().saturating_sub(1).max(1) as f64;
        let last = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN);
        PolicyNumbers {
            auc_test: curves.test.iter().sum::<f64>() / steps,
            auc_dev: curves.dev.iter().sum::<f64>() / steps,
            final_test: last(&curves.test),
            final_dev: last(&curves.dev),
            cr_dev: compression_ratio_log2(&curves.dev, classes),
            sim_mean: law.sim_mean,
            zero_share: law.zero_share,
            well_learned: law.well_learned.count,
            well_learned_small_share: law.well_learned.share_below_0_2,
        }
    }
}

fn compression_ratio_log2(dev: &[f64], log2_classes: f64) -> f64 {
    compression_ratio(dev, 2) * log2_classes
}

/// Everything `learnlaw report` tabulates, written to report/analysis.json.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunAnalysis {
    pub task: String,
    pub steps: usize,
    /// Outer epochs completed, and the epoch whose policy was evaluated.
    pub epochs_done: usize,
    pub evaluated_epoch: Option<usize>,
    /// J (search's desired set) of the constant policy and of the last policy, and their CRs.
    pub j_first: f64,
    pub j_last: f64,
    pub cr_first: f64,
    pub cr_last: f64,
    /// Held-out J of the constant and the best policy (with `holdout`).
    pub heldout_j_first: Option<f64>,
    pub heldout_j_best: Option<f64>,
    /// Measured acceleration ratios (None: the constant policy's final loss never reached).
    pub ar_test: Option<f64>,
    pub ar_dev: Option<f64>,
    /// log2 |V| used for the CRs (1 for the perceptron).
    pub log2_classes: f64,
    pub constant: PolicyNumbers,
    pub policy: PolicyNumbers,
    /// Scaling-law fits of the test and the dev curves (None when a curve cannot be fitted).
    pub fit_test: Option<FitPair>,
    pub fit_dev: Option<FitPair>,
}

/// What a run directory needs for a report, read and checked.
pub struct EvaluatedRun {
    pub summary: Summary,
    pub curves: EvalCurves,
    /// The evaluated policy (the best by held-out J with `holdout`, else the last), and its epoch.
    pub policy: Policy,
    pub policy_epoch: usize,
    /// Outer epochs the search has completed (the policy file's history): more than the
    /// evaluation's means the evaluation is stale.
    pub epochs_done: usize,
}

impl EvaluatedRun {
    /// Reads summary.json, curves.csv and the evaluated policy, checked against the run's config
    /// (`RunDir::read_checked`); a run that was searched but not evaluated is an error that says to
    /// run `learnlaw eval` first.
    pub fn read(dir: &RunDir) -> Result<Self> {
        let root = dir.root.display().to_string();
        if !dir.config_path().is_file() {
            return Err(Error::bad_input(root, "not a run directory (no config.toml)"));
        }
        let run = dir.read_checked()?;
        let Some((policy, history)) = run.saved else {
            return Err(Error::bad_input(root, "no policy.safetensors: run `learnlaw search` first"));
        };
        let summary = match run.summary {
            Some(s) if s.evaluation.is_some() && dir.curves_path().exists() => s,
            Some(_) => {
                return Err(Error::bad_input(
                    root.clone(),
                    format!("the run was searched but not evaluated: run `learnlaw eval {root}` first"),
                ))
            }
            None => {
                let problem = format!(
                    "no summary.json: finish the search with `learnlaw search`, or evaluate it as it is with `learnlaw eval {root}`"
                );
                return Err(Error::bad_input(root, problem));
            }
        };
        let curves = EvalCurves::read(&dir.curves_path())?;
        let epochs_done = history.epochs_done();
        let (policy, policy_epoch) = match run.best {
            Some((best, epoch)) if run.config.search.holdout.is_some() => (best, epoch),
            _ => (policy, epochs_done),
        };
        Ok(EvaluatedRun { summary, curves, policy, policy_epoch, epochs_done })
    }

    /// (epochs the evaluation saw, epochs done now) when the search went on after the evaluation.
    pub fn stale_evaluation(&self) -> Option<(usize, usize)> {
        let s = &self.summary;
        // Summaries from before `evaluation_epochs_done` have only the evaluated epoch.
        let seen = s.evaluation_epochs_done.or(s.evaluated_epoch.filter(|_| s.best_epoch.is_none()))?;
        (self.epochs_done > seen).then_some((seen, self.epochs_done))
    }

    /// log2 |V| for the CRs: 1 for the perceptron; otherwise recovered from the search's CR and J
    /// of the constant policy (exact when the search used the whole desired set).
    pub fn log2_classes(&self) -> f64 {
        let s = &self.summary;
        if s.task == "perceptron" {
            return 1.0;
        }
        match (s.cr.first(), s.j.first(), self.curves.constant.dev.first()) {
            (Some(&cr), Some(&j), Some(&l0)) if s.steps > 0 => {
                let t = s.steps as f64;
                let x = cr * (t * j - l0) / t;
                if x.is_finite() && x > 0.0 {
                    x
                } else {
                    1.0
                }
            }
            _ => 1.0,
        }
    }

    pub fn analyse(&self) -> RunAnalysis {
        let s = &self.summary;
        let ev = s.evaluation.clone().unwrap_or_default();
        let c = &self.curves;
        let classes = self.log2_classes();
        let steps = c.steps();
        RunAnalysis {
            task: s.task.clone(),
            steps,
            epochs_done: self.epochs_done,
            evaluated_epoch: s.evaluated_epoch,
            j_first: s.j.first().copied().unwrap_or(f64::NAN),
            j_last: s.j.last().copied().unwrap_or(f64::NAN),
            cr_first: s.cr.first().copied().unwrap_or(f64::NAN),
            cr_last: s.cr.last().copied().unwrap_or(f64::NAN),
            heldout_j_first: s.heldout_j.first().copied(),
            heldout_j_best: s.best_epoch.and_then(|b| s.heldout_j.get(b).copied()),
            ar_test: ev.ar,
            ar_dev: ev.ar_dev,
            log2_classes: classes,
            constant: PolicyNumbers::new(&c.constant, &ev.law_constant, classes),
            policy: PolicyNumbers::new(&c.policy, &ev.law_policy, classes),
            fit_test: FitPair::new(steps, &c.constant.test, &c.policy.test),
            fit_dev: FitPair::new(steps, &c.constant.dev, &c.policy.dev),
        }
    }
}

/// A policy as an image: `values[r * cols + c]` is the mean of γ·N (1 = the constant policy's
/// weight) over the steps of row r and the examples of column c, examples sorted by their total
/// weight Σ_t γ_{t,n}, heaviest first.
#[derive(Clone, Debug, PartialEq)]
pub struct Heatmap {
    pub rows: usize,
    pub cols: usize,
    /// Step range of each row: `row_edges[r]..row_edges[r + 1]`.
    pub row_edges: Vec<usize>,
    /// Rank range (in the sorted order) of each column.
    pub col_edges: Vec<usize>,
    pub values: Vec<f64>,
}

fn edges(len: usize, bins: usize) -> Vec<usize> {
    let bins = bins.clamp(1, len.max(1));
    (0..=bins).map(|i| i * len / bins).collect()
}

impl Heatmap {
    /// Averages `policy` into at most `max_rows` × `max_cols` cells.
    pub fn new(policy: &Policy, max_rows: usize, max_cols: usize) -> Self {
        let (steps, n) = (policy.steps, policy.examples);
        let mut total = vec![0.0f64; n];
        for t in 0..steps {
            for (acc, &g) in total.iter_mut().zip(policy.row(t)) {
                *acc += g as f64;
            }
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| total[b].total_cmp(&total[a]).then(a.cmp(&b)));
        let (row_edges, col_edges) = (edges(steps, max_rows), edges(n, max_cols));
        let (rows, cols) = (row_edges.len() - 1, col_edges.len() - 1);
        // Column of every example, by its rank.
        let mut col_of = vec![0usize; n];
        for c in 0..cols {
            for &ex in &order[col_edges[c]..col_edges[c + 1]] {
                col_of[ex] = c;
            }
        }
        let mut values = vec![0.0f64; rows * cols];
        for r in 0..rows {
            let cell = &mut values[r * cols..(r + 1) * cols];
            for t in row_edges[r]..row_edges[r + 1] {
                for (ex, &g) in policy.row(t).iter().enumerate() {
                    cell[col_of[ex]] += g as f64;
                }
            }
            let height = (row_edges[r + 1] - row_edges[r]) as f64;
            for (c, v) in cell.iter_mut().enumerate() {
                let width = (col_edges[c + 1] - col_edges[c]) as f64;
                *v *= n as f64 / (height * width);
            }
        }
        Heatmap { rows, cols, row_edges, col_edges, values }
    }

    pub fn get(&self, r: usize, c: usize) -> f64 {
        self.values[r * self.cols + c]
    }

    /// The q-quantile (0..=1) of the cell values, e.g. for a colour scale that is not dominated by
    /// a few extreme cells.
    pub fn quantile(&self, q: f64) -> f64 {
        let mut v: Vec<f64> = self.values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        v[((q.clamp(0.0, 1.0) * (v.len() - 1) as f64).round()) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn power_curve(steps: usize, l0: f64, b: f64, beta: f64) -> Vec<f64> {
        // θ_0's loss is not on the law (t = 0); give it something large.
        std::iter::once(10.0).chain((1..=steps).map(|t| l0 + (b / t as f64).powf(beta))).collect()
    }

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    #[test]
    fn regression_at_the_true_l0_recovers_b_and_beta_exactly() {
        let c = power_curve(2000, 0.051, 3.16e8, 0.12);
        let (fit, r) = fit_at(&c, 0.051, 0).unwrap();
        assert!(rel(fit.beta, 0.12) < 1e-9 && rel(fit.b, 3.16e8) < 1e-6, "{fit:?}");
        assert!((r - 1.0).abs() < 1e-12 && (fit.r2 - 1.0).abs() < 1e-12);
        assert!(rel(fit.loss(700.0), c[700]) < 1e-9);
        // Below the curve's minimum only.
        assert!(fit_at(&c, c[2000], 0).is_none());
        assert!(fit_at(&c[..3], 0.0, 0).is_none(), "too few points");
    }

    #[test]
    fn search_recovers_l0_b_and_beta_of_a_synthetic_curve() {
        for &(l0, b, beta) in &[(0.051, 3.16e8, 0.12), (0.0837, 40.0, 0.55), (0.0, 900.0, 0.3), (0.3, 2.5, 1.1)] {
            let c = power_curve(2000, l0, b, beta);
            let fit = fit_scaling_law(&c).unwrap();
            assert!((fit.l0 - l0).abs() < 1e-4 * (1.0 + l0), "L0 {l0}: {fit:?}");
            assert!(rel(fit.beta, beta) < 1e-3, "β {beta}: {fit:?}");
            assert!(rel(fit.b, b) < 2e-2, "B {b}: {fit:?}");
            assert!(fit.r2 > 1.0 - 1e-9, "{fit:?}");
        }
    }

    #[test]
    fn search_finds_the_start_of_the_power_law_regime() {
        // A transient before t = 150 that is not on the law: the fit must skip it.
        let mut c = power_curve(2000, 0.1, 50.0, 0.5);
        for (t, l) in c.iter_mut().enumerate().take(150) {
            *l += 0.5 * (-(t as f64) / 30.0).exp();
        }
        let fit = fit_scaling_law(&c).unwrap();
        assert!(fit.t0 >= 100, "{fit:?}");
        assert!(rel(fit.beta, 0.5) < 1e-2 && (fit.l0 - 0.1).abs() < 1e-3, "{fit:?}");
    }

    #[test]
    fn shared_fit_uses_one_l0_and_t0() {
        let a = power_curve(1000, 0.05, 200.0, 0.4);
        let b = power_curve(1000, 0.05, 20.0, 0.5);
        let fits = fit_scaling_laws(&[&a, &b]).unwrap();
        assert_eq!(fits[0].l0, fits[1].l0);
        assert_eq!(fits[0].t0, fits[1].t0);
        assert!((fits[0].l0 - 0.05).abs() < 1e-4, "{fits:?}");
        assert!(rel(fits[0].beta, 0.4) < 1e-3 && rel(fits[1].beta, 0.5) < 1e-3, "{fits:?}");
        let pair = FitPair::new(1000, &a, &b).unwrap();
        assert!(rel(pair.rel_delta_b, 0.9) < 2e-2 && rel(pair.rel_delta_beta, 0.25) < 1e-2, "{pair:?}");
    }

    #[test]
    fn ar_from_fits_is_where_the_optimised_fit_reaches_the_conventional_final_loss() {
        let steps = 4000;
        let conv = ScalingFit { l0: 0.051, t0: 400, b: 3.16e8, beta: 0.12, r2: 1.0 };
        let opt = ScalingFit { l0: 0.051, t0: 400, b: 1.99e7, beta: 0.14, r2: 1.0 };
        let ar = acceleration_ratio_from_fits(steps, &conv, &opt);
        let t = steps as f64 / ar;
        assert!(rel(opt.loss(t), conv.loss(steps as f64)) < 1e-12, "AR {ar}");
        // The same policy: no acceleration.
        assert!((acceleration_ratio_from_fits(steps, &conv, &conv) - 1.0).abs() < 1e-12);
        // Same β, B 4× smaller at β = 1: exactly 4× fewer steps.
        let a = ScalingFit { l0: 0.0, t0: 0, b: 8.0, beta: 1.0, r2: 1.0 };
        let b = ScalingFit { b: 2.0, ..a };
        assert!((acceleration_ratio_from_fits(100, &a, &b) - 4.0).abs() < 1e-12);
    }

    #[test]
    fn flat_or_rising_curves_have_no_fit() {
        // Training that makes no progress: no power law, rather than B = 0, β = 0 and NaN ratios.
        let flat = vec![0.7; 200];
        assert!(fit_scaling_law(&flat).is_none());
        assert!(FitPair::new(199, &flat, &flat).is_none());
        let rising: Vec<f64> = (0..200).map(|t| 0.5 + 1e-3 * t as f64).collect();
        assert!(fit_scaling_law(&rising).is_none());
    }

    #[test]
    fn t0_grid_starts_at_zero_and_stops_at_a_tenth() {
        let g = t0_grid(2000);
        assert_eq!(g[0], 0);
        assert_eq!(*g.last().unwrap(), 200);
        assert!(g.windows(2).all(|w| w[0] < w[1]), "{g:?}");
        assert_eq!(t0_grid(5), vec![0]);
    }

    #[test]
    fn curves_csv_parses_and_rejects_garbage() {
        let text = "step,dev_constant,test_constant,dev_policy,test_policy\n0,1,2,3,4\n1,0.5,1.5,2.5,3.5\n";
        let c = EvalCurves::parse(text).unwrap();
        assert_eq!(c.steps(), 1);
        assert_eq!(c.constant.test, vec![2.0, 1.5]);
        assert_eq!(c.policy.dev, vec![3.0, 2.5]);
        assert!(EvalCurves::parse("").is_err());
        assert!(EvalCurves::parse("step,dev_constant\n0,1\n").unwrap_err().contains("test_constant"));
        assert!(EvalCurves::parse(&text.replace("0.5", "x")).unwrap_err().contains("line 3"));
        assert!(EvalCurves::parse(&text.replace("\n1,", "\n7,")).unwrap_err().contains("out of order"));
    }

    #[test]
    fn heatmap_sorts_by_total_weight_and_averages_cells() {
        // T = 4, N = 6: example 5 gets all weight at steps 0..2, example 2 at steps 2..4.
        let mut gamma = vec![0.0f32; 24];
        for t in 0..4 {
            gamma[t * 6 + if t < 2 { 5 } else { 2 }] = 1.0;
        }
        let p = Policy { steps: 4, examples: 6, gamma };
        let full = Heatmap::new(&p, 100, 100);
        assert_eq!((full.rows, full.cols), (4, 6));
        // Ties in total weight keep index order: 2 then 5 first, then 0, 1, 3, 4.
        assert_eq!(full.get(0, 1), 6.0, "γ·N of example 5 at step 0");
        assert_eq!(full.get(0, 0), 0.0);
        assert_eq!(full.get(3, 0), 6.0);
        let small = Heatmap::new(&p, 2, 3);
        assert_eq!((small.rows, small.cols), (2, 3));
        assert_eq!(small.row_edges, vec![0, 2, 4]);
        assert_eq!(small.col_edges, vec![0, 2, 4, 6]);
        // Cell (0, 0): steps 0–1 × examples {2, 5}: weight 2 over 4 entries, ×N = 3.
        assert_eq!(small.get(0, 0), 3.0);
        assert_eq!(small.get(1, 0), 3.0);
        assert_eq!(small.get(0, 2), 0.0);
        // Mean of γ·N over the whole image is 1.
        let mean: f64 = small.values.iter().sum::<f64>() / 6.0;
        assert!((mean - 1.0).abs() < 1e-12);
        assert!((Heatmap::new(&Policy::constant(3, 5), 400, 400).quantile(0.99) - 1.0).abs() < 1e-6);
    }
}
