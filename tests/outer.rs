//! The outer optimisers beside the paper's SGD (exponentiated gradient, Adam), the held-out
//! desired part with early stopping, the L2 pull toward the constant policy and block policies, on small
//! generated perceptron problems (D = 8, N = 64, T = 30) with the CPU engine in f64.
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use learnlaw::data::{init_theta, PerceptronData, PerceptronRecipe};
use learnlaw::perceptron::CpuPerceptron;
use learnlaw::policy::Policy;
use learnlaw::run::{self, EpochEvent, RunConfig, RunDir};
use learnlaw::search::{OuterOptimizer, Search, SearchConfig};
use learnlaw::unroll::{Unroll, Workspace};
use learnlaw::Engine;

const STEPS: usize = 30;
const ETA: f64 = 0.3;
const N: usize = 64;

fn recipe() -> PerceptronRecipe {
    PerceptronRecipe { dim: 8, n_train: N, n_dev: 32, n_test: 32, ..Default::default() }
}

struct Problem {
    data: PerceptronData,
    path: PathBuf,
    theta0: Vec<f32>,
}

fn problem(dir: &Path, recipe: &PerceptronRecipe) -> Problem {
    let data = PerceptronData::generate(recipe).unwrap();
    let path = dir.join("data.safetensors");
    data.save(&path).unwrap();
    let theta0 = init_theta(data.dim, 10);
    Problem { data, path, theta0 }
}

fn config(optimizer: OuterOptimizer, epochs: usize, outer_lr: f64) -> SearchConfig {
    SearchConfig {
        steps: STEPS,
        eta: ETA,
        epochs,
        outer_lr,
        optimizer,
        checkpoint_every: None,
        holdout: None,
        reg_l2: None,
        block_steps: None,
    }
}

fn run_config(p: &Problem, search: SearchConfig) -> RunConfig {
    RunConfig {
        task: "perceptron".into(),
        backend: "cpu-f64".into(),
        data: p.path.clone(),
        data_fingerprint: run::fingerprint(&p.path).unwrap(),
        init_seed: 10,
        theta0: None,
        model: None,
        search,
        trained: None,
    }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn assert_on_simplex(gamma: &[f64], what: &str) {
    for (t, row) in gamma.chunks(N).enumerate() {
        let sum: f64 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-12, "{what}: row {t} sums to {sum}");
        assert!(row.iter().all(|&g| g >= 0.0 && g.is_finite()), "{what}: row {t} has a negative or non-finite weight");
    }
}

/// Runs `epochs` epochs through the Search API, checking the policy after each, and returns J of
/// γ_0..γ_E and the final policy.
fn search_checked(p: &Problem, cfg: &SearchConfig) -> (Vec<f64>, Vec<f64>) {
    let mut e = CpuPerceptron::<f64>::new(&p.data).unwrap();
    let gamma = f64s(&Policy::constant(STEPS, N).gamma);
    let mut s = Search::new(&mut e, cfg, &f64s(&p.theta0), &gamma, 0).unwrap();
    let mut j = Vec::new();
    for epoch in 0..cfg.epochs {
        j.push(s.step(&mut e).unwrap().j);
        assert_on_simplex(&s.policy(&mut e).unwrap(), &format!("{:?} after epoch {epoch}", cfg.optimizer));
    }
    j.push(s.evaluate(&mut e).unwrap().j);
    (j, s.policy(&mut e).unwrap())
}

#[test]
fn exp_grad_keeps_rows_on_the_simplex_and_decreases_j() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path(), &recipe());
    let (j, gamma) = search_checked(&p, &config(OuterOptimizer::ExpGrad, 8, OuterOptimizer::ExpGrad.default_lr()));
    for w in j.windows(2) {
        assert!(w[1] < w[0], "J must decrease every epoch: {j:?}");
    }
    assert!(j[j.len() - 1] < 0.95 * j[0], "a real improvement: {j:?}");
    // Multiplicative updates from the constant policy never produce exact zeros.
    assert!(gamma.iter().all(|&g| g > 0.0));
}

