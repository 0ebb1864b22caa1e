use std::ops::ControlFlow;
use learnlaw::data::{init_theta, PerceptronData, PerceptronRecipe};
use learnlaw::perceptron::CpuPerceptron;
use learnlaw::run::{self, RunConfig, RunDir};
use learnlaw::search::{OuterOptimizer, SearchConfig};

#[test]
fn explore() {
    let data = PerceptronData::generate(&PerceptronRecipe { dim: 8, n_train: 64, n_dev: 32, n_test: 32, ..Default::default() }).unwrap();
    let theta0 = init_theta(8, 10);
    for eta in [0.1, 0.3, 0.5] {
        for lr in [0.01, 0.05, 0.1, 0.3, 1.0, 3.0, 10.0] {
            let tmp = tempfile::tempdir().unwrap();
            let cfg = RunConfig { task: "perceptron".into(), backend: "cpu".into(), data: "/x".into(), data_fingerprint: "0".into(), init_seed: 10,
                search: SearchConfig { steps: 30, eta, epochs: 5, outer_lr: lr, optimizer: OuterOptimizer::Sgd, checkpoint_every: None } };
            let mut e = CpuPerceptron::<f32>::new(&data).unwrap();
            let h = run::search(&mut e, &RunDir::new(tmp.path()), &cfg, &theta0, |_| ControlFlow::Continue(()));
            match h { Ok(h) => { let ev = run::evaluate(&mut e, &RunDir::new(tmp.path()), &theta0).unwrap(); println!("eta {eta} lr {lr}: {:?} ar {:?} {:?}", h.j, ev.ar, ev.law_policy.sim) }, Err(err) => println!("eta {eta} lr {lr}: {err}") }
        }
    }
    for eta in [1e6, 1e30, 1e37] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = RunConfig { task: "perceptron".into(), backend: "cpu".into(), data: "/x".into(), data_fingerprint: "0".into(), init_seed: 10,
            search: SearchConfig { steps: 30, eta, epochs: 1, outer_lr: 0.1, optimizer: OuterOptimizer::Sgd, checkpoint_every: None } };
        let mut e = CpuPerceptron::<f32>::new(&data).unwrap();
        println!("f32 eta {eta}: {:?}", run::search(&mut e, &RunDir::new(tmp.path()), &cfg, &theta0, |_| ControlFlow::Continue(())).map(|h| h.j));
        let tmp = tempfile::tempdir().unwrap();
        let mut e = CpuPerceptron::<f64>::new(&data).unwrap();
        println!("f64 eta {eta}: {:?}", run::search(&mut e, &RunDir::new(tmp.path()), &cfg, &theta0, |_| ControlFlow::Continue(())).map(|h| h.j));
    }
}
