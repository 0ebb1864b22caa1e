//! Embedding learnlaw's fused kernels in your own training loop: γ-weighted full-batch gradient
//! descent on the paper's perceptron, driven step by step through the `Engine` trait, then the
//! gradient of the area under the dev-loss curve with respect to every weight γ_{t,n} (the adjoint
//! pass with Hessian-vector products) — the same calls on every backend.
//!
//! ```sh
//! cargo run --release --example weighted_training                 # cpu
//! cargo run --release --example weighted_training -- cuda-bf16    # or cpu-f64, wgpu, cuda
//! cargo run --release --example weighted_training -- cpu runs/perceptron/policy.safetensors
//! ```
use std::error::Error;

use learnlaw::cuda_backend::{CudaPerceptron, Options as CudaOptions};
use learnlaw::data::{init_theta, PerceptronData, PerceptronRecipe};
use learnlaw::perceptron::CpuPerceptron;
use learnlaw::policy::Policy;
use learnlaw::unroll::{Unroll, Workspace};
use learnlaw::wgpu_backend::WgpuPerceptron;
use learnlaw::{Engine, Real, Storage};

const STEPS: usize = 2000;
const ETA: f64 = 0.1;

fn train<E: Engine>(e: &mut E, data: &PerceptronData, policy: &Policy) -> Result<(), Box<dyn Error>> {
    let real = |v: &[f32]| v.iter().map(|&x| E::Real::of(x as f64)).collect::<Vec<_>>();
    let (p, n) = (e.num_params(), e.num_train());
    let gamma = e.upload(&real(&policy.gamma))?;
    let (mut theta, mut next) = (e.upload(&real(&init_theta(data.dim, 10)))?, e.zeros(p)?);
    let mut curve = e.zeros(STEPS)?;
    // Your loop: one fused launch per step (weighted loss, gradient, update, dev loss into the
    // curve on the device). `run_steps` lets the CUDA engine replay the loop as a CUDA graph.
    e.run_steps(|e| {
        for t in 0..STEPS {
            e.forward_step(&theta, &gamma, t, ETA, &mut next, Some((&mut curve, t)))?;
            std::mem::swap(&mut theta, &mut next);
        }
        Ok(())
    })?;
    let curve: Vec<f64> = e.download(&curve)?.iter().map(|l| l.f64()).collect();
    println!("{}: L_dev {:.5} at step 0, {:.5} at step {}", e.name(), curve[0], curve[STEPS - 1], STEPS - 1);

    // ∂J/∂γ for J = (1/T) Σ_t L_dev(θ_t): negative entries are examples worth more weight.
    let mut ws = Workspace::new(e, Unroll { steps: STEPS, eta: ETA }, 1)?;
    let theta0 = e.upload(&real(&init_theta(data.dim, 10)))?;
    let mut grad = e.zeros(STEPS * n)?;
    let fwd = ws.gradient(e, &theta0, &gamma, &mut grad)?;
    let g0: Vec<f64> = e.download(&grad)?[..n].iter().map(|g| g.f64()).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| g0[a].total_cmp(&g0[b]));
    println!("J = {:.6}; at step 0 the most valuable examples are {:?}", fwd.j, &order[..5]);
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let data = PerceptronData::generate(&PerceptronRecipe::default())?;
    let policy = match args.get(1) {
        Some(path) => Policy::load(path.as_ref())?.0,
        None => Policy::constant(STEPS, data.train.len()),
    };
    if (policy.steps, policy.examples) != (STEPS, data.train.len()) {
        return Err(
            format!("the policy is [{}, {}], this example needs [{STEPS}, {}]", policy.steps, policy.examples, data.train.len()).into()
        );
    }
    let cuda = |storage| CudaPerceptron::with_options(&data, &CudaOptions { storage, ..Default::default() });
    match args.first().map_or("cpu", String::as_str) {
        "cpu" => train(&mut CpuPerceptron::<f32>::new(&data)?, &data, &policy),
        "cpu-f64" => train(&mut CpuPerceptron::<f64>::new(&data)?, &data, &policy),
        "wgpu" => train(&mut WgpuPerceptron::new(&data)?, &data, &policy),
        "cuda" => train(&mut cuda(Storage::F32)?, &data, &policy),
        "cuda-bf16" => train(&mut cuda(Storage::Bf16)?, &data, &policy),
        other => Err(format!("unknown backend {other:?}: cpu, cpu-f64, wgpu, cuda or cuda-bf16").into()),
    }
}