#[test]
fn exp_grad_rows_default_matches_the_formula() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path(), &recipe());
    let mut e = CpuPerceptron::<f64>::new(&p.data).unwrap();
    let gamma: Vec<f64> = [0.5, 0.25, 0.25, 0.0, 0.1, 0.2, 0.3, 0.4].to_vec();
    let grad: Vec<f64> = [1.0, -2.0, 0.5, 3.0, 1e3, 0.0, -1e3, 2.0].to_vec();
    let mut g = e.upload(&gamma).unwrap();
    let d = e.upload(&grad).unwrap();
    e.exp_grad_rows(&mut g, &d, 0.7, 4).unwrap();
    let got = e.download(&g).unwrap();
    for (r, row) in got.chunks(4).enumerate() {
        let w: Vec<f64> = (0..4).map(|i| gamma[4 * r + i] * (-0.7 * grad[4 * r + i]).exp()).collect();
        let sum: f64 = w.iter().sum();
        for i in 0..4 {
            let want = w[i] / sum;
            assert!((row[i] - want).abs() <= 1e-12 * want.max(1e-300) + 1e-300, "row {r}: {row:?} vs {}", want);
        }
    }
    assert_eq!(got[3], 0.0, "a zero weight stays zero");
    assert_eq!(e.max_abs(&d).unwrap(), 1e3);
}

#[test]
fn adam_with_projection_stays_on_the_simplex_and_decreases_j() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path(), &recipe());
    let (j, _) = search_checked(&p, &config(OuterOptimizer::Adam, 8, OuterOptimizer::Adam.default_lr()));
    assert!(j[j.len() - 1] < 0.95 * j[0], "a real improvement: {j:?}");
    // A huge Adam step drives rows to vertices of the simplex; the projection keeps them on it.
    search_checked(&p, &config(OuterOptimizer::Adam, 3, 1e3));
}

/// Block policies: every optimiser keeps the rows of a block equal (γ_t = β_⌊t/B⌋, here blocks of
/// 7 steps with a shorter last block) and decreases J.
#[test]
fn block_policies_keep_rows_equal_within_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path(), &recipe());
    let block = 7;
    for optimizer in [OuterOptimizer::Sgd, OuterOptimizer::ExpGrad, OuterOptimizer::Adam] {
        let lr = if optimizer == OuterOptimizer::Sgd { 1.0 } else { optimizer.default_lr() };
        let (j, gamma) = search_checked(&p, &SearchConfig { block_steps: Some(block), ..config(optimizer, 6, lr) });
        assert!(j[j.len() - 1] < 0.99 * j[0], "{optimizer:?}: J {j:?}");
        for (b, rows) in gamma.chunks(block * N).enumerate() {
            for (t, row) in rows.chunks(N).enumerate() {
                assert_eq!(row, &rows[..N], "{optimizer:?}: block {b}, row {t} differs from the block's first");
            }
        }
        assert_ne!(&gamma[..N], &gamma[(STEPS - 1) * N..], "{optimizer:?}: blocks differ from each other");
    }
}

/// The tied gradient is ∂J/∂β: a central difference of J moving example n's weight in every row
/// of block b (then renormalising nothing: J is defined for any γ) matches the block sum.
#[test]
fn the_tied_gradient_is_the_derivative_along_a_block() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path(), &recipe());
    let mut e = CpuPerceptron::<f64>::new(&p.data).unwrap();
    let block = 7;
    let mut ws = Workspace::new(&mut e, Unroll { steps: STEPS, eta: ETA }, 1).unwrap();
    let theta0 = e.upload(&f64s(&p.theta0)).unwrap();
    let gamma: Vec<f64> = (0..STEPS * N).map(|i| (1.0 + (i % 5) as f64) / (3.0 * N as f64)).collect();
    let gamma_d = e.upload(&gamma).unwrap();
    let mut grad = e.zeros(STEPS * N).unwrap();
    ws.gradient(&mut e, &theta0, &gamma_d, &mut grad).unwrap();
    e.tie_rows(&mut grad, block, N).unwrap();
    let tied = e.download(&grad).unwrap();
    let h = 1e-5;
    for (b, n) in [(0, 3), (2, 40), (4, 63)] {
        let j_at = |e: &mut CpuPerceptron<f64>, ws: &mut Workspace<CpuPerceptron<f64>>, sign: f64| {
            let mut g = gamma.clone();
            for t in b * block..((b + 1) * block).min(STEPS) {
                g[t * N + n] += sign * h;
            }
            let g = e.upload(&g).unwrap();
            ws.forward(e, &theta0, &g).unwrap().j
        };
        let fd = (j_at(&mut e, &mut ws, 1.0) - j_at(&mut e, &mut ws, -1.0)) / (2.0 * h);
        let got = tied[b * block * N + n];
        assert!((got - fd).abs() <= 1e-6 * fd.abs().max(1e-6), "block {b}, example {n}: tied {got} vs finite difference {fd}");
        for t in b * block..((b + 1) * block).min(STEPS) {
            assert_eq!(tied[t * N + n], got, "every row of the block holds the block's gradient");
        }
    }
}

