//! CPU benchmarks of the Transformer task at the scaled default (`reproduce transformer`: hidden
//! 64, 2 layers, 4 heads, context 32, N = 1024 training sequences).
//!
//! The ceiling is a GEMM rate measured in the same run: the FFN's first product over every
//! training token ([tokens, hidden]·[hidden, 4·hidden]) in the engine's chunks, on all cores. Each
//! step's analytic FLOPs (`transformer::step_flops`) over its time, divided by that rate, says
//! how matmul-bound the step is. Names follow `{backend}_{op}_{dtype}`; the table prints last.
//!
//! The wgpu engine's steps and its GEMM kernel run at the same size beside the CPU's, with the
//! ratio to the CPU measured in the same run, and the device working set of a step beside what the
//! logits alone would take materialised. On lavapipe (Mesa's Vulkan on the CPU) these show the
//! kernels' relative costs, not GPU speed.
use std::time::Duration;

use criterion::{criterion_group, Criterion, Throughput};
use learnlaw::linalg::{gemm, Mat, MatMut};
use learnlaw::policy::Policy;
use learnlaw::text::{TextRecipe, TokenData};
use learnlaw::transformer::device::DeviceKernels;
use learnlaw::transformer::kernels::{GemmShape, LayerKernels, Operand, Output};
use learnlaw::transformer::{init_params, CpuTransformer, TransformerConfig};
use learnlaw::wgpu_backend::{Options, WgpuKernels, WgpuTransformer};
use learnlaw::Engine;
use rayon::prelude::*;

mod common;
use common::median_ns;

fn setup() -> (TransformerConfig, TokenData) {
    let recipe = TextRecipe::default();
    let (data, _) = TokenData::generate(&recipe).expect("default text recipe");
    (TransformerConfig::small(data.vocab_size, data.seq_len - 1), data)
}

