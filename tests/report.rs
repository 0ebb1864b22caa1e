//! Tests of the analysis behind `learnlaw report` on a real (tiny) search and evaluation: the
//! per-step Learning-Law statistics that evaluation now records, the scaling-law fits of the
//! evaluated curves and the policy heatmap, with the CPU engine in f64.
use std::ops::ControlFlow;
use std::path::Path;

use learnlaw::analysis::{EvaluatedRun, Heatmap};
use learnlaw::data::{init_theta, PerceptronData, PerceptronRecipe};
use learnlaw::eval::{SMALL_RATIO, WELL_LEARNED_LOSS, ZERO_WEIGHT};
use learnlaw::perceptron::CpuPerceptron;
use learnlaw::policy::Policy;
use learnlaw::run::{self, EpochEvent, RunConfig, RunDir};
use learnlaw::search::{OuterOptimizer, SearchConfig};
use learnlaw::{Engine, Error};

const STEPS: usize = 200;
const ETA: f64 = 0.3;

struct Run {
    _tmp: tempfile::TempDir,
    dir: RunDir,
    data: PerceptronData,
    theta0: Vec<f32>,
}

/// A searched (and, with `evaluate`, evaluated) run in a temporary directory.
fn searched_run(evaluate: bool) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = PerceptronRecipe { dim: 8, n_train: 64, n_dev: 32, n_test: 32, ..Default::default() };
    let data = PerceptronData::generate(&recipe).unwrap();
    let path = tmp.path().join("data.safetensors");
    data.save(&path).unwrap();
    let theta0 = init_theta(data.dim, 10);
    let cfg = RunConfig {
        task: "perceptron".into(),
        backend: "cpu-f64".into(),
        data: path.clone(),
        data_fingerprint: run::fingerprint(&path).unwrap(),
        init_seed: 10,
        theta0: None,
        model: None,
        search: SearchConfig {
            steps: STEPS,
            eta: ETA,
            epochs: 4,
            outer_lr: 2.0,
            optimizer: OuterOptimizer::Sgd,
            checkpoint_every: None,
            holdout: None,
            reg_l2: None,
            block_steps: None,
        },
        trained: None,
    };
    let dir = RunDir::new(tmp.path().join("run"));
    let mut e = CpuPerceptron::<f64>::new(&data).unwrap();
    run::search(&mut e, &dir, &cfg, &theta0, |_: &EpochEvent| ControlFlow::Continue(())).unwrap();
    if evaluate {
        run::evaluate(&mut e, &dir, &theta0).unwrap();
    }
    Run { _tmp: tmp, dir, data, theta0 }
}

/// Well-learned statistics recomputed step by step through the engine: (count, count with
/// γ < 0.2·max γ, count per step).
fn well_learned_by_hand(data: &PerceptronData, theta0: &[f32], policy: &Policy) -> (u64, u64, Vec<u32>) {
    let mut e = CpuPerceptron::<f64>::new(data).unwrap();
    let gamma: Vec<f64> = policy.gamma.iter().map(|&g| g as f64).collect();
    let gamma_dev = e.upload(&gamma).unwrap();
    let mut theta = e.upload(&theta0.iter().map(|&x| x as f64).collect::<Vec<_>>()).unwrap();
    let mut next = e.zeros(theta0.len()).unwrap();
    let mut losses = e.zeros(policy.examples).unwrap();
    let (mut count, mut small, mut per_step) = (0u64, 0u64, Vec::new());
    for t in 0..policy.steps {
        e.train_losses(&theta, &mut losses).unwrap();
        let l = e.download(&losses).unwrap();
        let row = &gamma[t * policy.examples..(t + 1) * policy.examples];
        let max = row.iter().fold(0.0f64, |m, &g| m.max(g));
        let learned: Vec<usize> = (0..policy.examples).filter(|&n| l[n] < WELL_LEARNED_LOSS).collect();
        count += learned.len() as u64;
        small += learned.iter().filter(|&&n| row[n] < SMALL_RATIO * max).count() as u64;
        per_step.push(learned.len() as u32);
        e.forward_step(&theta, &gamma_dev, t, ETA, &mut next, None).unwrap();
        std::mem::swap(&mut theta, &mut next);
    }
    (count, small, per_step)
}

