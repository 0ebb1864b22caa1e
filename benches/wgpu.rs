//! wgpu benchmarks of the perceptron search at the paper's size (N = 4096, D = 128, T = 2000 rows
//! for the projection), on whatever adapter wgpu picks (lavapipe on a machine without a GPU).
//!
//! Every timed region ends with the device idle (`sync()`, a blocking device poll, inside it). The
//! forward step runs as an unroll runs it: its dev loss goes into slot t of a device curve and
//! nothing is read back, so steps are submitted back to back and the device is waited for once per
//! batch of `iters` steps (the time is per step, including that one wait). The backward step and
//! the copy floor wait after every call. The floor is a device-to-device copy of a buffer the size
//! of X plus the same submit-and-wait, i.e. one pass over X's bytes and one round trip; the table
//! printed last gives each step against its dtype's floor. `_f16` rows store X as f16 (f32
//! accumulation) and run only where the adapter has SHADER_F16. Names follow
//! `{backend}_{op}_{dtype}`. No adapter: prints SKIPPED and exits successfully.
//! `LEARNLAW_BENCH_EPOCH=0` skips the outer epoch (2000 forward + 2000 backward steps; ~6 s a
//! sample on a 2-core lavapipe), which first prints how many bind groups its first and its
//! second epoch create (the cache's work: none after the first).
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use learnlaw::data::{init_theta, PerceptronData, PerceptronRecipe};
use learnlaw::policy::Policy;
use learnlaw::search::{Search, SearchConfig};
use learnlaw::wgpu_backend::{Options, Storage, WgpuPerceptron};
use learnlaw::{Engine, Error};

mod common;
use common::{exp_grad_variants, median_ns, time_exp_grad};

const STEPS: usize = 2000;

fn paper_data() -> PerceptronData {
    PerceptronData::generate(&PerceptronRecipe::default()).expect("paper recipe")
}

fn engine(data: &PerceptronData) -> WgpuPerceptron {
    WgpuPerceptron::new(data).expect("wgpu engine (adapter checked in main)")
}

/// The engine with X stored as `storage`, or None when the adapter lacks what it needs (f16
/// without SHADER_F16).
fn engine_with(data: &PerceptronData, storage: Storage) -> Option<WgpuPerceptron> {
    match WgpuPerceptron::with_options(data, &Options { storage, ..Options::default() }) {
        Ok(e) => Some(e),
        Err(Error::Unavailable { backend, reason }) if backend != "wgpu" => {
            println!("SKIPPED {backend} benchmarks: {reason}");
            None
        }
        Err(e) => panic!("wgpu engine: {e}"),
    }
}

const STORAGES: [Storage; 2] = [Storage::F32, Storage::F16];

/// Copy floor, forward step and backward step with X stored as `storage`.
fn step_benches(c: &mut Criterion, data: &PerceptronData, storage: Storage) {
    let Some(mut e) = engine_with(data, storage) else { return };
    let dt = storage.name();
    let (n, d) = (data.train.len(), data.dim);
    let bytes = (n * d * storage.bytes()) as u64;
    let theta = e.upload(&init_theta(d, 10)).unwrap();
    let gamma = e.upload(&Policy::constant(1, n).gamma).unwrap();
    let (mut next, mut lambda, mut curve) = (e.zeros(d).unwrap(), e.zeros(d).unwrap(), e.zeros(STEPS).unwrap());
    let mut grad = e.zeros(n).unwrap();
    let lambda_next = e.upload(&vec![0.01; d]).unwrap();
    // A buffer of X's bytes in this storage (f32 elements: half as many for f16).
    let x_like = e.zeros(bytes as usize / 4).unwrap();
    let mut x_copy = e.zeros(bytes as usize / 4).unwrap();
    e.sync().unwrap();

    let mut g = c.benchmark_group("wgpu_step");
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function(format!("wgpu_copy_floor_{dt}"), |b| {
        b.iter(|| {
            e.copy(&x_like, &mut x_copy).unwrap();
            e.sync().unwrap();
        })
    });
    g.bench_function(format!("wgpu_forward_step_{dt}"), |b| {
        b.iter_custom(|iters| {
            e.sync().unwrap();
            let start = Instant::now();
            for i in 0..iters {
                e.forward_step(&theta, &gamma, 0, 0.1, &mut next, Some((&mut curve, i as usize % STEPS))).unwrap();
            }
            e.sync().unwrap();
            start.elapsed()
        })
    });
    g.bench_function(format!("wgpu_backward_step_{dt}"), |b| {
        b.iter(|| {
            e.backward_step(&theta, &gamma, 0, &lambda_next, 0.1, 1.0 / STEPS as f64, &mut grad, &mut lambda).unwrap();
            e.sync().unwrap();
        })
    });
    g.finish();
}

