//! End to end on the WGSL engine: a reduced perceptron search (D = 16, N = 300, dev/test 64,
//! T = 50, 5 outer epochs) through `run::search` gives the CPU f32 engine's J trajectory within
//! 1e-4 relative, and a batched unroll equals its steps submitted one by one. Skips visibly without a wgpu adapter (fails instead with LEARNLAW_REQUIRE_WGPU=1).
use std::ops::ControlFlow;
use std::path::Path;

use learnlaw::data::{init_theta, PerceptronData, PerceptronRecipe};
use learnlaw::perceptron::CpuPerceptron;
use learnlaw::run::{self, EpochEvent, History, RunConfig, RunDir};
use learnlaw::search::{OuterOptimizer, SearchConfig};
use learnlaw::wgpu_backend::Options;
use learnlaw::{Engine, Set};

mod common;
use common::wgpu_engine;

const EPOCHS: usize = 5;
/// Moves J down by ~30% over the five epochs (monotonically), so agreement is not trivial.
const OUTER_LR: f64 = 0.3;

fn run_config(path: &Path, backend: &str) -> RunConfig {
    RunConfig {
        task: "perceptron".into(),
        backend: backend.into(),
        data: path.to_path_buf(),
        data_fingerprint: run::fingerprint(path).unwrap(),
        init_seed: 10,
        theta0: None,
        model: None,
        search: SearchConfig {
            steps: 50,
            eta: 0.3,
            epochs: EPOCHS,
            outer_lr: OUTER_LR,
            optimizer: OuterOptimizer::Sgd,
            checkpoint_every: None,
            holdout: None,
            reg_l2: None,
            block_steps: None,
        },
        trained: None,
    }
}

fn search<E: Engine>(e: &mut E, root: &Path, path: &Path, backend: &str, theta0: &[f32]) -> History {
    let dir = RunDir::new(root.join(backend));
    run::search(e, &dir, &run_config(path, backend), theta0, |_: &EpochEvent| ControlFlow::Continue(())).unwrap()
}

#[test]
fn wgpu_search_matches_cpu_j_trajectory() {
    let recipe = PerceptronRecipe { dim: 16, n_train: 300, n_dev: 64, n_test: 64, train_label_noise: 0.1, seed: 3, ..Default::default() };
    let data = PerceptronData::generate(&recipe).unwrap();
    let Some(mut gpu) = wgpu_engine(&data, &Options::default()) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("data.safetensors");
    data.save(&path).unwrap();
    let theta0 = init_theta(data.dim, 10);

    let cpu = search(&mut CpuPerceptron::<f32>::new(&data).unwrap(), tmp.path(), &path, "cpu", &theta0);
    let wgpu = search(&mut gpu, tmp.path(), &path, "wgpu", &theta0);
    println!("J cpu  {:?}\nJ wgpu {:?}", cpu.j, wgpu.j);
    assert_eq!(cpu.j.len(), EPOCHS + 1);
    assert_eq!(wgpu.j.len(), cpu.j.len());
    // The search must actually move J, or agreement would prove little.
    let moved = (cpu.j[0] - cpu.j[EPOCHS]) / cpu.j[0];
    assert!(moved > 0.01, "J moved by only {moved:.2e} relative over {EPOCHS} epochs");
    for (e, (c, g)) in cpu.j.iter().zip(&wgpu.j).enumerate() {
        let rel = (g - c).abs() / c.abs();
        assert!(rel <= 1e-4, "epoch {e}: J wgpu {g} vs cpu {c} (relative {rel:.2e})");
    }
}

