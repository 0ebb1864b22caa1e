//! Integration tests of the policy-search driver, run directories, policy files and evaluation, on
//! small generated perceptron problems (D = 8, N = 64, T = 30) with the CPU engine.
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use learnlaw::data::{init_theta, PerceptronData, PerceptronRecipe};
use learnlaw::eval::{acceleration_ratio, acceleration_ratio_against, steps_to};
use learnlaw::perceptron::CpuPerceptron;
use learnlaw::policy::Policy;
use learnlaw::run::{self, EpochEvent, History, RunConfig, RunDir};
use learnlaw::search::{compression_ratio, OuterOptimizer, Search, SearchConfig};
use learnlaw::{Engine, Error};

const STEPS: usize = 30;
const ETA: f64 = 0.3;
/// Large enough that five epochs move J by ~25% (J is (1/T)Σ, so ∂J/∂γ is small per entry).
const OUTER_LR: f64 = 1.0;

fn recipe() -> PerceptronRecipe {
    PerceptronRecipe { dim: 8, n_train: 64, n_dev: 32, n_test: 32, ..Default::default() }
}

/// A generated problem saved into `dir` (so the run config names a real file and fingerprint).
struct Problem {
    data: PerceptronData,
    path: PathBuf,
    theta0: Vec<f32>,
}

fn problem(dir: &Path) -> Problem {
    let data = PerceptronData::generate(&recipe()).unwrap();
    let path = dir.join("data.safetensors");
    data.save(&path).unwrap();
    let theta0 = init_theta(data.dim, 10);
    Problem { data, path, theta0 }
}

fn search_config(epochs: usize, outer_lr: f64) -> SearchConfig {
    SearchConfig {
        steps: STEPS,
        eta: ETA,
        epochs,
        outer_lr,
        optimizer: OuterOptimizer::Sgd,
        checkpoint_every: None,
        holdout: None,
        reg_l2: None,
        block_steps: None,
    }
}

fn run_config(p: &Problem, backend: &str, search: SearchConfig) -> RunConfig {
    RunConfig {
        task: "perceptron".into(),
        backend: backend.into(),
        data: p.path.clone(),
        data_fingerprint: run::fingerprint(&p.path).unwrap(),
        init_seed: 10,
        theta0: None,
        model: None,
        search,
        trained: None,
    }
}

fn search_to_end<E: Engine>(e: &mut E, dir: &RunDir, cfg: &RunConfig, theta0: &[f32]) -> learnlaw::Result<History> {
    run::search(e, dir, cfg, theta0, |_: &EpochEvent| ControlFlow::Continue(()))
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Equal up to the last bit or two. Histories and summaries are stored as JSON, and serde_json
/// (without its `float_roundtrip` feature) parses some shortest-representation floats 1 ulp off,
/// so a history read back from disk is not always bit-identical to the one computed in memory
/// (see `json_round_trip_of_history_floats_is_exact`).
fn assert_close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs()), "{what}: {a:?} vs {b:?}");
    }
}

fn assert_same_history(a: &History, b: &History, what: &str) {
    assert_close(&a.j, &b.j, &format!("{what} (j)"));
    assert_close(&a.cr, &b.cr, &format!("{what} (cr)"));
    assert_close(&a.seconds, &b.seconds, &format!("{what} (seconds)"));
}

