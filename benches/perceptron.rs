//! CPU benchmarks of the perceptron search at the paper's size (N = 4096, D = 128, T = 2000).
//!
//! Each fused step is reported against a GEMV floor measured in the same run: one multithreaded
//! pass y = Xθ over the same training matrix, i.e. the cost of reading X once. The forward step
//! reads X once, the backward step once (two dots and an axpy per row), so ratios near 1 mean the
//! fusion works. A full outer epoch (forward unroll, adjoint, update, projection) is timed too.
//! Where a step's time goes: its training pass alone (the forward step without L_dev), the desired
//! set's pass (L_dev, and L_dev with ∇L_dev as the backward step needs), and each on one thread
//! against the floor on one thread (what the second core buys, and the fork–join's cost).
//! Names follow `{backend}_{op}_{dtype}`; the ratio table is printed last, under the CPU's name.
use std::time::Duration;

use criterion::{criterion_group, Criterion, Throughput};
use learnlaw::data::{init_theta, PerceptronData, PerceptronRecipe};
use learnlaw::perceptron::CpuPerceptron;
use learnlaw::policy::Policy;
use learnlaw::search::{OuterOptimizer, Search, SearchConfig};
use learnlaw::{simplex, Engine, Set};
use rayon::prelude::*;

mod common;
use common::{cpu_model, median_ns};

const STEPS: usize = 2000;

fn paper_data() -> PerceptronData {
    PerceptronData::generate(&PerceptronRecipe::default()).expect("paper recipe")
}

/// The floor: y = Xθ, rows split over the cores like the engine's, one vectorised pass over X
/// (16 independent accumulators per row, so the loop is load-bound, not add-latency-bound).
fn gemv(x: &[f32], theta: &[f32], y: &mut [f32]) {
    let d = theta.len();
    y.par_chunks_mut(256).zip(x.par_chunks(256 * d)).for_each(|(y, x)| {
        for (yn, xn) in y.iter_mut().zip(x.chunks_exact(d)) {
            let mut acc = [0.0f32; 16];
            for (a, b) in xn.chunks_exact(16).zip(theta.chunks_exact(16)) {
                for i in 0..16 {
                    acc[i] += a[i] * b[i];
                }
            }
            *yn = acc.iter().sum();
        }
    });
}

