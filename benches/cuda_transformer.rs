//! CUDA benchmarks of the Transformer task (f32, and bf16 GEMMs on tensor cores) (a bench binary: scripts/gpu-check.sh runs it on the GPU
//! machine; without a CUDA device it prints SKIPPED).
//!
//! At the scaled default (hidden 64, 4 heads, context 32, N = 1024) and at the paper's size
//! (hidden 128, 8 heads, 2 layers, vocab 5,000, context 64, N = 16,384; random token ids, since
//! speed does not depend on them): the engine's forward and backward steps in TFLOP/s (the analytic
//! `step_flops` over the time) beside two GEMM rates measured in the same run on the FFN's first
//! product over every training token ([tokens, H]·[H, 4H]): gemm.cu's, and cuBLAS's SGEMM
//! (loaded dynamically; skipped when libcublas is missing). A step's share of the cuBLAS rate says
//! how far the fused kernels are from the matmul ceiling; gemm.cu's share says what the GEMM
//! kernel itself leaves. The attention family (flash and stored-P) on one chunk, in TFLOP/s of its
//! own FLOP count. Also printed: the device working set of a step beside the training set's
//! logits materialised.
use std::time::Instant;

use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::CudaContext;
use learnlaw::cuda_backend::{CudaKernels, CudaTransformer};
use learnlaw::policy::Policy;
use learnlaw::text::TokenData;
use learnlaw::transformer::device::DeviceKernels;
use learnlaw::transformer::kernels::{Act, Dims, GemmShape, LayerKernels, Operand, Output};
use learnlaw::transformer::{init_params, TransformerConfig};
use learnlaw::{Engine, StepFlops};

/// Random token rows: the speed of a step does not depend on the ids.
fn data(n_train: usize, n_dev: usize, seq_len: usize, vocab: usize) -> TokenData {
    let mut x = 0x2545f4914f6cdd1du64;
    let mut rows = |n: usize| -> Vec<u32> {
        (0..n * seq_len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                2 + (x % (vocab as u64 - 2)) as u32
            })
            .collect()
    };
    let (train, dev, test) = (rows(n_train), rows(n_dev), rows(1));
    TokenData { vocab_size: vocab, seq_len, train, dev, test, noisy: vec![false; n_train] }
}

/// Mean milliseconds of `iters` calls of `f` after one warm-up call.
fn mean_ms(iters: u32, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_secs_f64() * 1e3 / iters as f64
}

/// cuBLAS's SGEMM of row-major [m, k]·[k, n] (as the column-major Cᵀ = Bᵀ·Aᵀ), in ms; None
/// without libcublas.
fn cublas_ms(m: usize, n: usize, k: usize) -> Option<f64> {
    // SAFETY: only tries to dlopen the library's candidate names.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        println!("  (no libcublas: the cuBLAS reference is skipped)");
        return None;
    }
    let ctx = CudaContext::new(0).ok()?;
    let stream = ctx.default_stream();
    let blas = CudaBlas::new(stream.clone()).ok()?;
    let a = stream.clone_htod(&(0..m * k).map(|i| (i as f32 * 0.1).cos()).collect::<Vec<_>>()).ok()?;
    let b = stream.clone_htod(&(0..k * n).map(|i| (i as f32 * 0.3).sin()).collect::<Vec<_>>()).ok()?;
    let mut c = stream.alloc_zeros::<f32>(m * n).ok()?;
    let no = cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N;
    let cfg = GemmConfig {
        transa: no,
        transb: no,
        m: n as i32,
        n: m as i32,
        k: k as i32,
        alpha: 1.0f32,
        lda: n as i32,
        ldb: k as i32,
        beta: 0.0,
        ldc: n as i32,
    };
    Some(mean_ms(5, || {
        // SAFETY: the shapes match the allocations (column-major views of the row-major matrices).
        unsafe { blas.gemm(cfg, &b, &a, &mut c) }.expect("cublas sgemm");
        stream.synchronize().expect("sync");
    }))
}