#[test]
fn j_decreases_over_outer_epochs() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let epochs = 5;
    let cfg = run_config(&p, "cpu-f64", search_config(epochs, OUTER_LR));
    let mut e = CpuPerceptron::<f64>::new(&p.data).unwrap();
    let mut seen = Vec::new();
    let h = run::search(&mut e, &RunDir::new(tmp.path().join("run")), &cfg, &p.theta0, |ev: &EpochEvent| {
        seen.push((ev.epoch, ev.epochs, ev.history.j.len()));
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(seen, (1..=epochs).map(|k| (k, epochs, k)).collect::<Vec<_>>(), "callback once per epoch, after it");
    assert_eq!(h.j.len(), epochs + 1, "J of γ_0..γ_E");
    assert_eq!(h.cr.len(), epochs + 1);
    assert_eq!(h.seconds.len(), epochs);
    assert_eq!(h.epochs_done(), epochs);
    assert!(h.j.iter().all(|j| j.is_finite() && *j > 0.0), "{:?}", h.j);
    for w in h.j.windows(2) {
        assert!(w[1] < w[0], "J must strictly decrease every epoch: {:?}", h.j);
    }
    // A real improvement, not rounding: the constant policy's J is j[0].
    assert!(h.j[epochs] < 0.9 * h.j[0], "J {:?}", h.j);
    // CR = T log2(2) / Σ_{t≥1} L_dev: a lower area means a higher CR.
    assert!(h.cr[epochs] > h.cr[0], "CR {:?}", h.cr);

    // j[0] is the constant policy's J, computed independently through the Search API.
    let mut e2 = CpuPerceptron::<f64>::new(&p.data).unwrap();
    let theta0: Vec<f64> = p.theta0.iter().map(|&x| x as f64).collect();
    let gamma: Vec<f64> = Policy::constant(STEPS, 64).gamma.iter().map(|&g| g as f64).collect();
    let mut s = Search::new(&mut e2, &search_config(epochs, OUTER_LR), &theta0, &gamma, 0).unwrap();
    assert_eq!(s.evaluate(&mut e2).unwrap().j.to_bits(), h.j[0].to_bits());

    // AR_dev per epoch: γ_0 against itself, every later γ_e from its own retrained dev curve.
    assert_eq!(h.ar_dev.len(), epochs + 1);
    assert_eq!(h.final_dev.len(), epochs + 1);
    let unroll = search_config(epochs, OUTER_LR).unroll();
    let (constant, _) = learnlaw::eval::retrain(&mut e2, &theta0, &gamma, unroll, false).unwrap();
    assert_eq!(h.final_dev[0].to_bits(), constant.dev[STEPS].to_bits());
    assert_eq!(h.ar_dev[0], Some(1.0), "γ_0 is the constant policy: AR 1 against itself");
    assert_eq!(h.constant_dev_steps, learnlaw::eval::steps_to(&constant.dev, constant.dev[STEPS]));
    let reached = h.epochs_to_ar_dev(&[1.0, 1e9]);
    assert_eq!(reached[0].epoch, Some(0), "the constant policy reaches its own final loss");
    assert_eq!(reached[1].epoch, None);
    assert!(h.ar_dev[epochs].unwrap() > 1.0, "{:?}", h.ar_dev);

    // The saved policy is the final one and lies on the simplex.
    let (policy, saved) = RunDir::new(tmp.path().join("run")).read_policy().unwrap().unwrap();
    assert_same_history(&saved, &h, "saved history");
    assert_eq!((policy.steps, policy.examples), (STEPS, 64));
    policy.validate().unwrap();
    assert_ne!(policy, Policy::constant(STEPS, 64), "the policy moved");
}

/// Runs `epochs` epochs in `dir`, stopping via the callback after `stop_after` epochs, then resumes.
fn interrupted<E: Engine>(e: &mut E, dir: &RunDir, cfg: &RunConfig, theta0: &[f32], stop_after: usize) -> History {
    let partial = run::search(
        e,
        dir,
        cfg,
        theta0,
        |ev: &EpochEvent| {
            if ev.epoch == stop_after {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )
    .unwrap();
    assert_eq!(partial.epochs_done(), stop_after);
    assert_eq!(partial.j.len(), stop_after, "no final J for an interrupted search");
    let (_, saved) = dir.read_policy().unwrap().unwrap();
    assert_same_history(&saved, &partial, "the history is saved with the policy");
    let mut resumed_epochs = Vec::new();
    let h = run::search(e, dir, cfg, theta0, |ev: &EpochEvent| {
        resumed_epochs.push(ev.epoch);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(resumed_epochs, (stop_after + 1..=cfg.search.epochs).collect::<Vec<_>>(), "resumes at the next epoch");
    h
}

#[test]
fn resume_after_break_is_bit_identical_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let cfg = run_config(&p, "cpu", search_config(5, OUTER_LR));
    let (a, b) = (RunDir::new(tmp.path().join("a")), RunDir::new(tmp.path().join("b")));
    let whole = search_to_end(&mut CpuPerceptron::<f32>::new(&p.data).unwrap(), &a, &cfg, &p.theta0).unwrap();
    let resumed = interrupted(&mut CpuPerceptron::<f32>::new(&p.data).unwrap(), &b, &cfg, &p.theta0, 2);
    // The resumed history's first two entries were read back from JSON; they happen to round-trip
    // exactly here (see `json_round_trip_of_history_floats_is_exact` for values that do not).
    assert_eq!(bits(&whole.j), bits(&resumed.j));
    assert_eq!(bits(&whole.cr), bits(&resumed.cr));
    assert_eq!(whole.seconds.len(), resumed.seconds.len());
    let (pa, _) = a.read_policy().unwrap().unwrap();
    let (pb, _) = b.read_policy().unwrap().unwrap();
    assert_eq!(pa, pb);
}

/// Adam's moments are saved with the policy, so an interrupted Adam search resumes exactly too.
#[test]
fn adam_resume_after_break_is_bit_identical_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let search = SearchConfig { optimizer: OuterOptimizer::Adam, ..search_config(5, OuterOptimizer::Adam.default_lr()) };
    let cfg = run_config(&p, "cpu", search);
    let (a, b) = (RunDir::new(tmp.path().join("a")), RunDir::new(tmp.path().join("b")));
    let whole = search_to_end(&mut CpuPerceptron::<f32>::new(&p.data).unwrap(), &a, &cfg, &p.theta0).unwrap();
    let resumed = interrupted(&mut CpuPerceptron::<f32>::new(&p.data).unwrap(), &b, &cfg, &p.theta0, 2);
    assert_eq!(bits(&whole.j), bits(&resumed.j));
    assert_eq!(a.read_policy().unwrap().unwrap().0, b.read_policy().unwrap().unwrap().0);
    let state = a.read_adam_state().unwrap().expect("Adam state saved with the policy");
    assert_eq!(state.steps, 5);
    assert_eq!(state, b.read_adam_state().unwrap().unwrap());
    assert!(RunDir::new(tmp.path().join("none")).read_adam_state().unwrap().is_none());
}

#[test]
fn break_after_the_last_epoch_then_resume_adds_only_the_final_j() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let cfg = run_config(&p, "cpu", search_config(3, OUTER_LR));
    let (a, b) = (RunDir::new(tmp.path().join("a")), RunDir::new(tmp.path().join("b")));
    let whole = search_to_end(&mut CpuPerceptron::<f32>::new(&p.data).unwrap(), &a, &cfg, &p.theta0).unwrap();
    let resumed = interrupted(&mut CpuPerceptron::<f32>::new(&p.data).unwrap(), &b, &cfg, &p.theta0, 3);
    assert_eq!(bits(&whole.j), bits(&resumed.j));
    assert_eq!(resumed.seconds.len(), 3);
    // The summary is written only once the search has its final J.
    assert!(b.summary_path().exists());
    assert_close(&b.read_summary().unwrap().j, &resumed.j, "summary j");
}

/// Policies are stored as f32 (the file format), so a resumed f64 search continues from the
/// f32-rounded γ: it agrees with the uninterrupted one to f32 precision, not bit for bit.
#[test]
fn resume_of_an_f64_search_agrees_to_f32_precision() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let cfg = run_config(&p, "cpu-f64", search_config(5, OUTER_LR));
    let (a, b) = (RunDir::new(tmp.path().join("a")), RunDir::new(tmp.path().join("b")));
    let whole = search_to_end(&mut CpuPerceptron::<f64>::new(&p.data).unwrap(), &a, &cfg, &p.theta0).unwrap();
    let resumed = interrupted(&mut CpuPerceptron::<f64>::new(&p.data).unwrap(), &b, &cfg, &p.theta0, 2);
    assert_eq!(whole.j.len(), resumed.j.len());
    for (x, y) in whole.j.iter().zip(&resumed.j) {
        assert!((x - y).abs() <= 1e-6 * x.abs(), "J {x} vs resumed {y}");
    }
}

/// summary.json and the history in policy.safetensors' metadata must read back exactly (serde_json's
/// `float_roundtrip`); without it this CR value, from a real search, came back 1 ulp off.
#[test]
fn json_round_trip_of_history_floats_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::new(tmp.path());
    let values = vec![3.7866270042979524, 3.8063115711561926, 0.36290590191929367];
    let summary = run::Summary { j: values.clone(), cr: values.clone(), ..Default::default() };
    dir.write_summary(&summary).unwrap();
    assert_eq!(bits(&dir.read_summary().unwrap().cr), bits(&values));
}