fn steps(c: &mut Criterion) {
    let (cfg, data) = setup();
    let n = data.n_train();
    let tokens = n * (data.seq_len - 1);
    let mut e = CpuTransformer::<f32>::new(&cfg, &data).unwrap();
    let theta = init_params(&cfg, 10);
    let gamma = Policy::constant(1, n).gamma;
    let p = theta.len();
    let (mut next, mut lambda, mut curve, mut grad, mut dots) = (vec![0.0; p], vec![0.0; p], vec![0.0; 1], vec![0.0; n], vec![0.0; n]);
    let v: Vec<f32> = (0..p).map(|i| ((i as f32) * 0.618).sin() * 1e-2).collect();

    let mut g = c.benchmark_group("transformer");
    g.sample_size(10).measurement_time(Duration::from_secs(8)).throughput(Throughput::Elements(tokens as u64));
    // The ceiling: the same chunked [rows, H]·[H, F] products the engine runs, on all cores.
    let (h, f) = (cfg.hidden, cfg.ffn);
    let rows = 1024;
    let chunks = tokens.div_ceil(rows);
    let a: Vec<f32> = (0..rows * h).map(|i| (i as f32 * 0.1).cos()).collect();
    let w: Vec<f32> = (0..h * f).map(|i| (i as f32 * 0.3).sin()).collect();
    let mut outs = vec![vec![0.0f32; rows * f]; rayon::current_num_threads()];
    g.bench_function("cpu_gemm_f32", |b| {
        b.iter(|| {
            outs.par_iter_mut().enumerate().for_each(|(t, out)| {
                for _ in (t..chunks).step_by(rayon::current_num_threads()) {
                    gemm(1.0, Mat::new(&a, rows, h), Mat::new(&w, h, f), 0.0, MatMut::new(out, rows, f));
                }
            })
        })
    });
    // The same products through matrixmultiply (what the engine used before its lanes GEMM):
    // the ceiling is the faster of the two.
    g.bench_function("cpu_gemm_matrixmultiply_f32", |b| {
        b.iter(|| {
            outs.par_iter_mut().enumerate().for_each(|(t, out)| {
                for _ in (t..chunks).step_by(rayon::current_num_threads()) {
                    // SAFETY: row-major [rows, h], [h, f] and [rows, f] buffers of those sizes.
                    unsafe {
                        matrixmultiply::sgemm(
                            rows,
                            h,
                            f,
                            1.0,
                            a.as_ptr(),
                            h as isize,
                            1,
                            w.as_ptr(),
                            f as isize,
                            1,
                            0.0,
                            out.as_mut_ptr(),
                            f as isize,
                            1,
                        )
                    }
                }
            })
        })
    });
    g.bench_function("cpu_forward_step_f32", |b| {
        b.iter(|| e.forward_step(&theta, &gamma, 0, 0.1, &mut next, Some((&mut curve, 0))).unwrap())
    });
    g.bench_function("cpu_backward_step_f32", |b| {
        b.iter(|| e.backward_step(&theta, &gamma, 0, &v, 0.1, 1e-3, &mut grad, &mut lambda).unwrap())
    });
    g.bench_function("cpu_train_dots_f32", |b| b.iter(|| e.train_dots(&theta, &v, &mut dots).unwrap()));
    g.finish();

    let gemm_flops = 2.0 * (chunks * rows * h * f) as f64;
    let flops = e.step_flops();
    let fwd = cfg.forward_flops(tokens, data.seq_len - 1);
    let Some(gemm_ns) = median_ns("transformer", "cpu_gemm_f32") else { return };
    let mm_ns = median_ns("transformer", "cpu_gemm_matrixmultiply_f32").unwrap_or(gemm_ns);
    let rate = gemm_flops / gemm_ns.min(mm_ns);
    println!(
        "\nTransformer {} params, {n} sequences × {} tokens; GEMM ceiling {rate:.1} GFLOP/s (lanes {:.1}, matrixmultiply {:.1})",
        p,
        data.seq_len - 1,
        gemm_flops / gemm_ns,
        gemm_flops / mm_ns
    );
    println!("{:<24} {:>10} {:>12} {:>10} {:>8}", "case", "ms", "tokens/s", "GFLOP/s", "of GEMM");
    for (id, fl) in [("cpu_forward_step_f32", flops.forward), ("cpu_backward_step_f32", flops.backward), ("cpu_train_dots_f32", 3.0 * fwd)]
    {
        if let Some(ns) = median_ns("transformer", id) {
            let gf = fl / ns;
            println!("{id:<24} {:>10.1} {:>12.0} {:>10.1} {:>7.0}%", ns / 1e6, tokens as f64 / (ns * 1e-9), gf, 100.0 * gf / rate);
        }
    }
}

