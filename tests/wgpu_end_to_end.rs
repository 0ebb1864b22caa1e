//! End to end on the WGSL engine: a reduced perceptron search (D = 16, N = 300, dev/test 64,
//! T = 50, 5 outer epochs) through `run::search` gives the CPU f32 engine's J trajectory within
//! 1e-4 relative. Skips visibly without a wgpu adapter (fails instead with LEARNLAW_REQUIRE_WGPU=1).
use std::io::Write as _; // a skip is written to stderr directly: test output capture would hide it
use std::ops::ControlFlow;
use std::path::Path;

use learnlaw::data::{init_theta, PerceptronData, PerceptronRecipe};
use learnlaw::perceptron::CpuPerceptron;
use learnlaw::run::{self, EpochEvent, History, RunConfig, RunDir};
use learnlaw::search::{OuterOptimizer, SearchConfig};
use learnlaw::wgpu_backend::WgpuPerceptron;
use learnlaw::{Engine, Error};

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
        },
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
    let mut gpu = match WgpuPerceptron::new(&data) {
        Ok(e) => e,
        Err(Error::Unavailable { reason, .. }) => {
            assert!(
                std::env::var("LEARNLAW_REQUIRE_WGPU").map_or(true, |v| v != "1"),
                "LEARNLAW_REQUIRE_WGPU=1 but no wgpu adapter: {reason}"
            );
            let _ = writeln!(std::io::stderr(), "SKIPPED: no wgpu adapter ({reason})");
            return;
        }
        Err(e) => panic!("wgpu engine: {e}"),
    };
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