#[test]
fn completed_search_returns_its_history_without_running() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let cfg = run_config(&p, "cpu", search_config(3, OUTER_LR));
    let dir = RunDir::new(tmp.path().join("run"));
    let mut e = CpuPerceptron::<f32>::new(&p.data).unwrap();
    let first = search_to_end(&mut e, &dir, &cfg, &p.theta0).unwrap();
    let policy_bytes = std::fs::read(dir.policy_path()).unwrap();
    let mut calls = 0;
    let again = run::search(&mut e, &dir, &cfg, &p.theta0, |_: &EpochEvent| {
        calls += 1;
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(calls, 0, "no epoch may run again");
    // It returns the saved history as read back from the policy file …
    assert_eq!(again, dir.read_policy().unwrap().unwrap().1);
    // … which is the first call's, seconds included (up to the JSON round trip).
    assert_same_history(&again, &first, "second call");
    assert_eq!(std::fs::read(dir.policy_path()).unwrap(), policy_bytes, "the policy file is untouched");
}

#[test]
fn resuming_a_different_search_fails_naming_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let root = tmp.path().join("run");
    let dir = RunDir::new(&root);
    let cfg = run_config(&p, "cpu", search_config(2, OUTER_LR));
    let mut e = CpuPerceptron::<f32>::new(&p.data).unwrap();
    search_to_end(&mut e, &dir, &cfg, &p.theta0).unwrap();
    let before = dir.read_policy().unwrap().unwrap();

    let mut other_lr = cfg.clone();
    other_lr.search.outer_lr = 0.5;
    let mut more_epochs = cfg.clone();
    more_epochs.search.epochs = 4;
    let mut other_data = cfg.clone();
    other_data.data_fingerprint = "0123456789abcdef".into();
    let mut other_seed = cfg.clone();
    other_seed.init_seed = 11;
    let mut other_blocks = cfg.clone();
    other_blocks.search.block_steps = Some(3);
    let mut other_theta0 = cfg.clone();
    other_theta0.theta0 = Some(learnlaw::run::Theta0File { path: root.join("theta0.safetensors"), fingerprint: "0123456789abcdef".into() });
    let changes = [
        (other_lr, "--outer-lr: 1.0 in the run, 0.5 now"),
        (more_epochs, "--epochs: 2 in the run, 4 now"),
        (other_data, "the data file's contents (fingerprint): "),
        (other_seed, "--init-seed: 10 in the run, 11 now"),
        (other_blocks, "--block-steps: not set in the run, 3 now"),
        (
            other_theta0,
            "the --theta0 file's contents (fingerprint): none (θ_0 from --init-seed or the data) in the run, 0123456789abcdef now",
        ),
    ];
    for (changed, named) in changes {
        match search_to_end(&mut e, &dir, &changed, &p.theta0) {
            Err(err @ Error::Config { .. }) => {
                let msg = err.to_string();
                assert!(msg.contains(&root.display().to_string()), "message should name the directory: {msg}");
                assert!(msg.contains(named), "message should name the setting and both values: {msg}");
            }
            other => panic!("expected Error::Config, got {other:?}"),
        }
    }
    assert_eq!(dir.read_policy().unwrap().unwrap(), before, "a refused resume changes nothing");
    assert_eq!(dir.read_config().unwrap(), cfg);
}

/// `--checkpoint-every` (memory only) and the backend may change on resume: the search goes on
/// from its saved epochs, and config.toml records the new settings.
#[test]
fn a_resume_may_change_the_checkpointing_and_the_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let cfg = run_config(&p, "cpu", search_config(4, OUTER_LR));
    let (a, b) = (RunDir::new(tmp.path().join("a")), RunDir::new(tmp.path().join("b")));
    let whole = search_to_end(&mut CpuPerceptron::<f32>::new(&p.data).unwrap(), &a, &cfg, &p.theta0).unwrap();
    let mut e = CpuPerceptron::<f32>::new(&p.data).unwrap();
    run::search(
        &mut e,
        &b,
        &cfg,
        &p.theta0,
        |ev: &EpochEvent| if ev.epoch == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) },
    )
    .unwrap();
    let mut changed = cfg.clone();
    changed.search.checkpoint_every = Some(7);
    changed.backend = "wgpu".into();
    let differences = cfg.differences(&changed).unwrap();
    assert_eq!(differences.len(), 2, "{differences:?}");
    assert!(differences.iter().all(|d| d.allowed_on_resume().is_some()), "{differences:?}");
    let resumed = search_to_end(&mut e, &b, &changed, &p.theta0).unwrap();
    assert_eq!(bits(&resumed.j), bits(&whole.j), "checkpointing changes memory, not the result");
    assert_eq!(b.read_config().unwrap(), changed);
}

#[test]
fn search_config_validation() {
    let ok = search_config(3, 0.1);
    ok.validate().unwrap();
    SearchConfig { outer_lr: 0.0, ..ok.clone() }.validate().unwrap();
    SearchConfig { epochs: 0, ..ok.clone() }.validate().unwrap();
    SearchConfig { checkpoint_every: Some(1), ..ok.clone() }.validate().unwrap();
    SearchConfig { block_steps: Some(STEPS), ..ok.clone() }.validate().unwrap();
    SearchConfig::paper_perceptron().validate().unwrap();

    let bad = [
        ("steps", SearchConfig { steps: 0, ..ok.clone() }),
        ("eta", SearchConfig { eta: 0.0, ..ok.clone() }),
        ("eta", SearchConfig { eta: -0.1, ..ok.clone() }),
        ("eta", SearchConfig { eta: f64::NAN, ..ok.clone() }),
        ("eta", SearchConfig { eta: f64::INFINITY, ..ok.clone() }),
        ("outer_lr", SearchConfig { outer_lr: -0.1, ..ok.clone() }),
        ("outer_lr", SearchConfig { outer_lr: f64::NAN, ..ok.clone() }),
        ("outer_lr", SearchConfig { outer_lr: f64::INFINITY, ..ok.clone() }),
        ("checkpoint_every", SearchConfig { checkpoint_every: Some(0), ..ok.clone() }),
        ("block_steps", SearchConfig { block_steps: Some(0), ..ok.clone() }),
        ("block_steps", SearchConfig { block_steps: Some(STEPS + 1), ..ok.clone() }),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let mut e = CpuPerceptron::<f64>::new(&p.data).unwrap();
    for (i, (field, cfg)) in bad.into_iter().enumerate() {
        match cfg.validate() {
            Err(Error::Config { name, .. }) => assert_eq!(name, field),
            other => panic!("{cfg:?}: expected Error::Config for {field}, got {other:?}"),
        }
        // run::search refuses it before creating anything.
        let root = tmp.path().join(format!("run{i}"));
        let err = search_to_end(&mut e, &RunDir::new(&root), &run_config(&p, "cpu-f64", cfg), &p.theta0).unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err:?}");
        assert!(!root.exists(), "an invalid config must not create {}", root.display());
    }
}

#[test]
fn search_new_checks_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let mut e = CpuPerceptron::<f64>::new(&p.data).unwrap();
    let cfg = search_config(1, 0.1);
    let theta0 = vec![0.0f64; 8];
    let gamma = vec![1.0 / 64.0; STEPS * 64];
    assert!(matches!(Search::new(&mut e, &cfg, &theta0[..7], &gamma, 0), Err(Error::Shape { .. })));
    assert!(matches!(Search::new(&mut e, &cfg, &theta0, &gamma[..STEPS * 64 - 1], 0), Err(Error::Shape { .. })));
    assert!(Search::new(&mut e, &cfg, &theta0, &gamma, 0).is_ok());
}