fn steps(c: &mut Criterion) {
    let data = paper_data();
    let n = data.train.len();
    for storage in STORAGES {
        step_benches(c, &data, storage);
    }
    let mut e = engine(&data);

    // Projection of a [T, N] policy after a gradient step (1/N plus noise, some entries cut to 0).
    let mut g = c.benchmark_group("wgpu_policy");
    g.sample_size(20);
    let noise = |i: usize| ((i * 2654435761) % 1000) as f32 * 1e-7;
    let raw = e.upload(&(0..STEPS * n).map(|i| 1.0 / n as f32 + noise(i) - 5e-5).collect::<Vec<f32>>()).unwrap();
    let mut rows = e.zeros(STEPS * n).unwrap();
    g.throughput(Throughput::Bytes((STEPS * n * 4) as u64));
    g.bench_function("wgpu_project_simplex_rows_f32", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                e.copy(&raw, &mut rows).unwrap();
                e.sync().unwrap();
                let start = std::time::Instant::now();
                e.project_simplex_rows(&mut rows, n).unwrap(); // reads the flag back: synchronous
                total += start.elapsed();
            }
            total
        })
    });
    // The exp-grad step on the device, and through the host (download, f64 update, upload) as
    // every backend did before it had the kernels.
    let grad = e.upload(&(0..STEPS * n).map(|i| noise(i) * 1e3 - 0.05).collect::<Vec<f32>>()).unwrap();
    for (name, step) in exp_grad_variants::<WgpuPerceptron>("wgpu") {
        g.bench_function(&name, |b| b.iter_custom(|iters| time_exp_grad(&mut e, step, &raw, &mut rows, &grad, n, iters)));
    }
    g.finish();
}

/// LEARNLAW_BENCH_EPOCH=0 skips the outer-epoch benchmark (about a minute on lavapipe).
fn epoch_enabled() -> bool {
    std::env::var("LEARNLAW_BENCH_EPOCH").map_or(true, |v| v != "0")
}

fn outer_epoch(c: &mut Criterion) {
    if !epoch_enabled() {
        return;
    }
    let data = paper_data();
    let n = data.train.len();
    let mut e = engine(&data);
    let cfg = SearchConfig { epochs: 1_000_000, ..SearchConfig::paper_perceptron() };
    let mut search = Search::new(&mut e, &cfg, &init_theta(data.dim, 10), &Policy::constant(STEPS, n).gamma, 0).unwrap();
    // Bind groups the first epoch creates, and every later one (the cache's work).
    let mut epoch_bind_groups = || {
        let (before, _) = e.bind_groups();
        search.step(&mut e).unwrap();
        e.bind_groups().0 - before
    };
    let first = epoch_bind_groups();
    let later = epoch_bind_groups();
    println!("bind groups created per outer epoch: {first} in the first, {later} in the next");
    let mut g = c.benchmark_group("wgpu_search");
    g.sample_size(10).measurement_time(Duration::from_secs(30));
    g.bench_function("wgpu_outer_epoch_f32", |b| {
        b.iter(|| {
            search.step(&mut e).unwrap();
            e.sync().unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, steps, outer_epoch);

fn main() {
    let tiny = PerceptronData::generate(&PerceptronRecipe { dim: 2, n_train: 2, n_dev: 1, n_test: 1, ..Default::default() }).unwrap();
    let f16;
    match WgpuPerceptron::new(&tiny) {
        Ok(e) => {
            let info = e.adapter_info();
            f16 = engine_with(&tiny, Storage::F16).is_some();
            println!(
                "wgpu adapter: {} ({:?}, {:?}, driver {} {}); f16 storage: {}",
                info.name,
                info.backend,
                info.device_type,
                info.driver,
                info.driver_info,
                if f16 { "yes" } else { "no (no SHADER_F16)" }
            );
        }
        Err(Error::Unavailable { reason, .. }) => {
            println!("SKIPPED: no wgpu adapter ({reason})");
            return;
        }
        Err(e) => panic!("wgpu engine: {e}"),
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    println!("\n{:<32} {:>12} {:>14}", "benchmark", "median", "vs copy floor");
    let mut rows: Vec<(&str, String)> = Vec::new();
    for dt in STORAGES.map(Storage::name) {
        for op in ["copy_floor", "forward_step", "backward_step"] {
            rows.push(("wgpu_step", format!("wgpu_{op}_{dt}")));
        }
    }
    rows.push(("wgpu_policy", "wgpu_project_simplex_rows_f32".into()));
    rows.push(("wgpu_policy", "wgpu_exp_grad_rows_f32".into()));
    rows.push(("wgpu_policy", "wgpu_exp_grad_rows_host_f32".into()));
    rows.push(("wgpu_search", "wgpu_outer_epoch_f32".into()));
    for (group, id) in rows {
        if id == "wgpu_outer_epoch_f32" && !epoch_enabled() {
            continue; // not run now: criterion's file would be a stale result
        }
        if id.ends_with("_f16") && !f16 {
            continue; // skipped on this adapter: criterion's file would be a stale result
        }
        let Some(t) = median_ns(group, &id) else { continue };
        // Each step against the copy floor of its own X bytes (the policy and epoch rows: f32).
        let dt = if id.ends_with("_f16") { "f16" } else { "f32" };
        let floor = median_ns("wgpu_step", &format!("wgpu_copy_floor_{dt}"));
        let ratio = floor.map_or(String::from("-"), |f| format!("{:.2}×", t / f));
        println!("{id:<32} {:>10.3} ms {ratio:>14}", t / 1e6);
    }
    if let (Some(dev), Some(host)) =
        (median_ns("wgpu_policy", "wgpu_exp_grad_rows_f32"), median_ns("wgpu_policy", "wgpu_exp_grad_rows_host_f32"))
    {
        println!("exp-grad step on the device: {:.1}× faster than through the host", host / dev);
    }
    if let Some(t) = median_ns("wgpu_search", "wgpu_outer_epoch_f32").filter(|_| epoch_enabled()) {
        println!("outer epoch at the paper's size (N=4096, D=128, T=2000): {:.3} s", t / 1e9);
    }
}