/// The engine's forward and backward steps (ms), its step FLOPs, working set and device.
fn steps(cfg: &TransformerConfig, data: &TokenData, bf16: bool) -> learnlaw::Result<(f64, f64, StepFlops, u64, String)> {
    let n = data.n_train();
    let e = CudaTransformer::new(cfg, data)?;
    let mut e = if bf16 { e.with_bf16_gemm() } else { e };
    let up = |e: &mut CudaTransformer, v: &[f32]| e.upload(v).unwrap();
    let theta = up(&mut e, &init_params(cfg, 10));
    let gamma = up(&mut e, &Policy::constant(1, n).gamma);
    let p = e.num_params();
    let v: Vec<f32> = (0..p).map(|i| ((i as f32) * 0.618).sin() * 1e-2).collect();
    let v = up(&mut e, &v);
    let (mut next, mut lambda, mut curve, mut grad) = (e.zeros(p).unwrap(), e.zeros(p).unwrap(), e.zeros(1).unwrap(), e.zeros(n).unwrap());
    let forward = mean_ms(3, || {
        e.forward_step(&theta, &gamma, 0, 0.1, &mut next, Some((&mut curve, 0))).unwrap();
        e.sync().unwrap()
    });
    let backward = mean_ms(3, || {
        e.backward_step(&theta, &gamma, 0, &v, 0.1, 1e-3, &mut grad, &mut lambda).unwrap();
        e.sync().unwrap()
    });
    Ok((forward, backward, e.step_flops(), e.working_set_bytes(), e.device_name().to_string()))
}

/// gemm.cu on [m, k]·[k, n] (ms).
fn gemm_ms(m: usize, n: usize, k: usize, bf16: bool) -> f64 {
    let kernels = CudaKernels::open(0).unwrap();
    let mut kernels = if bf16 { kernels.with_bf16_gemm() } else { kernels };
    let a = kernels.upload_buf(&(0..m * k).map(|i| (i as f32 * 0.1).cos()).collect::<Vec<_>>()).unwrap();
    let w = kernels.upload_buf(&(0..k * n).map(|i| (i as f32 * 0.3).sin()).collect::<Vec<_>>()).unwrap();
    let mut out = kernels.upload_buf(&vec![0.0; m * n]).unwrap();
    mean_ms(5, || {
        let op = |x| Operand { v: x, t: None, at: 0, trans: false };
        kernels.gemm(GemmShape::single(m, n, k), op(&a), op(&w), 0.0, Output { v: Some(&mut out), t: None, at: 0 });
        kernels.sync().unwrap()
    })
}

/// Causal attention with tangents on one chunk (forward, backward) in ms, flash or stored-P.
fn attention_ms(d: Dims, stored: bool) -> (f64, f64) {
    let k = CudaKernels::open(0).unwrap();
    let mut k = if stored { k.with_stored_attention() } else { k };
    let len = d.rows() * d.hidden;
    let mut act = |seed: f32| {
        let host: Vec<f32> = (0..len).map(|i| ((i as f32 + seed) * 0.37).sin() * 0.5).collect();
        Act { v: k.upload_buf(&host).unwrap(), t: k.upload_buf(&host).unwrap() }
    };
    let (q, kk, v, go) = (act(1.0), act(2.0), act(3.0), act(4.0));
    let (mut o, mut gq, mut gk, mut gv) = (act(0.0), act(0.0), act(0.0), act(0.0));
    let mut saved = Default::default();
    let scale = 1.0 / (d.hidden as f64).sqrt();
    let forward = mean_ms(5, || {
        k.attention_forward(d, scale, q.pair(true), kk.pair(true), v.pair(true), &mut saved, o.pair_mut(true));
        k.sync().unwrap()
    });
    let backward = mean_ms(5, || {
        let (p, g) = (true, go.pair(true));
        k.attention_backward(d, scale, q.pair(p), kk.pair(p), v.pair(p), &saved, g, gq.pair_mut(p), gk.pair_mut(p), gv.pair_mut(p));
        k.sync().unwrap()
    });
    (forward, backward)
}