#[test]
fn policy_validate() {
    for (t, n) in [(30, 64), (1, 1), (5, 7), (3, 4096), (2, 1000)] {
        let c = Policy::constant(t, n);
        assert_eq!(c.gamma.len(), t * n);
        c.validate().unwrap_or_else(|e| panic!("constant [{t}, {n}]: {e}"));
    }
    let bad_input = |gamma: Vec<f32>, needle: &str| {
        let p = Policy { steps: 2, examples: 3, gamma };
        match p.validate() {
            Err(e @ Error::BadInput { .. }) => assert!(e.to_string().contains(needle), "{e} should contain {needle:?}"),
            other => panic!("{:?}: expected BadInput, got {other:?}", p.gamma),
        }
    };
    let third = 1.0 / 3.0;
    // Row 1 sums to 1.5.
    bad_input(vec![third, third, third, 0.5, 0.5, 0.5], "row 1");
    // Row 0 sums to 0.
    bad_input(vec![0.0, 0.0, 0.0, third, third, third], "row 0");
    // Sums to 1 but with a negative weight.
    bad_input(vec![1.5, -0.5, 0.0, third, third, third], "γ[0, 1]");
    bad_input(vec![third, third, third, 0.5, f32::NAN, 0.5], "γ[1, 1]");
    bad_input(vec![f32::INFINITY, 0.0, 0.0, third, third, third], "γ[0, 0]");
    // Within the f32-rounding tolerance is fine; just outside is not.
    Policy { steps: 1, examples: 2, gamma: vec![0.5, 0.5005] }.validate().unwrap();
    assert!(Policy { steps: 1, examples: 2, gamma: vec![0.5, 0.502] }.validate().is_err());
    // Shape: wrong length, no examples.
    assert!(matches!(Policy { steps: 2, examples: 3, gamma: vec![0.5; 5] }.validate(), Err(Error::Shape { .. })));
    assert!(matches!(Policy { steps: 2, examples: 0, gamma: vec![] }.validate(), Err(Error::Shape { .. })));
}