/// The unroll's passes go through `run_steps`, which submits a whole pass as one command buffer;
/// the same steps submitted one by one give the same bits (J's curve and ∂J/∂γ).
#[test]
fn batched_unroll_equals_step_by_step_submission() {
    use learnlaw::unroll::{Unroll, Workspace};
    let recipe = PerceptronRecipe { dim: 16, n_train: 300, n_dev: 64, n_test: 64, seed: 4, ..Default::default() };
    let data = PerceptronData::generate(&recipe).unwrap();
    let Some(mut e) = wgpu_engine(&data, &Options::default()) else { return };
    let (steps, eta, n) = (20, 0.3, data.train.len());
    let theta0 = e.upload(&init_theta(data.dim, 10)).unwrap();
    let gamma_host: Vec<f32> = (0..steps * n).map(|i| (1 + i % 7) as f32).collect();
    let mut gamma = e.upload(&gamma_host).unwrap();
    e.project_simplex_rows(&mut gamma, n).unwrap();

    let mut ws = Workspace::new(&mut e, Unroll { steps, eta }, 1).unwrap();
    let mut grad = e.zeros(steps * n).unwrap();
    let fwd = ws.gradient(&mut e, &theta0, &gamma, &mut grad).unwrap();
    let batched = (fwd.dev.iter().map(|l| (*l as f32).to_bits()).collect::<Vec<_>>(), e.download(&grad).unwrap());

    // The same recursion, one call (one submission) at a time.
    let mut thetas = vec![e.zeros(data.dim).unwrap()];
    e.copy(&theta0, &mut thetas[0]).unwrap();
    let mut curve = e.zeros(steps).unwrap();
    for t in 0..steps {
        let mut next = e.zeros(data.dim).unwrap();
        e.forward_step(&thetas[t], &gamma, t, eta, &mut next, Some((&mut curve, t))).unwrap();
        thetas.push(next);
    }
    let (mut lambda_next, mut lambda) = (e.zeros(data.dim).unwrap(), e.zeros(data.dim).unwrap());
    let last = e.loss_grad(Set::Dev, &thetas[steps], &mut lambda_next).unwrap();
    e.scale(1.0 / steps as f64, &mut lambda_next).unwrap();
    let mut grad_direct = e.zeros(steps * n).unwrap();
    for t in (0..steps).rev() {
        e.backward_step(&thetas[t], &gamma, t, &lambda_next, eta, 1.0 / steps as f64, &mut grad_direct, &mut lambda).unwrap();
        std::mem::swap(&mut lambda, &mut lambda_next);
    }
    let mut dev: Vec<u32> = e.download(&curve).unwrap().iter().map(|l| l.to_bits()).collect();
    dev.push((last as f32).to_bits());
    let direct = (dev, e.download(&grad_direct).unwrap());
    assert!(batched.0 == direct.0, "dev-loss curves differ");
    assert!(batched.1.iter().zip(&direct.1).all(|(a, b)| a.to_bits() == b.to_bits()), "∂J/∂γ differs");
}

/// Bind groups are cached: the first outer epoch creates them, later epochs create none (without
/// the cache every dispatch made one: 7 per step pair, 14k per epoch at T = 2000). The search's
/// vectors leave the cache once dropped.
#[test]
fn bind_groups_are_made_in_the_first_epoch_only() {
    use learnlaw::policy::Policy;
    use learnlaw::search::Search;
    let recipe = PerceptronRecipe { dim: 16, n_train: 300, n_dev: 64, n_test: 64, seed: 5, ..Default::default() };
    let data = PerceptronData::generate(&recipe).unwrap();
    let Some(mut e) = wgpu_engine(&data, &Options::default()) else { return };
    let cfg = SearchConfig { steps: 40, eta: 0.3, epochs: 10, outer_lr: 0.1, ..SearchConfig::paper_perceptron() };
    let mut search = Search::new(&mut e, &cfg, &init_theta(data.dim, 10), &Policy::constant(cfg.steps, data.train.len()).gamma, 0).unwrap();
    let (before, _) = e.bind_groups();
    search.step(&mut e).unwrap();
    let (first, held) = e.bind_groups();
    for epoch in 2..=3 {
        search.step(&mut e).unwrap();
        let (created, _) = e.bind_groups();
        println!("bind groups created in epoch {epoch}: {}", created - first);
        assert_eq!(created, first, "epoch {epoch} created bind groups");
    }
    println!("bind groups created in epoch 1: {} ({held} cached)", first - before);
    assert!(first > before, "the first epoch must create its bind groups");
    drop(search);
    let theta = e.upload(&init_theta(data.dim, 10)).unwrap();
    e.loss(Set::Dev, &theta).unwrap();
    let (_, after) = e.bind_groups();
    assert!(after < held / 2, "the dropped search's bind groups stay cached: {after} of {held}");
}