fn bench(label: &str, cfg: &TransformerConfig, data: &TokenData) {
    let n = data.n_train();
    let l = data.seq_len - 1;
    let tokens = n * l;
    let (forward, backward, flops, working_set, device) = match steps(cfg, data, false) {
        Ok(r) => r,
        // The GPU check sets LEARNLAW_REQUIRE_CUDA=1: there a missing device is a failure.
        Err(err) if std::env::var("LEARNLAW_REQUIRE_CUDA").is_ok_and(|v| v == "1") => panic!("LEARNLAW_REQUIRE_CUDA=1: {err}"),
        Err(err) => return println!("SKIPPED cuda transformer: {err}"),
    };
    let (forward_bf16, backward_bf16, ..) = steps(cfg, data, true).expect("cuda-bf16 engine");
    // The FFN's first product over every training token, as one GEMM.
    let (h, f) = (cfg.hidden, cfg.ffn);
    let (gemm, gemm_bf16) = (gemm_ms(tokens, f, h, false), gemm_ms(tokens, f, h, true));
    let blas = cublas_ms(tokens, f, h);
    let gemm_flops = 2.0 * (tokens * h * f) as f64;
    let tflops = |fl: f64, ms: f64| fl / (ms * 1e9);
    let ceiling = blas.map(|ms| tflops(gemm_flops, ms));

    println!("\n{label}: {} parameters, {n} sequences × {l} tokens on {device}", cfg.layout().len);
    println!("{:<30} {:>10} {:>10} {:>12}", "case", "ms", "TFLOP/s", "of cuBLAS");
    let rows = [
        ("cublas_sgemm_f32", blas, gemm_flops),
        ("cuda_gemm_f32", Some(gemm), gemm_flops),
        ("cuda_gemm_bf16", Some(gemm_bf16), gemm_flops),
        ("cuda_transformer_forward_step_f32", Some(forward), flops.forward),
        ("cuda_transformer_backward_step_f32", Some(backward), flops.backward),
        ("cuda_transformer_forward_step_bf16", Some(forward_bf16), flops.forward),
        ("cuda_transformer_backward_step_bf16", Some(backward_bf16), flops.backward),
    ];
    for (id, ms, fl) in rows {
        let Some(ms) = ms else { continue };
        let t = tflops(fl, ms);
        let share = ceiling.map_or("-".into(), |c| format!("{:.0}%", 100.0 * t / c));
        println!("{id:<30} {ms:>10.3} {t:>10.2} {share:>12}");
    }
    // Attention alone on one chunk of the engine's size (2^16 tokens), with tangents, against the
    // stored-P algorithm's FLOPs over the causal triangle: forward S, Ṡ, O, Ȯ (12 per pair and
    // head dimension), backward gP, gQ, gK, gV and their tangents (24).
    let seqs = ((1 << 16) / l).min(n);
    let d = Dims { seqs, len: l, heads: cfg.heads, hidden: cfg.hidden };
    let pairs = (seqs * cfg.heads * l * (l + 1) / 2 * (cfg.hidden / cfg.heads)) as f64;
    for (variant, stored) in [("flash", false), ("stored_p", true)] {
        let (f_ms, b_ms) = attention_ms(d, stored);
        println!("{:<30} {f_ms:>10.3} {:>10.2} {:>12}", format!("cuda_attention_{variant}_forward"), tflops(12.0 * pairs, f_ms), "-");
        println!("{:<30} {b_ms:>10.3} {:>10.2} {:>12}", format!("cuda_attention_{variant}_backward"), tflops(24.0 * pairs, b_ms), "-");
    }
    let logits = 2 * tokens * cfg.vocab_size * 4;
    println!(
        "device working set of a backward step: {:.1} MiB; the training set's logits and tangents materialised: {:.1} MiB",
        working_set as f64 / (1 << 20) as f64,
        logits as f64 / (1 << 20) as f64
    );
}

fn main() {
    let small = data(1024, 256, 33, 512);
    bench("scaled default", &TransformerConfig::small(512, 32), &small);
    let paper = data(16384, 512, 65, 5000);
    bench("paper size", &TransformerConfig::paper(), &paper);
}