/// A safetensors file written by hand: one tensor `name` with the given dtype, shape and bytes.
fn write_safetensors(path: &Path, name: &str, dtype: &str, shape: &[usize], data: &[u8]) {
    let shape = shape.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",");
    let mut header = format!(r#"{{"{name}":{{"dtype":"{dtype}","shape":[{shape}],"data_offsets":[0,{}]}}}}"#, data.len());
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn policy_files_round_trip_and_bad_files_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("policy.safetensors");

    // A valid policy round-trips with its metadata.
    let mut good = Policy::constant(3, 4);
    good.gamma[..4].copy_from_slice(&[0.0, 0.25, 0.75, 0.0]);
    good.save(&path, HashMap::from([("k".to_string(), "v".to_string())])).unwrap();
    let (back, meta) = Policy::load(&path).unwrap();
    assert_eq!(back, good);
    assert_eq!(meta.get("k").map(String::as_str), Some("v"));

    // The hand-written helper produces files the loader accepts.
    write_safetensors(&path, "gamma", "F32", &[3, 4], &f32_bytes(&good.gamma));
    assert_eq!(Policy::load(&path).unwrap().0, good);

    // Policy::save does not validate, so it can write a policy that load must refuse.
    let off_simplex = Policy { steps: 2, examples: 2, gamma: vec![0.5, 0.5, 0.9, 0.9] };
    off_simplex.save(&path, HashMap::new()).unwrap();
    assert!(matches!(Policy::load(&path), Err(Error::BadInput { .. })), "{:?}", Policy::load(&path));
    let negative = Policy { steps: 1, examples: 2, gamma: vec![1.25, -0.25] };
    negative.save(&path, HashMap::new()).unwrap();
    assert!(matches!(Policy::load(&path), Err(Error::BadInput { .. })));
    let nan = Policy { steps: 1, examples: 2, gamma: vec![f32::NAN, 1.0] };
    nan.save(&path, HashMap::new()).unwrap();
    assert!(matches!(Policy::load(&path), Err(Error::BadInput { .. })));

    // Wrong rank: [T·N] and [1, T, N] instead of [T, N].
    write_safetensors(&path, "gamma", "F32", &[4], &f32_bytes(&[0.25; 4]));
    assert!(matches!(Policy::load(&path), Err(Error::Shape { .. })), "{:?}", Policy::load(&path));
    write_safetensors(&path, "gamma", "F32", &[1, 2, 2], &f32_bytes(&[0.5; 4]));
    assert!(matches!(Policy::load(&path), Err(Error::Shape { .. })));
    // Wrong rank by corrupting a file Policy::save wrote: "shape":[2,2] → "shape":[4]  (same length).
    Policy::constant(2, 2).save(&path, HashMap::new()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let text = String::from_utf8_lossy(&bytes).to_string();
    let at = text.find("[2,2]").expect("shape in the header");
    let mut corrupt = bytes.clone();
    corrupt[at..at + 5].copy_from_slice(b"[4]  ");
    std::fs::write(&path, &corrupt).unwrap();
    assert!(matches!(Policy::load(&path), Err(Error::Shape { .. })), "{:?}", Policy::load(&path));

    // F64 (e.g. a policy exported from NumPy) is accepted and converted; integer dtypes are not.
    let f64_bytes: Vec<u8> = [0.25f64, 0.75, 1.0, 0.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    write_safetensors(&path, "gamma", "F64", &[2, 2], &f64_bytes);
    assert_eq!(Policy::load(&path).unwrap().0, Policy { steps: 2, examples: 2, gamma: vec![0.25, 0.75, 1.0, 0.0] });
    write_safetensors(&path, "gamma", "F64", &[2, 2], &[0.5f64, 0.5, 0.9, 0.9].iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
    assert!(matches!(Policy::load(&path), Err(Error::BadInput { .. })), "F64 rows are validated too");
    write_safetensors(&path, "gamma", "I32", &[2, 2], &[0u8; 16]);
    assert!(matches!(Policy::load(&path), Err(Error::BadInput { .. })), "{:?}", Policy::load(&path));
    // A file without `gamma` is not a policy file.
    write_safetensors(&path, "weights", "F32", &[2, 2], &f32_bytes(&[0.5; 4]));
    match Policy::load(&path) {
        Err(e @ Error::Format { .. }) => assert!(e.to_string().contains("gamma"), "{e}"),
        other => panic!("expected Error::Format, got {other:?}"),
    }

    // Not a safetensors file: truncated, garbage, empty. Format errors name the file.
    Policy::constant(2, 2).save(&path, HashMap::new()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for corrupt in [bytes[..bytes.len() - 3].to_vec(), bytes[..12].to_vec(), b"definitely not a tensor file".to_vec(), Vec::new()] {
        std::fs::write(&path, &corrupt).unwrap();
        match Policy::load(&path) {
            Err(e @ Error::Format { .. }) => assert!(e.to_string().contains(&path.display().to_string()), "{e}"),
            other => panic!("expected Error::Format, got {other:?}"),
        }
    }
    // Header length pointing past the end of the file.
    let mut huge = (1u64 << 40).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    std::fs::write(&path, &huge).unwrap();
    assert!(matches!(Policy::load(&path), Err(Error::Format { .. })));

    assert!(matches!(Policy::load(&tmp.path().join("missing.safetensors")), Err(Error::Io { .. })));
}

#[test]
fn corrupt_saved_policy_blocks_resume_with_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let cfg = run_config(&p, "cpu", search_config(3, OUTER_LR));
    let dir = RunDir::new(tmp.path().join("run"));
    let mut e = CpuPerceptron::<f32>::new(&p.data).unwrap();
    run::search(&mut e, &dir, &cfg, &p.theta0, |_: &EpochEvent| ControlFlow::Break(())).unwrap();
    std::fs::write(dir.policy_path(), b"garbage").unwrap();
    assert!(matches!(search_to_end(&mut e, &dir, &cfg, &p.theta0), Err(Error::Format { .. })));
    // A policy of the wrong shape for this search.
    Policy::constant(STEPS, 32)
        .save(&dir.policy_path(), HashMap::from([("history".into(), "{\"j\":[],\"cr\":[],\"seconds\":[]}".into())]))
        .unwrap();
    assert!(matches!(search_to_end(&mut e, &dir, &cfg, &p.theta0), Err(Error::Shape { .. })));
    // A policy without the history metadata.
    Policy::constant(STEPS, 64).save(&dir.policy_path(), HashMap::new()).unwrap();
    assert!(matches!(search_to_end(&mut e, &dir, &cfg, &p.theta0), Err(Error::Format { .. })));
}

#[test]
fn divergence_is_a_numerical_error() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    // The perceptron's per-example gradients are bounded (|σ − y| ≤ 1), so even η = 1e6 only grows
    // θ linearly: the BCE stays finite and the search runs. Overflow needs η near the float range.
    let big = SearchConfig { eta: 1e6, ..search_config(1, 0.1) };
    let h = search_to_end(
        &mut CpuPerceptron::<f32>::new(&p.data).unwrap(),
        &RunDir::new(tmp.path().join("big")),
        &run_config(&p, "cpu", big),
        &p.theta0,
    )
    .unwrap();
    assert!(h.j.iter().all(|j| j.is_finite() && *j > 1e3), "{:?}", h.j);

    // f32: η = 1e39 is a finite f64 (passes validation) but overflows the f32 engine's arithmetic.
    // f64: η = 1e308 makes θ_1 overflow.
    let cases: [(&str, f64); 2] = [("cpu", 1e39), ("cpu-f64", 1e308)];
    for (backend, eta) in cases {
        let root = tmp.path().join(backend);
        let dir = RunDir::new(&root);
        let cfg = run_config(&p, backend, SearchConfig { eta, ..search_config(2, 0.1) });
        cfg.search.validate().unwrap();
        let result = if backend == "cpu" {
            search_to_end(&mut CpuPerceptron::<f32>::new(&p.data).unwrap(), &dir, &cfg, &p.theta0)
        } else {
            search_to_end(&mut CpuPerceptron::<f64>::new(&p.data).unwrap(), &dir, &cfg, &p.theta0)
        };
        match result {
            Err(Error::Numerical(msg)) => assert!(msg.contains("step"), "{msg}"),
            other => panic!("{backend} η = {eta}: expected Error::Numerical, got {other:?}"),
        }
        assert!(dir.read_policy().unwrap().is_none(), "no policy is saved for a diverged epoch");
    }
}

#[test]
fn checkpointing_does_not_change_the_history() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let mut histories = Vec::new();
    for every in [None, Some(1), Some(5), Some(7), Some(STEPS), Some(1000)] {
        let cfg = run_config(&p, "cpu", SearchConfig { checkpoint_every: every, ..search_config(3, OUTER_LR) });
        let dir = RunDir::new(tmp.path().join(format!("every{every:?}")));
        let h = search_to_end(&mut CpuPerceptron::<f32>::new(&p.data).unwrap(), &dir, &cfg, &p.theta0).unwrap();
        histories.push((every, bits(&h.j), dir.read_policy().unwrap().unwrap().0));
    }
    for (every, j, policy) in &histories[1..] {
        assert_eq!(j, &histories[0].1, "checkpoint_every {every:?} changed J");
        assert_eq!(policy, &histories[0].2, "checkpoint_every {every:?} changed the policy");
    }
}

#[test]
fn evaluate_writes_curves_and_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let epochs = 4;
    let cfg = run_config(&p, "cpu", search_config(epochs, OUTER_LR));
    let dir = RunDir::new(tmp.path().join("run"));
    let mut e = CpuPerceptron::<f32>::new(&p.data).unwrap();
    let h = search_to_end(&mut e, &dir, &cfg, &p.theta0).unwrap();
    let ev = run::evaluate(&mut e, &dir, &p.theta0).unwrap();

    let csv = std::fs::read_to_string(dir.curves_path()).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), STEPS + 2, "header + T+1 rows");
    assert_eq!(lines[0], "step,dev_constant,test_constant,dev_policy,test_policy");
    let rows: Vec<Vec<f64>> = lines[1..].iter().map(|l| l.split(',').map(|x| x.parse::<f64>().unwrap()).collect()).collect();
    for (t, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), 5);
        assert_eq!(row[0], t as f64);
        assert!(row[1..].iter().all(|x| x.is_finite() && *x > 0.0), "row {t}: {row:?}");
    }
    // Both runs start from θ_0.
    assert_eq!(rows[0][1], rows[0][3]);
    assert_eq!(rows[0][2], rows[0][4]);
    // The numbers agree with the evaluation.
    assert_eq!(rows[STEPS][2], ev.final_test_constant);
    assert_eq!(rows[STEPS][4], ev.final_test_policy);
    let auc = |col: usize| rows.iter().map(|r| r[col]).sum::<f64>() / STEPS as f64;
    assert!((auc(1) - ev.auc_dev_constant).abs() < 1e-12);
    assert!((auc(3) - ev.auc_dev_policy).abs() < 1e-12);
    assert!((auc(2) - ev.auc_test_constant).abs() < 1e-12);
    // The dev AUCs are the search's J of the constant and the final policy (same definition).
    assert!((ev.auc_dev_constant - h.j[0]).abs() < 1e-6, "{} vs {}", ev.auc_dev_constant, h.j[0]);
    assert!((ev.auc_dev_policy - h.j[epochs]).abs() < 1e-6, "{} vs {}", ev.auc_dev_policy, h.j[epochs]);
    assert!(ev.auc_dev_policy < ev.auc_dev_constant);
    // A policy that lowers the area reaches the constant policy's final dev loss no later than T.
    assert!(ev.ar_dev.is_some_and(|ar| ar >= 1.0), "{:?}", ev.ar_dev);
    assert_eq!(ev.law_policy.sim.len(), STEPS);
    assert!((0.0..=1.0).contains(&ev.law_policy.zero_share));

    let text = std::fs::read_to_string(dir.summary_path()).unwrap();
    for key in ["\"ar\"", "\"j\"", "\"seconds_per_epoch\"", "\"evaluation\"", "\"cr\"", "\"epochs_done\""] {
        assert!(text.contains(key), "summary.json lacks {key}:\n{text}");
    }
    let summary = dir.read_summary().unwrap();
    assert_close(&summary.j, &h.j, "summary j");
    assert_close(&summary.cr, &h.cr, "summary cr");
    assert_eq!(summary.epochs, epochs);
    assert_eq!(summary.epochs_done, epochs);
    assert_eq!(summary.steps, STEPS);
    assert_close(&[summary.ar.unwrap()], &[ev.ar.unwrap()], "summary ar");
    assert!(summary.seconds_per_epoch > 0.0);
    let stored = summary.evaluation.as_ref().expect("the evaluation is in summary.json");
    assert_close(&[stored.auc_test_policy, stored.auc_dev_policy], &[ev.auc_test_policy, ev.auc_dev_policy], "stored AUCs");
    assert_eq!(stored.law_policy.sim.len(), STEPS);

    // Evaluating again gives the same numbers; searching again keeps the evaluation.
    assert_eq!(run::evaluate(&mut e, &dir, &p.theta0).unwrap(), ev);
    search_to_end(&mut e, &dir, &cfg, &p.theta0).unwrap();
    let kept = dir.read_summary().unwrap().evaluation.expect("a finished search keeps the evaluation");
    assert_close(&[kept.auc_test_policy], &[ev.auc_test_policy], "kept evaluation");
}

