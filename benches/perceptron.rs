//! CPU benchmarks of the perceptron search at the paper's size (N = 4096, D = 128, T = 2000).
//!
//! Each fused step is reported against a GEMV floor measured in the same run: the engine's own
//! multithreaded pass z = Xθ over the same training matrix (its dot kernel, nothing else), i.e. the
//! cost of reading X once. The forward step reads X once, the backward step once (two dots and an
//! axpy per row), so ratios near 1 mean the fusion works. A full outer epoch (forward unroll,
//! adjoint, update, projection) is timed too. Where a step's time goes: its training pass alone
//! (the forward step without L_dev), the desired set's pass (L_dev, and L_dev with ∇L_dev as the
//! backward step needs), and each on one thread against the floor on one thread (what the second
//! core buys, and the fork–join's cost). The engines: `cpu` f32 on the widest lanes this CPU has,
//! `cpu_avx2` the same on AVX2 lanes (where the widest are AVX-512), and `cpu` with X stored as
//! bf16. Names follow `{backend}_{op}_{dtype}`; the ratio table is printed last, under the CPU's
//! name. `dispatch/*` times starting an empty job on every thread: on the engine's own crew, and
//! as a rayon broadcast (what the steps did before the crew). `rows/*` puts the steps beside the
//! core's own limits: the FMA rate of one core's lanes (`fma_peak_f32`) and the steps on one
//! thread with X in that core's L2 (N = 1024: 512 KiB in f32, 256 KiB in bf16), printed per row
//! against the fewest nanoseconds their FMAs need at that rate (one FMA per padded column for
//! each dot and each axpy of a row).
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, BenchmarkGroup, Criterion, Throughput};
use learnlaw::crew::Crew;
use learnlaw::data::{init_theta, PerceptronData, PerceptronRecipe};
use learnlaw::lanes::{bf16, Isa, LaneKernel, Lanes, Stored, LANES, PAIR};
use learnlaw::perceptron::CpuPerceptron;
use learnlaw::policy::Policy;
use learnlaw::search::{OuterOptimizer, Search, SearchConfig};
use learnlaw::{simplex, Engine, Real, Set};
use rayon::prelude::*;

mod common;
use common::{cpu_model, median_ns};

const STEPS: usize = 2000;
/// Training rows of the `rows/*` steps: X is 512 KiB in f32, inside one core's L2 on the EPYC (1 MiB)
/// and the Xeon (2 MiB) of BENCHMARKS.md.
const L2_ROWS: usize = 1024;
/// Iterations of the FMA-rate kernel per call.
const FMA_ITERS: usize = 1 << 16;
/// Independent FMA chains in the FMA-rate kernel: enough to cover the latency (4 cycles) of two
/// pipes.
const FMA_CHAINS: usize = 8;

fn paper_data() -> PerceptronData {
    PerceptronData::generate(&PerceptronRecipe::default()).expect("paper recipe")
}

/// The step benchmarks of one engine, named `{backend}_{op}_{dtype}{suffix}`. The floor is the
/// engine's own pass z = Xθ (`train_gemv`: the steps' dot kernel and chunking, nothing else),
/// i.e. reading X once.
fn step_benches<X: Stored<f32>>(g: &mut BenchmarkGroup<'_, WallTime>, backend: &str, mut e: CpuPerceptron<f32, X>, suffix: &str) {
    let (n, d) = (e.num_train(), e.num_params());
    let dtype = X::name();
    let theta = e.upload(&init_theta(d, 10)).unwrap();
    let gamma = e.upload(&Policy::constant(1, n).gamma).unwrap();
    let (mut next, mut lambda, mut curve) = (e.zeros(d).unwrap(), e.zeros(d).unwrap(), e.zeros(1).unwrap());
    let (mut grad, mut z) = (e.zeros(n).unwrap(), e.zeros(n).unwrap());
    let lambda_next = e.upload(&vec![0.01; d]).unwrap();
    let id = |op: &str| format!("{backend}_{op}_{dtype}{suffix}");
    g.bench_function(id("gemv_floor"), |b| b.iter(|| e.train_gemv(&theta, &mut z).unwrap()));
    g.bench_function(id("forward_step"), |b| b.iter(|| e.forward_step(&theta, &gamma, 0, 0.1, &mut next, Some((&mut curve, 0))).unwrap()));
    g.bench_function(id("backward_step"), |b| {
        b.iter(|| e.backward_step(&theta, &gamma, 0, &lambda_next, 0.1, 1.0 / STEPS as f64, &mut grad, &mut lambda).unwrap())
    });
    g.bench_function(id("forward_train_pass"), |b| b.iter(|| e.forward_step(&theta, &gamma, 0, 0.1, &mut next, None).unwrap()));
    g.bench_function(id("dev_loss"), |b| b.iter(|| e.loss(Set::Dev, &theta).unwrap()));
    g.bench_function(id("dev_loss_grad"), |b| b.iter(|| e.loss_grad(Set::Dev, &theta, &mut lambda).unwrap()));
}