/// The same steps on the wgpu engine, and its GEMM kernel on the FFN's product over every
/// training token, each against the CPU's in the table. Timed by hand (the mean of a few calls
/// after a warm-up, each synchronised): a lavapipe step takes seconds, too long for criterion's
/// ten samples.
fn wgpu_steps(c: &mut Criterion) {
    let _ = c;
    let (cfg, data) = setup();
    let n = data.n_train();
    let tokens = n * (data.seq_len - 1);
    let mut e = match WgpuTransformer::new(&cfg, &data) {
        Ok(e) => e,
        Err(err) => return println!("SKIPPED wgpu: {err}"),
    };
    let up = |e: &mut WgpuTransformer, v: &[f32]| e.upload(v).unwrap();
    let theta = up(&mut e, &init_params(&cfg, 10));
    let gamma = up(&mut e, &Policy::constant(1, n).gamma);
    let p = e.num_params();
    let v: Vec<f32> = (0..p).map(|i| ((i as f32) * 0.618).sin() * 1e-2).collect();
    let v = up(&mut e, &v);
    let (mut next, mut lambda, mut curve, mut grad) = (e.zeros(p).unwrap(), e.zeros(p).unwrap(), e.zeros(1).unwrap(), e.zeros(n).unwrap());
    let forward = mean_ms(2, || {
        e.forward_step(&theta, &gamma, 0, 0.1, &mut next, Some((&mut curve, 0))).unwrap();
        e.sync().unwrap()
    });
    let backward = mean_ms(2, || {
        e.backward_step(&theta, &gamma, 0, &v, 0.1, 1e-3, &mut grad, &mut lambda).unwrap();
        e.sync().unwrap()
    });
    let working_set = e.working_set_bytes();
    drop(e);

    // The FFN's first product [tokens, H]·[H, F], the CPU's ceiling above, as one GEMM.
    let (h, f) = (cfg.hidden, cfg.ffn);
    let mut gemms = Vec::new();
    // The default (gemm_sg8 where subgroups are 8 lanes, as on lavapipe), gemm_blocked (what
    // runs without subgroups) and the baseline.
    let variants = [("wgpu_gemm_f32", false, false), ("wgpu_gemm_blocked_f32", true, false), ("wgpu_gemm_baseline_f32", false, true)];
    for (variant, no_subgroups, baseline) in variants {
        let k = WgpuKernels::open(&Options { no_subgroups, ..Options::default() }).unwrap();
        let mut k = if baseline { k.with_baseline_gemm() } else { k };
        let a = k.upload_buf(&(0..tokens * h).map(|i| (i as f32 * 0.1).cos()).collect::<Vec<_>>()).unwrap();
        let w = k.upload_buf(&(0..h * f).map(|i| (i as f32 * 0.3).sin()).collect::<Vec<_>>()).unwrap();
        let mut out = k.upload_buf(&vec![0.0; tokens * f]).unwrap();
        let ms = mean_ms(3, || {
            let op = |x| Operand { v: x, t: None, at: 0, trans: false };
            k.gemm(GemmShape::single(tokens, f, h), op(&a), op(&w), 0.0, Output { v: Some(&mut out), t: None, at: 0 });
            k.sync().unwrap()
        });
        gemms.push((variant, ms));
    }

    let gemm_flops = 2.0 * (tokens * h * f) as f64;
    let flops = CpuTransformer::<f32>::new(&cfg, &data).unwrap().step_flops();
    // The CPU's GEMM case multiplies whole 1024-row chunks: scaled to the same rows.
    let cpu_gemm = median_ns("transformer", "cpu_gemm_f32").map(|ns| ns / 1e6 * tokens as f64 / (tokens.div_ceil(1024) * 1024) as f64);
    let cpu_ms = |id: &str| median_ns("transformer", id).map(|ns| ns / 1e6);
    println!("\nwgpu against cpu (same run; lavapipe shows relative costs, not GPU speed)");
    println!("{:<24} {:>10} {:>10} {:>10}", "case", "ms", "GFLOP/s", "cpu/wgpu");
    let rows = [
        (gemms[0].0, gemms[0].1, gemm_flops, cpu_gemm),
        (gemms[1].0, gemms[1].1, gemm_flops, cpu_gemm),
        (gemms[2].0, gemms[2].1, gemm_flops, cpu_gemm),
        ("wgpu_forward_step_f32", forward, flops.forward, cpu_ms("cpu_forward_step_f32")),
        ("wgpu_backward_step_f32", backward, flops.backward, cpu_ms("cpu_backward_step_f32")),
    ];
    for (id, ms, fl, cpu) in rows {
        let ratio = cpu.map_or("-".to_string(), |c| format!("{:.3}×", c / ms));
        println!("{id:<24} {ms:>10.1} {:>10.2} {ratio:>10}", fl / (ms * 1e6));
    }
    let logits = 2 * tokens * cfg.vocab_size * 4;
    println!(
        "device working set of a backward step: {:.1} MiB; the training set's logits and their tangents materialised: {:.1} MiB",
        working_set as f64 / (1 << 20) as f64,
        logits as f64 / (1 << 20) as f64
    );
}

/// Mean milliseconds of `iters` calls of `f` after one warm-up call.
fn mean_ms(iters: u32, mut f: impl FnMut()) -> f64 {
    f();
    let start = std::time::Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_secs_f64() * 1e3 / iters as f64
}

criterion_group!(benches, steps, wgpu_steps);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