#[test]
fn evaluation_records_per_step_zero_shares_and_well_learned_weights() {
    let r = searched_run(true);
    let summary = r.dir.read_summary().unwrap();
    let ev = summary.evaluation.as_ref().unwrap();
    let (policy, _) = r.dir.read_policy().unwrap().unwrap();

    for (law, gamma) in [(&ev.law_constant, Policy::constant(STEPS, 64)), (&ev.law_policy, policy.clone())] {
        assert_eq!(law.zero_share_per_step.len(), STEPS);
        assert_eq!(law.well_learned.per_step.len(), STEPS);
        let (count, small, per_step) = well_learned_by_hand(&r.data, &r.theta0, &gamma);
        assert!(count > 0, "the test problem must learn some examples perfectly");
        assert_eq!(law.well_learned.count, count);
        assert_eq!(law.well_learned.per_step, per_step);
        assert_eq!(law.well_learned.ratio_histogram.iter().sum::<u64>(), count);
        let share = law.well_learned.share_below_0_2.unwrap();
        assert!((share - small as f64 / count as f64).abs() < 1e-12, "{share} vs {small}/{count}");
        // Shares per step are shares; a step without any zero weight has share 0.
        for (t, s) in law.zero_share_per_step.iter().enumerate() {
            if let Some(s) = s {
                assert!((0.0..=1.0).contains(s), "step {t}: {s}");
                if gamma.row(t).iter().all(|&g| g as f64 > ZERO_WEIGHT) {
                    assert_eq!(*s, 0.0, "step {t}");
                }
            }
        }
    }
    // The constant policy: no zero weights, every well-learned ratio is 1 (the last bin).
    assert_eq!(ev.law_constant.zero_share, 0.0);
    assert_eq!(ev.law_constant.well_learned.share_below_0_2, Some(0.0));
    let hist = &ev.law_constant.well_learned.ratio_histogram;
    assert_eq!(hist[hist.len() - 1], ev.law_constant.well_learned.count);
}

#[test]
fn analysis_of_an_evaluated_run() {
    let r = searched_run(true);
    let run = EvaluatedRun::read(&r.dir).unwrap();
    let a = run.analyse();
    let s = &run.summary;
    let ev = s.evaluation.as_ref().unwrap();
    assert_eq!(a.steps, STEPS);
    assert_eq!(a.j_first, s.j[0]);
    assert_eq!(a.j_last, *s.j.last().unwrap());
    assert!(a.j_last < a.j_first);
    assert_eq!(a.ar_test, ev.ar);
    assert_eq!(a.ar_dev, ev.ar_dev);
    assert_eq!(a.log2_classes, 1.0);
    assert!((a.constant.auc_test - ev.auc_test_constant).abs() < 1e-12);
    assert!((a.policy.auc_dev - ev.auc_dev_policy).abs() < 1e-12);
    // The evaluation's CR of the constant policy is the search's epoch-0 CR (same dev set, same θ_0).
    assert!((a.constant.cr_dev - a.cr_first).abs() < 1e-9 * a.cr_first, "{} vs {}", a.constant.cr_dev, a.cr_first);

    // The loss curves of this problem follow a power law closely over the late steps.
    for fits in [a.fit_test.as_ref().unwrap(), a.fit_dev.as_ref().unwrap()] {
        let (c, p) = (&fits.constant, &fits.policy);
        assert_eq!((c.l0, c.t0), (p.l0, p.t0), "one shared L0 and t0");
        assert!(c.l0 >= 0.0 && c.t0 <= STEPS / 10);
        for f in [c, p] {
            assert!(f.r2 > 0.9 && f.beta > 0.0 && f.b.is_finite() && f.b > 0.0, "{f:?}");
        }
        assert!(fits.ar_from_fits.is_finite() && fits.ar_from_fits > 0.0);
    }
    // The optimised policy is faster; Eq. 9 on the fits says so too (measured AR ≥ 1 here).
    let measured = a.ar_dev.expect("the optimised policy reaches the constant policy's final dev loss");
    let from_fits = a.fit_dev.as_ref().unwrap().ar_from_fits;
    assert!(measured > 1.0 && from_fits > 1.0, "measured {measured}, from fits {from_fits}");
    assert!((from_fits / measured - 1.0).abs() < 0.5, "measured {measured}, from fits {from_fits}");

    // The heatmap of the evaluated policy keeps its mean weight γ·N = 1 (cells weighted by their
    // size: 64 examples in 40 columns are 1 or 2 wide).
    let h = Heatmap::new(&run.policy, 50, 40);
    assert_eq!((h.rows, h.cols), (50, 40));
    let mut mean = 0.0;
    for r in 0..h.rows {
        for c in 0..h.cols {
            let area = (h.row_edges[r + 1] - h.row_edges[r]) * (h.col_edges[c + 1] - h.col_edges[c]);
            mean += h.get(r, c) * area as f64 / (STEPS * 64) as f64;
        }
    }
    assert!((mean - 1.0).abs() < 1e-5, "{mean}");

    // analysis.json round-trips.
    let json = serde_json::to_string(&a).unwrap();
    let back: learnlaw::analysis::RunAnalysis = serde_json::from_str(&json).unwrap();
    assert_eq!(back.fit_test.unwrap().constant.t0, a.fit_test.unwrap().constant.t0);
}