#[test]
fn a_huge_l2_pull_keeps_the_constant_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path(), &recipe());
    for (optimizer, lr) in [(OuterOptimizer::Sgd, 1.0), (OuterOptimizer::ExpGrad, 1.0), (OuterOptimizer::Adam, 0.1)] {
        let cfg = SearchConfig { reg_l2: Some(1e12), ..config(optimizer, 4, lr) };
        let (j, gamma) = search_checked(&p, &cfg);
        let c = 1.0 / N as f64;
        let dev = gamma.iter().fold(0.0f64, |m, g| m.max((g - c).abs()));
        assert!(dev < 1e-6, "{optimizer:?}: max |γ − 1/N| = {dev}");
        assert!((j[j.len() - 1] - j[0]).abs() < 1e-6 * j[0], "{optimizer:?}: J moved {j:?}");
        // Without the pull the same search moves the policy far.
        let (_, free) = search_checked(&p, &config(optimizer, 4, lr));
        assert!(free.iter().any(|g| (g - c).abs() > 1e-3), "{optimizer:?} without reg");
    }
}

#[test]
fn a_small_l2_pull_is_a_little_closer_to_constant() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path(), &recipe());
    let c = 1.0 / N as f64;
    let dist = |g: &[f64]| g.iter().map(|g| (g - c).powi(2)).sum::<f64>();
    let (_, free) = search_checked(&p, &config(OuterOptimizer::Sgd, 4, 1.0));
    let (_, pulled) = search_checked(&p, &SearchConfig { reg_l2: Some(0.5), ..config(OuterOptimizer::Sgd, 4, 1.0) });
    assert!(dist(&pulled) < dist(&free), "{} vs {}", dist(&pulled), dist(&free));
}

/// The paper's update, written out as before the optimisers were added: one gradient, axpy with
/// the decayed lr, projection.
#[test]
fn default_sgd_is_the_papers_update_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path(), &recipe());
    let epochs = 4;
    let cfg = config(OuterOptimizer::Sgd, epochs, 1.0);
    assert_eq!(SearchConfig::paper_perceptron().optimizer, OuterOptimizer::Sgd);
    let (j, gamma) = search_checked(&p, &cfg);

    let mut e = CpuPerceptron::<f64>::new(&p.data).unwrap();
    let unroll = Unroll { steps: STEPS, eta: ETA };
    let mut ws = Workspace::new(&mut e, unroll, 1).unwrap();
    let theta0 = e.upload(&f64s(&p.theta0)).unwrap();
    let mut g = e.upload(&f64s(&Policy::constant(STEPS, N).gamma)).unwrap();
    let mut grad = e.zeros(STEPS * N).unwrap();
    let mut want = Vec::new();
    for epoch in 0..epochs {
        want.push(ws.gradient(&mut e, &theta0, &g, &mut grad).unwrap().j);
        let lr = 1.0 * (epochs - epoch) as f64 / epochs as f64;
        e.axpy(-lr, &grad, &mut g).unwrap();
        e.project_simplex_rows(&mut g, N).unwrap();
    }
    want.push(ws.forward(&mut e, &theta0, &g).unwrap().j);
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&j), bits(&want));
    assert_eq!(bits(&gamma), bits(&e.download(&g).unwrap()));

    // The run config of a default search is written as before: no new keys, and an old
    // config.toml (without them) still reads.
    let run_cfg = run_config(&p, cfg.clone());
    let dir = RunDir::new(tmp.path().join("run"));
    run::search(&mut CpuPerceptron::<f64>::new(&p.data).unwrap(), &dir, &run_cfg, &p.theta0, |_: &EpochEvent| ControlFlow::Continue(()))
        .unwrap();
    let text = std::fs::read_to_string(dir.config_path()).unwrap();
    assert!(!text.contains("holdout") && !text.contains("reg_l2"), "{text}");
    assert!(text.contains("optimizer = \"sgd\""), "{text}");
    assert_eq!(dir.read_config().unwrap(), run_cfg);
    assert!(!dir.best_policy_path().exists());
}