#[test]
fn constant_policy_against_itself_has_ar_one() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    // Zero epochs, and epochs with a zero outer learning rate: both leave γ = 1/N (N = 64 is a
    // power of two, so the projection of the constant row is exact).
    for (name, search) in [("zero-epochs", search_config(0, OUTER_LR)), ("zero-lr", search_config(2, 0.0))] {
        let dir = RunDir::new(tmp.path().join(name));
        let mut e = CpuPerceptron::<f64>::new(&p.data).unwrap();
        let cfg = run_config(&p, "cpu-f64", search);
        let h = search_to_end(&mut e, &dir, &cfg, &p.theta0).unwrap();
        assert_eq!(h.j.len(), cfg.search.epochs + 1);
        assert!(h.j.windows(2).all(|w| w[0] == w[1]), "{name}: J must not move: {:?}", h.j);
        assert_eq!(dir.read_policy().unwrap().unwrap().0, Policy::constant(STEPS, 64), "{name}");
        let ev = run::evaluate(&mut e, &dir, &p.theta0).unwrap();
        assert_eq!(ev.ar, Some(1.0), "{name}");
        assert_eq!(ev.ar_dev, Some(1.0), "{name}");
        assert_eq!(ev.auc_test_constant, ev.auc_test_policy, "{name}");
        assert_eq!(ev.auc_dev_constant, ev.auc_dev_policy, "{name}");
        assert_eq!(ev.final_test_constant, ev.final_test_policy, "{name}");
        assert_eq!(ev.law_constant.sim_mean.to_bits(), ev.law_policy.sim_mean.to_bits(), "{name}");
        assert_eq!(ev.auc_dev_constant.to_bits(), h.j[0].to_bits(), "{name}: the retrained dev AUC is J");
        assert_eq!(dir.read_summary().unwrap().ar, Some(1.0));
    }
}

#[test]
fn evaluate_without_a_search_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let mut e = CpuPerceptron::<f32>::new(&p.data).unwrap();
    // Not a run directory at all.
    match run::evaluate(&mut e, &RunDir::new(tmp.path().join("nothing")), &p.theta0) {
        Err(err @ Error::BadInput { .. }) => assert!(err.to_string().contains("not a run directory"), "{err}"),
        other => panic!("expected BadInput, got {other:?}"),
    }
    // A config but no policy: a search that diverged in its first epoch leaves exactly this.
    let dir = RunDir::new(tmp.path().join("run"));
    let cfg = run_config(&p, "cpu", SearchConfig { eta: 1e39, ..search_config(1, 0.1) });
    assert!(search_to_end(&mut e, &dir, &cfg, &p.theta0).is_err());
    match run::evaluate(&mut e, &dir, &p.theta0) {
        Err(err @ Error::BadInput { .. }) => assert!(err.to_string().contains("run a search first"), "{err}"),
        other => panic!("expected BadInput, got {other:?}"),
    }
}

#[test]
fn acceleration_ratio_cases() {
    let curve = [1.0, 0.8, 0.5, 0.4, 0.3];
    // T = 4; first t ≥ 1 with curve[t] ≤ target.
    assert_eq!(acceleration_ratio(&curve, 0.5), Some(2.0));
    assert_eq!(acceleration_ratio(&curve, 0.45), Some(4.0 / 3.0));
    assert_eq!(acceleration_ratio(&curve, 0.3), Some(1.0));
    assert_eq!(acceleration_ratio(&curve, 0.8), Some(4.0));
    // t = 0 never counts, even when θ_0 already meets the target.
    assert_eq!(acceleration_ratio(&curve, 1.0), Some(4.0));
    assert_eq!(acceleration_ratio(&curve, 10.0), Some(4.0));
    // Never reached.
    assert_eq!(acceleration_ratio(&curve, 0.29), None);
    assert_eq!(acceleration_ratio(&curve, f64::NAN), None);
    // The first crossing counts, not the last (a curve that goes back up).
    assert_eq!(acceleration_ratio(&[1.0, 0.9, 0.2, 0.6, 0.3], 0.3), Some(2.0));
    // Degenerate curves.
    assert_eq!(acceleration_ratio(&[], 0.5), None);
    assert_eq!(acceleration_ratio(&[0.1], 0.5), None);
    assert_eq!(acceleration_ratio(&[1.0, 0.5], 0.5), Some(1.0));
}

#[test]
fn compression_ratio_hand_computed() {
    // CR = T·log2|V| / Σ_{t=1..T} L_t; L_0 is excluded.
    let curve = [100.0, 1.0, 0.5, 0.5];
    assert_eq!(compression_ratio(&curve, 2), 1.5);
    assert_eq!(compression_ratio(&curve, 4), 3.0);
    assert_eq!(compression_ratio(&[7.0, 2.0], 2), 0.5);
    assert!((compression_ratio(&[1.0, 0.25, 0.25], 8) - 12.0).abs() < 1e-15);
    // A loss of ln 2 nats at every step with |V| = 2 gives 1/ln 2 (the curve is in nats, CR in bits).
    let ln2 = std::f64::consts::LN_2;
    assert!((compression_ratio(&[ln2; 11], 2) - 1.0 / ln2).abs() < 1e-12);
}

/// An engine that fails its `fail_at`-th forward step (counting from 1), like a device error or a
/// divergence late in a search; everything else is the wrapped engine's.
struct FailingForward<E: Engine> {
    inner: E,
    forward_steps: usize,
    fail_at: usize,
}