/// The variants the step table lists: (backend, dtype, suffix).
fn step_variants() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut v = vec![("cpu", "f32", ""), ("cpu", "f32", "_1thread")];
    if avx2_variant() {
        v.push(("cpu_avx2", "f32", ""));
    }
    v.push(("cpu", "bf16", ""));
    v
}

/// Whether to time the AVX2 lanes too: where the default lanes are wider (what a CPU without
/// AVX-512 would run).
fn avx2_variant() -> bool {
    Isa::Avx2.available() && Isa::widest() != Isa::Avx2
}

fn steps(c: &mut Criterion) {
    let data = paper_data();
    let (n, d) = (data.train.len(), data.dim);
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let mut g = c.benchmark_group("step");
    g.throughput(Throughput::Bytes((n * d * 4) as u64));
    step_benches(&mut g, "cpu", CpuPerceptron::<f32>::new(&data).unwrap(), "");
    // An engine takes the thread count of the pool it is made in.
    step_benches(&mut g, "cpu", one_thread.install(|| CpuPerceptron::<f32>::new(&data)).unwrap(), "_1thread");
    if avx2_variant() {
        step_benches(&mut g, "cpu_avx2", CpuPerceptron::<f32>::new(&data).unwrap().with_isa(Isa::Avx2).unwrap(), "");
    }
    g.throughput(Throughput::Bytes((n * d * 2) as u64));
    step_benches(&mut g, "cpu", CpuPerceptron::<f32, bf16>::new(&data).unwrap(), "");
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
    // The paper's whole outer update, γ ← Π(γ − lr ∂J/∂γ), as the search runs it.
    g.throughput(Throughput::Bytes((2 * STEPS * n * 4) as u64));
    let grad: Vec<f32> = (0..STEPS * n).map(|i| noise(i) - 5e-5).collect();
    g.bench_function("cpu_sgd_update_f32", |b| {
        b.iter_batched_ref(
            || vec![1.0 / n as f32; STEPS * n],
            |rows| learnlaw::host::axpy_project_simplex_rows(-1.0, &grad, rows, n).unwrap(),
            criterion::BatchSize::PerIteration,
        )
    });
    g.throughput(Throughput::Bytes((STEPS * n * 4) as u64));
    // The sort-based reference (what an exact projection costs without a linear-time algorithm).
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

/// `FMA_ITERS` rounds of one fused multiply-add on each of `FMA_CHAINS` independent accumulators
/// (the lanes' FMA rate with nothing else in the way); their sum, so nothing is optimised out.
struct FmaPeak {
    a: f32,
    b: f32,
}

impl LaneKernel<f32> for FmaPeak {
    type Out = f32;
    #[inline(always)]
    fn run<L: Lanes<f32>>(self) -> f32 {
        let (a, b) = (L::splat(self.a), L::splat(self.b));
        let mut acc = [L::zero(); FMA_CHAINS];
        for _ in 0..FMA_ITERS {
            for v in &mut acc {
                *v = L::mul_add(*v, a, b);
            }
        }
        acc.into_iter().map(L::sum).sum()
    }
}

/// The steps beside one core's limits: its lanes' FMA rate, and the steps on one thread with X
/// in its L2.
fn rows(c: &mut Criterion) {
    let mut g = c.benchmark_group("rows");
    g.throughput(Throughput::Elements((FMA_ITERS * FMA_CHAINS * LANES) as u64));
    g.bench_function("fma_peak_f32", |b| {
        b.iter(|| f32::on_lanes(Isa::widest(), FmaPeak { a: std::hint::black_box(0.999), b: std::hint::black_box(1e-3) }))
    });
    let recipe = PerceptronRecipe { n_train: L2_ROWS, n_dev: 16, n_test: 16, ..PerceptronRecipe::default() };
    let data = PerceptronData::generate(&recipe).expect("the L2 recipe");
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let e = one_thread.install(|| CpuPerceptron::<f32>::new(&data)).unwrap();
    g.throughput(Throughput::Bytes((L2_ROWS * data.dim * 4) as u64));
    step_benches(&mut g, "cpu", e, "_l2");
    let e = one_thread.install(|| CpuPerceptron::<f32, bf16>::new(&data)).unwrap();
    g.throughput(Throughput::Bytes((L2_ROWS * data.dim * 2) as u64));
    step_benches(&mut g, "cpu", e, "_l2");
    g.finish();
}

/// What it costs to start a step on every thread and wait for all: an empty job on a crew of
/// the global pool's size, and the same as a rayon broadcast from worker 0 of the global pool.
fn dispatch(c: &mut Criterion) {
    let mut g = c.benchmark_group("dispatch");
    let mut crew = Crew::new(rayon::current_num_threads()).unwrap();
    g.bench_function("crew_empty_job", |b| {
        b.iter(|| {
            crew.run(&|i| {
                std::hint::black_box(i);
            })
        })
    });
    g.bench_function("rayon_broadcast_empty_job", |b| {
        b.iter(|| {
            rayon::broadcast(|ctx| {
                std::hint::black_box(ctx.index());
            })
        })
    });
    g.finish();
}

fn outer_epoch(c: &mut Criterion) {
    let data = paper_data();
    let mut g = c.benchmark_group("search");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    epoch_bench(&mut g, CpuPerceptron::<f32>::new(&data).unwrap());
    epoch_bench(&mut g, CpuPerceptron::<f32, bf16>::new(&data).unwrap());
    g.finish();
}

/// One outer epoch of the paper's search (T = 2000: forward unroll, adjoint, SGD, projection).
fn epoch_bench<X: Stored<f32>>(g: &mut BenchmarkGroup<'_, WallTime>, mut e: CpuPerceptron<f32, X>) {
    let (n, d) = (e.num_train(), e.num_params());
    let cfg = SearchConfig { epochs: 1_000_000, ..SearchConfig::paper_perceptron() };
    assert_eq!(cfg.optimizer, OuterOptimizer::Sgd);
    let mut search = Search::new(&mut e, &cfg, &init_theta(d, 10), &Policy::constant(STEPS, n).gamma, 0).unwrap();
    g.bench_function(format!("cpu_outer_epoch_{}", X::name()), |b| b.iter(|| search.step(&mut e).unwrap()));
}

criterion_group!(benches, steps, rows, dispatch, outer_epoch);

fn main() {
    // As in the CLI: this thread is worker 0 of the global pool.
    rayon::ThreadPoolBuilder::new().use_current_thread().build_global().expect("the global thread pool");
    benches();
    Criterion::default().configure_from_args().final_summary();
    println!("\n{}, default lanes {}", cpu_model(), Isa::widest().name());
    println!("{:<36} {:>12} {:>14}", "benchmark", "median", "vs GEMV floor");
    let ops = ["gemv_floor", "forward_step", "backward_step", "forward_train_pass", "dev_loss", "dev_loss_grad"];
    for (backend, dtype, suffix) in step_variants() {
        let floor = median_ns("step", &format!("{backend}_gemv_floor_{dtype}{suffix}"));
        for op in ops {
            let id = format!("{backend}_{op}_{dtype}{suffix}");
            let Some(t) = median_ns("step", &id) else { continue };
            let ratio = floor.map_or(String::from("-"), |f| format!("{:.2}×", t / f));
            println!("{id:<36} {:>10.3} ms {ratio:>14}", t / 1e6);
        }
    }
    print_rows();
    for (group, id) in [
        ("policy", "cpu_project_simplex_rows_f32"),
        ("policy", "cpu_project_simplex_rows_sorted_f32"),
        ("policy", "cpu_sgd_update_f32"),
        ("search", "cpu_outer_epoch_f32"),
        ("search", "cpu_outer_epoch_bf16"),
    ] {
        let Some(t) = median_ns(group, id) else { continue };
        println!("{id:<36} {:>10.3} ms", t / 1e6);
    }
    for id in ["crew_empty_job", "rayon_broadcast_empty_job"] {
        if let Some(t) = median_ns("dispatch", id) {
            println!("{id:<36} {:>10.3} µs", t / 1e3);
        }
    }
    for dtype in ["f32", "bf16"] {
        if let Some(t) = median_ns("search", &format!("cpu_outer_epoch_{dtype}")) {
            println!("outer epoch at the paper's size (N=4096, D=128, T=2000), X in {dtype}: {:.3} s", t / 1e9);
        }
    }
}

/// The steps per row on one thread, against the FMAs' fewest nanoseconds at the measured rate:
/// X in L2 (`rows/*`) and at the paper's size (`step/*_1thread`, X from L3; its backward step also
/// runs the 512 desired rows' ∇L_dev).
fn print_rows() {
    let Some(peak) = median_ns("rows", "fma_peak_f32").map(|t| (FMA_ITERS * FMA_CHAINS * LANES) as f64 / t) else { return };
    let stride = PerceptronRecipe::default().dim.next_multiple_of(PAIR) as f64;
    println!("\none core's FMA rate on {} lanes: {peak:.1} f32 FMAs per ns", Isa::widest().name());
    println!("{:<40} {:>10} {:>14} {:>10}", "one thread, per training row", "ns", "FMAs' fewest", "ratio");
    let runs = [("rows", "f32_l2", L2_ROWS), ("rows", "bf16_l2", L2_ROWS), ("step", "f32_1thread", PerceptronRecipe::default().n_train)];
    for (group, suffix, rows) in runs {
        for (op, fmas) in [("gemv_floor", 1.0), ("forward_train_pass", 2.0), ("backward_step", 3.0)] {
            let id = format!("cpu_{op}_{suffix}");
            let Some(t) = median_ns(group, &id) else { continue };
            let (per_row, fewest) = (t / rows as f64, fmas * stride / peak);
            println!("{id:<40} {per_row:>10.2} {fewest:>14.2} {:>9.1}×", per_row / fewest);
        }
    }
}