#[test]
fn holdout_and_reg_are_validated() {
    let cfg = SearchConfig { holdout: Some(0.5), reg_l2: Some(0.25), ..config(OuterOptimizer::ExpGrad, 1, 1.0) };
    cfg.validate().unwrap();
    for (bad, field) in [(Some(0.0), "holdout"), (Some(1.0), "holdout"), (Some(f64::NAN), "holdout")] {
        let err = SearchConfig { holdout: bad, ..cfg.clone() }.validate().unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
    }
    let err = SearchConfig { reg_l2: Some(-1.0), ..cfg.clone() }.validate().unwrap_err();
    assert!(err.to_string().contains("reg_l2"), "{err}");
}

#[test]
fn split_dev_holds_out_the_last_examples() {
    let data = PerceptronData::generate(&recipe()).unwrap();
    let (search, held) = data.split_dev(0.3).unwrap();
    // ⌈0.3·32⌉ = 10 held out.
    assert_eq!((search.dev.len(), held.dev.len()), (22, 10));
    assert_eq!(search.dev.y[..], data.dev.y[..22]);
    assert_eq!(held.dev.y[..], data.dev.y[22..]);
    assert_eq!(held.dev.x[..], data.dev.x[22 * 8..]);
    assert_eq!((&search.train, &search.test, &held.train), (&data.train, &data.test, &data.train));
    assert!(data.split_dev(0.0).is_err());
    assert!(data.split_dev(1.0).is_err());
    assert!(data.split_dev(0.999).is_err(), "leaves no search part");
}