impl<E: Engine> Engine for FailingForward<E> {
    type Real = E::Real;
    type Vec = E::Vec;
    fn name(&self) -> String {
        self.inner.name()
    }
    fn num_params(&self) -> usize {
        self.inner.num_params()
    }
    fn num_train(&self) -> usize {
        self.inner.num_train()
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn step_flops(&self) -> learnlaw::StepFlops {
        self.inner.step_flops()
    }
    fn zeros(&mut self, len: usize) -> learnlaw::Result<E::Vec> {
        self.inner.zeros(len)
    }
    fn upload(&mut self, host: &[E::Real]) -> learnlaw::Result<E::Vec> {
        self.inner.upload(host)
    }
    fn download(&mut self, v: &E::Vec) -> learnlaw::Result<Vec<E::Real>> {
        self.inner.download(v)
    }
    fn copy(&mut self, src: &E::Vec, dst: &mut E::Vec) -> learnlaw::Result<()> {
        self.inner.copy(src, dst)
    }
    fn scale(&mut self, a: f64, x: &mut E::Vec) -> learnlaw::Result<()> {
        self.inner.scale(a, x)
    }
    fn axpy(&mut self, a: f64, x: &E::Vec, y: &mut E::Vec) -> learnlaw::Result<()> {
        self.inner.axpy(a, x, y)
    }
    fn project_simplex_rows(&mut self, v: &mut E::Vec, row_len: usize) -> learnlaw::Result<()> {
        self.inner.project_simplex_rows(v, row_len)
    }
    fn axpy_project_simplex_rows(&mut self, a: f64, x: &E::Vec, y: &mut E::Vec, row_len: usize) -> learnlaw::Result<()> {
        self.inner.axpy_project_simplex_rows(a, x, y, row_len)
    }
    fn forward_step(
        &mut self,
        theta: &E::Vec,
        gamma: &E::Vec,
        t: usize,
        eta: f64,
        theta_next: &mut E::Vec,
        dev_loss: Option<(&mut E::Vec, usize)>,
    ) -> learnlaw::Result<()> {
        self.forward_steps += 1;
        if self.forward_steps == self.fail_at {
            return Err(Error::Numerical("injected failure".into()));
        }
        self.inner.forward_step(theta, gamma, t, eta, theta_next, dev_loss)
    }
    fn backward_step(
        &mut self,
        theta: &E::Vec,
        gamma: &E::Vec,
        t: usize,
        lambda_next: &E::Vec,
        eta: f64,
        dev_weight: f64,
        grad_gamma: &mut E::Vec,
        lambda: &mut E::Vec,
    ) -> learnlaw::Result<()> {
        self.inner.backward_step(theta, gamma, t, lambda_next, eta, dev_weight, grad_gamma, lambda)
    }
    fn batches_dev_losses(&self, steps: usize) -> bool {
        self.inner.batches_dev_losses(steps)
    }
    fn dev_losses(&mut self, thetas: &[E::Vec], curve: &mut E::Vec, first: usize) -> learnlaw::Result<()> {
        self.inner.dev_losses(thetas, curve, first)
    }
    fn loss(&mut self, set: learnlaw::Set, theta: &E::Vec) -> learnlaw::Result<f64> {
        self.inner.loss(set, theta)
    }
    fn loss_grad(&mut self, set: learnlaw::Set, theta: &E::Vec, grad: &mut E::Vec) -> learnlaw::Result<f64> {
        self.inner.loss_grad(set, theta, grad)
    }
    fn train_losses(&mut self, theta: &E::Vec, out: &mut E::Vec) -> learnlaw::Result<()> {
        self.inner.train_losses(theta, out)
    }
    fn train_dots(&mut self, theta: &E::Vec, v: &E::Vec, out: &mut E::Vec) -> learnlaw::Result<()> {
        self.inner.train_dots(theta, v, out)
    }
}

/// A search that fails in its fourth epoch (before the 10 s save interval) keeps the three
/// epochs before it: they are saved with the error, and the same search then resumes from them to
/// the uninterrupted result.
#[test]
fn a_failed_epoch_keeps_the_epochs_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let cfg = run_config(&p, "cpu", search_config(5, OUTER_LR));
    let (a, b) = (RunDir::new(tmp.path().join("a")), RunDir::new(tmp.path().join("b")));
    let whole = search_to_end(&mut CpuPerceptron::<f32>::new(&p.data).unwrap(), &a, &cfg, &p.theta0).unwrap();
    // Each epoch runs STEPS forward steps (every θ is kept at this size): fail in epoch 4.
    let mut failing = FailingForward { inner: CpuPerceptron::<f32>::new(&p.data).unwrap(), forward_steps: 0, fail_at: 3 * STEPS + 5 };
    let err = search_to_end(&mut failing, &b, &cfg, &p.theta0).unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    let (_, saved) = b.read_policy().unwrap().expect("the epochs before the failure are saved");
    assert_eq!(saved.epochs_done(), 3);
    assert_close(&saved.j, &whole.j[..3], "saved J history");
    let resumed = search_to_end(&mut CpuPerceptron::<f32>::new(&p.data).unwrap(), &b, &cfg, &p.theta0).unwrap();
    assert_close(&resumed.j, &whole.j, "resumed J history");
    assert_eq!(a.read_policy().unwrap().unwrap().0, b.read_policy().unwrap().unwrap().0);
}

/// A policy file of T − 1 or T + 1 rows (another search's, say) is refused by `evaluate` as by
/// `search`, naming the shapes, instead of a panic or an evaluation of the wrong policy.
#[test]
fn evaluate_refuses_a_policy_of_another_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let cfg = run_config(&p, "cpu", search_config(1, OUTER_LR));
    let dir = RunDir::new(tmp.path().join("run"));
    let mut e = CpuPerceptron::<f32>::new(&p.data).unwrap();
    search_to_end(&mut e, &dir, &cfg, &p.theta0).unwrap();
    let history = dir.read_policy().unwrap().unwrap().1;
    let meta = HashMap::from([("history".to_string(), serde_json::to_string(&history).unwrap())]);
    for steps in [STEPS - 1, STEPS + 1] {
        Policy::constant(steps, 64).save(&dir.policy_path(), meta.clone()).unwrap();
        match run::evaluate(&mut e, &dir, &p.theta0) {
            Err(err @ Error::Shape { .. }) => {
                let msg = err.to_string();
                assert!(msg.contains(&format!("[{STEPS}, 64]")) && msg.contains(&format!("[{steps}, 64]")), "{msg}");
            }
            other => panic!("T = {steps}: expected Error::Shape, got {other:?}"),
        }
    }
}

/// Every file of a run is checked against config.toml before use: a summary.json or curves.csv
/// of another search (or of two searches mixed in one folder) is an error, not a result.
#[test]
fn read_checked_refuses_files_of_another_search() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let cfg = run_config(&p, "cpu", search_config(2, OUTER_LR));
    let dir = RunDir::new(tmp.path().join("run"));
    let mut e = CpuPerceptron::<f32>::new(&p.data).unwrap();
    search_to_end(&mut e, &dir, &cfg, &p.theta0).unwrap();
    run::evaluate(&mut e, &dir, &p.theta0).unwrap();
    let checked = dir.read_checked().unwrap();
    assert_eq!((checked.examples, checked.saved.unwrap().1.epochs_done()), (Some(64), 2));
    let (summary, curves) = (dir.read_summary().unwrap(), std::fs::read_to_string(dir.curves_path()).unwrap());

    // Two searches mixed: the summary of a 1500-epoch search beside a 2-epoch config and policy.
    dir.write_summary(&run::Summary { epochs_done: 1500, ..summary.clone() }).unwrap();
    assert!(matches!(dir.read_checked(), Err(Error::Format { .. })), "{:?}", dir.read_checked());
    assert!(matches!(run::evaluate(&mut e, &dir, &p.theta0), Err(Error::Format { .. })));
    dir.write_summary(&run::Summary { steps: STEPS + 10, ..summary.clone() }).unwrap();
    assert!(matches!(dir.read_checked(), Err(Error::Format { .. })));
    dir.write_summary(&summary).unwrap();

    // Curves of another T.
    let shorter: String = curves.lines().take(STEPS).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.curves_path(), shorter).unwrap();
    assert!(matches!(dir.read_checked(), Err(Error::Shape { .. })), "{:?}", dir.read_checked());
    std::fs::write(dir.curves_path(), curves).unwrap();
    dir.read_checked().unwrap();
}