#[test]
fn a_run_that_was_not_evaluated_says_to_run_eval() {
    let r = searched_run(false);
    let err = EvaluatedRun::read(&r.dir).err().expect("not evaluated");
    assert!(matches!(err, Error::BadInput { .. }), "{err}");
    assert!(err.to_string().contains("learnlaw eval"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = EvaluatedRun::read(&RunDir::new(empty.path())).err().expect("not a run");
    assert!(err.to_string().contains("not a run directory"), "{err}");
}

#[test]
fn a_summary_from_before_the_per_step_statistics_still_reports() {
    let r = searched_run(true);
    let path = r.dir.summary_path();
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for law in ["law_constant", "law_policy"] {
        let obj = json["evaluation"][law].as_object_mut().unwrap();
        obj.remove("zero_share_per_step").unwrap();
        obj.remove("well_learned").unwrap();
    }
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
    let run = EvaluatedRun::read(&r.dir).unwrap();
    let a = run.analyse();
    assert_eq!(a.policy.well_learned, 0);
    assert_eq!(a.policy.well_learned_small_share, None);
    assert!(a.fit_test.is_some());
    assert!(Path::new(&r.dir.curves_path()).exists());
}

/// An evaluation made before the search went on is stale: the report says so (it draws the
/// policy of the later epoch), and evaluating again clears it.
#[test]
fn an_evaluation_older_than_the_search_is_stale() {
    let r = searched_run(false);
    let cfg = r.dir.read_config().unwrap();
    let dir = RunDir::new(r.dir.root.with_file_name("stale"));
    let mut e = CpuPerceptron::<f64>::new(&r.data).unwrap();
    run::search(
        &mut e,
        &dir,
        &cfg,
        &r.theta0,
        |ev: &EpochEvent| if ev.epoch == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) },
    )
    .unwrap();
    run::evaluate(&mut e, &dir, &r.theta0).unwrap();
    let at_two = EvaluatedRun::read(&dir).unwrap();
    assert_eq!((at_two.stale_evaluation(), at_two.summary.evaluated_epoch, at_two.policy_epoch), (None, Some(2), 2));
    run::search(&mut e, &dir, &cfg, &r.theta0, |_: &EpochEvent| ControlFlow::Continue(())).unwrap();
    let later = EvaluatedRun::read(&dir).unwrap();
    assert_eq!(later.stale_evaluation(), Some((2, 4)));
    assert_eq!((later.policy_epoch, later.analyse().epochs_done), (4, 4));
    run::evaluate(&mut e, &dir, &r.theta0).unwrap();
    assert_eq!(EvaluatedRun::read(&dir).unwrap().stale_evaluation(), None);
}