/// Few desired examples and noisy training labels: the search overfits its 3 desired examples, so
/// the held-out J falls at first and then rises while the search's J keeps falling.
#[test]
fn early_stopping_keeps_the_best_held_out_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path(), &PerceptronRecipe { n_dev: 6, train_label_noise: 0.2, ..recipe() });
    let epochs = 15;
    let cfg = run_config(&p, SearchConfig { holdout: Some(0.5), ..config(OuterOptimizer::Sgd, epochs, 3.0) });
    let (search_part, held_part) = p.data.split_dev(0.5).unwrap();
    assert_eq!((search_part.dev.len(), held_part.dev.len()), (3, 3));
    let dir = RunDir::new(tmp.path().join("run"));
    let (mut e, mut he) = (CpuPerceptron::<f64>::new(&search_part).unwrap(), CpuPerceptron::<f64>::new(&held_part).unwrap());
    let h = run::search_with_holdout(&mut e, Some(&mut he), &dir, &cfg, &p.theta0, |_: &EpochEvent| ControlFlow::Continue(())).unwrap();
    // Each epoch's policy: the same search stopped after every epoch (a stop saves the policy) and
    // resumed, from f32-saved policies, so within 1e-6 of the uninterrupted one.
    let mut policies = vec![Policy::constant(STEPS, N)];
    let per_epoch = RunDir::new(tmp.path().join("per_epoch"));
    let (mut pe, mut phe) = (CpuPerceptron::<f64>::new(&search_part).unwrap(), CpuPerceptron::<f64>::new(&held_part).unwrap());
    while policies.len() <= epochs {
        run::search_with_holdout(&mut pe, Some(&mut phe), &per_epoch, &cfg, &p.theta0, |_: &EpochEvent| ControlFlow::Break(())).unwrap();
        policies.push(per_epoch.read_policy().unwrap().unwrap().0);
    }
    assert_eq!(h.heldout_j.len(), epochs + 1);
    for w in h.j.windows(2) {
        assert!(w[1] < w[0], "the search's J falls every epoch: {:?}", h.j);
    }
    let best = h.best_epoch().unwrap();
    assert_eq!(best, 1, "held-out J {:?}", h.heldout_j);
    assert!(h.heldout_j[epochs] > 1.1 * h.heldout_j[best], "held-out J rises after the best epoch: {:?}", h.heldout_j);

    // The held-out J is J of each epoch's policy on the held-out part, by an independent forward.
    let mut check = CpuPerceptron::<f64>::new(&held_part).unwrap();
    let mut ws = Workspace::new(&mut check, Unroll { steps: STEPS, eta: ETA }, 1).unwrap();
    let theta0 = check.upload(&f64s(&p.theta0)).unwrap();
    for (k, policy) in policies.iter().enumerate() {
        let g = check.upload(&f64s(&policy.gamma)).unwrap();
        let j = ws.forward(&mut check, &theta0, &g).unwrap().j;
        assert!((j - h.heldout_j[k]).abs() <= 1e-6 * j, "epoch {k}: {j} vs {}", h.heldout_j[k]);
    }

    let (saved, epoch) = dir.read_best_policy().unwrap().unwrap();
    assert_eq!((saved, epoch), (policies[best].clone(), best));
    let summary = dir.read_summary().unwrap();
    assert_eq!((summary.best_epoch, summary.heldout_j.len()), (Some(best), epochs + 1));

    // The evaluation (on the whole data) evaluates the best policy.
    let mut full = CpuPerceptron::<f64>::new(&p.data).unwrap();
    run::evaluate(&mut full, &dir, &p.theta0).unwrap();
    let summary = dir.read_summary().unwrap();
    assert_eq!(summary.evaluated_epoch, Some(best));
    assert_eq!(summary.ar_test, summary.ar);
    assert_eq!(summary.ar_dev, summary.evaluation.as_ref().unwrap().ar_dev);

    // An interrupted and resumed search records the same held-out curve and the same best policy.
    let dir2 = RunDir::new(tmp.path().join("resumed"));
    let (mut e, mut he) = (CpuPerceptron::<f64>::new(&search_part).unwrap(), CpuPerceptron::<f64>::new(&held_part).unwrap());
    let stop = |ev: &EpochEvent| if ev.epoch == 4 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) };
    let partial = run::search_with_holdout(&mut e, Some(&mut he), &dir2, &cfg, &p.theta0, stop).unwrap();
    assert_eq!(partial.heldout_j.len(), 4);
    let resumed =
        run::search_with_holdout(&mut e, Some(&mut he), &dir2, &cfg, &p.theta0, |_: &EpochEvent| ControlFlow::Continue(())).unwrap();
    // Policies are saved in f32, so an f64 search resumes from a rounded γ: close, not bit-equal.
    assert_eq!(resumed.heldout_j[..4], h.heldout_j[..4]);
    for (a, b) in resumed.heldout_j.iter().zip(&h.heldout_j) {
        assert!((a - b).abs() <= 1e-6 * b, "{:?} vs {:?}", resumed.heldout_j, h.heldout_j);
    }
    assert_eq!(dir2.read_best_policy().unwrap().unwrap(), (policies[best].clone(), best));

    // A held-out engine is required exactly when the config has a holdout.
    let mut e = CpuPerceptron::<f64>::new(&search_part).unwrap();
    let err = run::search(&mut e, &RunDir::new(tmp.path().join("none")), &cfg, &p.theta0, |_: &EpochEvent| ControlFlow::Continue(()));
    assert!(err.unwrap_err().to_string().contains("holdout"));
}