fn steps(c: &mut Criterion) {
    let data = paper_data();
    let (n, d) = (data.train.len(), data.dim);
    let bytes = (n * d * 4) as u64;
    let mut e = CpuPerceptron::<f32>::new(&data).unwrap();
    let theta = e.upload(&init_theta(d, 10)).unwrap();
    let gamma = e.upload(&Policy::constant(1, n).gamma).unwrap();
    let (mut next, mut lambda, mut curve) = (e.zeros(d).unwrap(), e.zeros(d).unwrap(), e.zeros(1).unwrap());
    let mut grad = e.zeros(n).unwrap();
    let lambda_next = e.upload(&vec![0.01; d]).unwrap();

    let mut g = c.benchmark_group("step");
    g.throughput(Throughput::Bytes(bytes));
    let (mut y, theta_host) = (vec![0.0f32; n], init_theta(d, 10));
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    for (suffix, threads) in [("", None), ("_1thread", Some(&one_thread))] {
        // The whole measurement on a worker of the pool (this thread is worker 0 of the global
        // one, as in the CLI), so the steps' parallel loops start from inside it.
        let on = |f: &mut (dyn FnMut() + Send)| match threads {
            Some(pool) => pool.install(f),
            None => f(),
        };
        g.bench_function(format!("cpu_gemv_floor_f32{suffix}"), |b| on(&mut || b.iter(|| gemv(&data.train.x, &theta_host, &mut y))));
        g.bench_function(format!("cpu_forward_step_f32{suffix}"), |b| {
            on(&mut || b.iter(|| e.forward_step(&theta, &gamma, 0, 0.1, &mut next, Some((&mut curve, 0))).unwrap()))
        });
        g.bench_function(format!("cpu_backward_step_f32{suffix}"), |b| {
            on(&mut || {
                b.iter(|| e.backward_step(&theta, &gamma, 0, &lambda_next, 0.1, 1.0 / STEPS as f64, &mut grad, &mut lambda).unwrap())
            })
        });
        g.bench_function(format!("cpu_forward_train_pass_f32{suffix}"), |b| {
            on(&mut || b.iter(|| e.forward_step(&theta, &gamma, 0, 0.1, &mut next, None).unwrap()))
        });
        g.bench_function(format!("cpu_dev_loss_f32{suffix}"), |b| on(&mut || b.iter(|| e.loss(Set::Dev, &theta).unwrap())));
        g.bench_function(format!("cpu_dev_loss_grad_f32{suffix}"), |b| {
            on(&mut || b.iter(|| e.loss_grad(Set::Dev, &theta, &mut lambda).unwrap()))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("policy");
    let noise = |i: usize| ((i * 2654435761) % 1000) as f32 * 1e-7;
    g.throughput(Throughput::Bytes((STEPS * n * 4) as u64));
    g.bench_function("cpu_project_simplex_rows_f32", |b| {
        b.iter_batched_ref(
            || (0..STEPS * n).map(|i| 1.0 / n as f32 + noise(i) - 5e-5).collect::<Vec<f32>>(),
            |rows| simplex::project_rows(rows, n),
            criterion::BatchSize::PerIteration,
        )
    });
    // The sort-based reference (what an exact projection costs without Condat's algorithm).
    g.sample_size(10);
    g.bench_function("cpu_project_simplex_rows_sorted_f32", |b| {
        b.iter_batched_ref(
            || (0..STEPS * n).map(|i| 1.0 / n as f32 + noise(i) - 5e-5).collect::<Vec<f32>>(),
            |rows| rows.par_chunks_mut(n).for_each(simplex::project_sorted),
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn outer_epoch(c: &mut Criterion) {
    let data = paper_data();
    let n = data.train.len();
    let mut e = CpuPerceptron::<f32>::new(&data).unwrap();
    let cfg = SearchConfig { epochs: 1_000_000, ..SearchConfig::paper_perceptron() };
    assert_eq!(cfg.optimizer, OuterOptimizer::Sgd);
    let mut search = Search::new(&mut e, &cfg, &init_theta(data.dim, 10), &Policy::constant(STEPS, n).gamma, 0).unwrap();
    let mut g = c.benchmark_group("search");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("cpu_outer_epoch_f32", |b| b.iter(|| search.step(&mut e).unwrap()));
    g.finish();
}

criterion_group!(benches, steps, outer_epoch);

fn main() {
    // As in the CLI: this thread is worker 0 of the global pool.
    rayon::ThreadPoolBuilder::new().use_current_thread().build_global().expect("the global thread pool");
    benches();
    Criterion::default().configure_from_args().final_summary();
    println!("\n{}", cpu_model());
    println!("{:<36} {:>12} {:>14}", "benchmark", "median", "vs GEMV floor");
    let ops = ["gemv_floor", "forward_step", "backward_step", "forward_train_pass", "dev_loss", "dev_loss_grad"];
    for suffix in ["", "_1thread"] {
        let floor = median_ns("step", &format!("cpu_gemv_floor_f32{suffix}"));
        for op in ops {
            let id = format!("cpu_{op}_f32{suffix}");
            let Some(t) = median_ns("step", &id) else { continue };
            let ratio = floor.map_or(String::from("-"), |f| format!("{:.2}×", t / f));
            println!("{id:<36} {:>10.3} ms {ratio:>14}", t / 1e6);
        }
    }
    for (group, id) in
        [("policy", "cpu_project_simplex_rows_f32"), ("policy", "cpu_project_simplex_rows_sorted_f32"), ("search", "cpu_outer_epoch_f32")]
    {
        let Some(t) = median_ns(group, id) else { continue };
        println!("{id:<36} {:>10.3} ms", t / 1e6);
    }
    if let Some(t) = median_ns("search", "cpu_outer_epoch_f32") {
        println!("outer epoch at the paper's size (N=4096, D=128, T=2000): {:.3} s", t / 1e9);
    }
}