/// Training that makes no progress (η so small that θ never moves in f32) gives flat, equal
/// curves, and equal curves give AR 1 — not T, as counting from the constant curve's first step did.
#[test]
fn training_without_progress_gives_ar_one() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let cfg = run_config(&p, "cpu", SearchConfig { eta: 1e-20, ..search_config(2, OUTER_LR) });
    let dir = RunDir::new(tmp.path().join("run"));
    let mut e = CpuPerceptron::<f32>::new(&p.data).unwrap();
    let h = search_to_end(&mut e, &dir, &cfg, &p.theta0).unwrap();
    assert_eq!(h.ar_dev, vec![Some(1.0); 3], "{:?}", h.ar_dev);
    let ev = run::evaluate(&mut e, &dir, &p.theta0).unwrap();
    assert_eq!((ev.ar, ev.ar_dev), (Some(1.0), Some(1.0)));
    assert_eq!((ev.constant_steps_test, ev.constant_steps_dev), (Some(1), Some(1)), "flat curves are at their final loss from step 1");
    let summary = dir.read_summary().unwrap();
    assert!(summary.epochs_to_ar_dev.iter().all(|t| t.epoch.is_none()), "{:?}", summary.epochs_to_ar_dev);
}

#[test]
fn acceleration_ratio_against_the_constant_curve() {
    let falling = [1.0, 0.8, 0.5, 0.4, 0.3];
    // A constant curve falling to its end: the paper's T / t_p.
    assert_eq!(acceleration_ratio_against(&[1.0, 0.6, 0.3, 0.2, 0.1], &falling), Some(2.0));
    assert_eq!(acceleration_ratio_against(&falling, &falling), Some(1.0), "equal curves");
    // Flat curves (no progress): the target is met at step 1 by both.
    assert_eq!(acceleration_ratio_against(&[0.7; 5], &[0.7; 5]), Some(1.0));
    assert_eq!(steps_to(&[0.7; 5], 0.7), Some(1));
    // A constant curve that bottoms out at step 2 and rises: its own steps to its final loss.
    let rising = [1.0, 0.5, 0.2, 0.3, 0.4];
    assert_eq!(steps_to(&rising, 0.4), Some(2));
    assert_eq!(acceleration_ratio_against(&rising, &rising), Some(1.0));
    assert_eq!(acceleration_ratio_against(&[1.0, 0.9, 0.9, 0.4, 0.4], &[1.0, 0.9, 0.6, 0.5, 0.4]), Some(4.0 / 3.0));
    // Never reached, or no curve.
    assert_eq!(acceleration_ratio_against(&[1.0, 0.9, 0.8, 0.7, 0.6], &falling), None);
    assert_eq!(acceleration_ratio_against(&[], &[]), None);
}

/// A failure names the first quantity that went non-finite: ∂J/∂γ for an inner learning rate
/// too large for the data (the losses stay finite: here they reach 1e37), the update itself for
/// an outer one.
#[test]
fn non_finite_failures_name_the_quantity_and_the_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let cases = [(SearchConfig { eta: 1e38, ..search_config(1, OUTER_LR) }, "--eta"), (search_config(1, 1e300), "outer learning rate")];
    for (i, (search, named)) in cases.into_iter().enumerate() {
        let dir = RunDir::new(tmp.path().join(format!("run{i}")));
        let mut e = CpuPerceptron::<f32>::new(&p.data).unwrap();
        match search_to_end(&mut e, &dir, &run_config(&p, "cpu", search), &p.theta0) {
            Err(Error::Numerical(msg)) => {
                assert!(msg.contains(named), "{named}: {msg}");
                let other = if named == "--eta" { "outer" } else { "∂J/∂γ is" };
                assert!(!msg.contains(other), "{named}: {msg}");
            }
            other => panic!("{named}: expected Error::Numerical, got {other:?}"),
        }
    }
}

/// A search too large for the memory is refused with the figure before anything is allocated or
/// created (it used to abort in the allocator, leaving a half-made run folder).
#[cfg(target_os = "linux")]
#[test]
fn a_search_that_cannot_fit_is_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let root = tmp.path().join("run");
    let cfg = run_config(&p, "cpu", SearchConfig { steps: 1 << 40, ..search_config(1, OUTER_LR) });
    match search_to_end(&mut CpuPerceptron::<f32>::new(&p.data).unwrap(), &RunDir::new(&root), &cfg, &p.theta0) {
        Err(err @ Error::Memory { .. }) => assert!(err.to_string().contains("--steps"), "{err}"),
        other => panic!("expected Error::Memory, got {other:?}"),
    }
    assert!(!root.exists(), "nothing is created for a refused search");
}

/// One owner per run directory: a second handle (as a second process would) is refused, naming
/// the holder; dropping the owner releases it. Temporaries a killed writer left are removed.
#[test]
fn a_run_directory_has_one_owner_and_loses_stale_temporaries() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let root = tmp.path().join("run");
    let cfg = run_config(&p, "cpu", search_config(1, OUTER_LR));
    let mut e = CpuPerceptron::<f32>::new(&p.data).unwrap();
    let owner = RunDir::new(&root);
    search_to_end(&mut e, &owner, &cfg, &p.theta0).unwrap();
    let stale = root.join(".policy.safetensors.tmp-4242-0");
    std::fs::write(&stale, b"half a policy").unwrap();
    let second = RunDir::new(&root);
    for attempt in [search_to_end(&mut e, &second, &cfg, &p.theta0).map(drop), run::evaluate(&mut e, &second, &p.theta0).map(drop)] {
        match attempt {
            Err(err @ Error::Busy { .. }) => assert!(err.to_string().contains(&format!("pid {}", std::process::id())), "{err}"),
            other => panic!("expected Error::Busy, got {other:?}"),
        }
    }
    assert!(stale.exists(), "only the owner cleans up");
    drop(owner);
    run::evaluate(&mut e, &second, &p.theta0).unwrap();
    assert!(!stale.exists(), "the new owner removes what a killed save left");
}

/// An existing folder is taken for a run only if learnlaw wrote what is in it.
#[test]
fn a_folder_with_files_learnlaw_did_not_write_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let p = problem(tmp.path());
    let cfg = run_config(&p, "cpu", search_config(1, OUTER_LR));
    let mut e = CpuPerceptron::<f32>::new(&p.data).unwrap();
    for (name, content) in [("config.toml", "title = \"my project\"\n"), ("summary.json", "{\"mine\": 1}"), ("notes.txt", "mine")] {
        let root = tmp.path().join(name);
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join(name), content).unwrap();
        match search_to_end(&mut e, &RunDir::new(&root), &cfg, &p.theta0) {
            Err(err @ Error::BadInput { .. }) => assert!(err.to_string().contains(name), "{err}"),
            other => panic!("{name}: expected BadInput, got {other:?}"),
        }
        assert_eq!(std::fs::read_to_string(root.join(name)).unwrap(), content, "{name} is left as it was");
        assert!(!root.join("policy.safetensors").exists());
    }
    // A file where the folder should be.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    assert!(matches!(search_to_end(&mut e, &RunDir::new(&file), &cfg, &p.theta0), Err(Error::BadInput { .. })));
}
