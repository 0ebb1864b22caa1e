//! CUDA engine checks beyond the shared conformance tests (tests/conformance.rs): the kernel
//! variant chosen per D, the large-problem paths at sizes where they run by default (D > 512 with
//! many blocks: rows in one register tile and rows re-read tile by tile, θ/λ staged in shared
//! memory or read through L1, X in f32 and 16 bits, several finish modes and rows per warp),
//! run-to-run reproducibility, the load path, and projection edge cases.
//! They need a GPU: without one they print SKIPPED, with `LEARNLAW_REQUIRE_CUDA=1` they fail.
use learnlaw_core::data::{PerceptronData, PerceptronRecipe};
use learnlaw_core::perceptron::reference;
use learnlaw_core::{simplex, Engine, Error, Set, Storage};
use learnlaw_cuda::{CudaPerceptron, Loading, Options};
use std::io::Write as _; // a skip is written to stderr directly: test output capture would hide it

fn data(dim: usize, n: usize, k: usize, seed: u64) -> PerceptronData {
    PerceptronData::generate(&PerceptronRecipe { dim, n_train: n, n_dev: k, n_test: k, seed, ..Default::default() }).expect("data")
}

fn engine(data: &PerceptronData, opts: &Options) -> Option<CudaPerceptron> {
    match CudaPerceptron::with_options(data, opts) {
        Ok(e) => Some(e),
        Err(Error::Unavailable { reason, .. }) => {
            if std::env::var("LEARNLAW_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                panic!("LEARNLAW_REQUIRE_CUDA=1 but no CUDA device: {reason}");
            }
            let _ = writeln!(std::io::stderr(), "SKIPPED: no CUDA driver ({reason})");
            None
        }
        Err(e) => panic!("cuda engine: {e}"),
    }
}

/// |got − want| ≤ atol + rtol·|want| everywhere (NaN fails), else a message with the worst index.
fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let excess = if err.is_nan() { f64::INFINITY } else { err - (atol + rtol * w.abs()) };
        if excess > 0.0 && worst.is_none_or(|(_, e)| excess > e) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, _)) = worst {
        panic!("{what}: index {i}: got {}, want {} (atol {atol}, rtol {rtol})", got[i], want[i]);
    }
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn theta_of(dim: usize, scale: f64) -> Vec<f64> {
    (0..dim).map(|i| scale * (((i * 7919) % 1000) as f64 / 1000.0 - 0.5)).collect()
}

#[test]
fn variant_follows_the_dimension() {
    for (dim, want) in [
        (1, "pass_r1"),
        (128, "pass_r1"),
        (129, "pass_r2"),
        (256, "pass_r2"),
        (300, "pass_r4"),
        (512, "pass_r4"),
        (513, "pass_smem"),
        (4096, "pass_smem"),
    ] {
        let d = data(dim, 20, 5, 1);
        let Some(mut e) = engine(&d, &Options::default()) else { return };
        assert_eq!(e.pass_variant().unwrap(), want, "D = {dim}");
    }
    let d = data(100, 20, 5, 1);
    let Some(mut e) = engine(&d, &Options { force_global_theta: true, ..Default::default() }) else { return };
    assert_eq!(e.pass_variant().unwrap(), "pass_smem_ldg");
}

/// On a GPU NVRTC knows (an H200 with NVRTC 13.x), kernels load as SASS for the device's own
/// architecture, not as PTX the driver would have to JIT-compile.
#[test]
fn kernels_load_as_sass_for_the_device() {
    let d = data(8, 20, 5, 1);
    let Some(mut e) = engine(&d, &Options::default()) else { return };
    e.pass_variant().unwrap(); // loads perceptron.cu
    let info = e.device_info();
    println!("{info}");
    let (major, minor) = info.compute_capability;
    if learnlaw_cuda::nvrtc_supported_archs().unwrap_or_default().contains(&(10 * major + minor)) {
        assert_eq!(info.loading, Loading::Cubin, "{info}");
        assert_eq!(e.arch(), format!("sm_{major}{minor}"));
    }
}

/// Forward and backward steps and the dev gradient at D = 1000 and 2500 in f32 (pass_smem by
/// default; a tile of 16 float4 per lane holds rows of up to 2048 values, so D = 2500 re-reads
/// them tile by tile) and at D = 2500 and 4500 with X in 16 bits (tiles of 32 vectors: one tile,
/// then two), with enough rows for many blocks, θ/λ staged or read through L1, the finish fused
/// into the pass or as its own launch, and several rows per warp.
#[test]
fn large_dimension_steps_match_the_reference() {
    let (n, k) = (3000, 700);
    let base = Options::default();
    let cases: Vec<(usize, Storage, Options)> = vec![
        (1000, Storage::F32, base.clone()),
        (1000, Storage::F32, Options { force_separate_finish: true, ..base.clone() }),
        (1000, Storage::F32, Options { force_global_theta: true, rows_per_warp: 1, ..base.clone() }),
        (2500, Storage::F32, base.clone()),
        (2500, Storage::F32, Options { rows_per_warp: 2, ..base.clone() }),
        (2500, Storage::F32, Options { force_global_theta: true, force_separate_finish: true, ..base.clone() }),
        (2500, Storage::Bf16, Options { rows_per_warp: 8, ..base.clone() }),
        (2500, Storage::F16, base.clone()),
        (4500, Storage::Bf16, base.clone()),
        (4500, Storage::F16, Options { force_global_theta: true, ..base.clone() }),
    ];
    let mut last_dim = 0;
    let mut d = data(1, 1, 1, 5);
    for (dim, storage, opts) in cases {
        if dim != last_dim {
            d = data(dim, n, k, 5);
            last_dim = dim;
        }
        // The reference on X as the engine stores it.
        let mut d = d.clone();
        for set in [&mut d.train, &mut d.dev, &mut d.test] {
            set.x.iter_mut().for_each(|v| *v = storage.round(*v));
        }
        let Some(mut e) = engine(&d, &Options { storage, ..opts.clone() }) else { return };
        let variant = e.pass_variant().unwrap();
        let theta = theta_of(dim, 0.05);
        let lambda_next = theta_of(dim, 1.0).iter().rev().copied().collect::<Vec<_>>();
        let gamma: Vec<f64> = (0..2 * n).map(|i| if i % 5 == 0 { 0.0 } else { 1.25 / n as f64 }).collect();
        let theta_d = e.upload(&f32s(&theta)).unwrap();
        let gamma_d = e.upload(&f32s(&gamma)).unwrap();
        let lambda_next_d = e.upload(&f32s(&lambda_next)).unwrap();
        let (eta, w) = (0.3, 0.01);
        let what = |s: &str| format!("{s} (D = {dim}, N = {n}, X in {}, {variant}, {opts:?})", storage.name());
        let (atol, rtol) = (2e-5, 2e-4); // f32 sums over rows of thousands of values and 3000 rows

        let mut next = e.upload(&vec![f32::NAN; dim]).unwrap();
        let mut curve = e.upload(&[7.0; 3]).unwrap();
        e.forward_step(&theta_d, &gamma_d, 1, eta, &mut next, Some((&mut curve, 2))).unwrap();
        let g = reference::weighted_grad(&d.train, &gamma[n..], &theta);
        let want: Vec<f64> = theta.iter().zip(&g).map(|(t, g)| t - eta * g).collect();
        assert_close(&what("θ_next"), &e.download(&next).unwrap(), &want, atol, rtol);
        assert_close(&what("dev loss"), &e.download(&curve).unwrap(), &[7.0, 7.0, reference::mean_loss(&d.dev, &theta)], atol, rtol);

        let mut grad = e.upload(&vec![f32::NAN; 2 * n]).unwrap();
        let mut lambda = e.upload(&vec![f32::NAN; dim]).unwrap();
        e.backward_step(&theta_d, &gamma_d, 0, &lambda_next_d, eta, w, &mut grad, &mut lambda).unwrap();
        let grad_h = e.download(&grad).unwrap();
        let want_row: Vec<f64> = reference::example_dots(&d.train, &theta, &lambda_next).iter().map(|v| -eta * v).collect();
        assert_close(&what("∂J/∂γ row 0"), &grad_h[..n], &want_row, atol, rtol);
        assert!(grad_h[n..].iter().all(|v| v.is_nan()), "{}", what("row 1 must be left alone"));
        let hvp = reference::weighted_hvp(&d.train, &gamma[..n], &theta, &lambda_next);
        let g_dev = reference::mean_grad(&d.dev, &theta);
        let want: Vec<f64> = (0..dim).map(|i| w * g_dev[i] + lambda_next[i] - eta * hvp[i]).collect();
        assert_close(&what("λ"), &e.download(&lambda).unwrap(), &want, atol, rtol);

        let mut gd = e.upload(&vec![f32::NAN; dim]).unwrap();
        let l = e.loss_grad(Set::Test, &theta_d, &mut gd).unwrap();
        assert_close(&what("test loss"), &[l as f32], &[reference::mean_loss(&d.test, &theta)], atol, rtol);
        assert_close(&what("test gradient"), &e.download(&gd).unwrap(), &reference::mean_grad(&d.test, &theta), atol, rtol);
    }
}

/// A forward row with γ = 0 adds nothing even where its coefficient would be NaN (the register
/// variants read such rows and force c = 0; pass_smem skips them): θ = 3e38 everywhere and X rows
/// [1, 1, 1, 1, −1, −1, −1, −1] give lane sums +∞ and −∞, so x·θ = NaN, for every γ = 0 row; the
/// step must equal the same step with those rows zeroed, bit for bit.
#[test]
fn zero_weight_rows_add_nothing_even_when_their_logit_is_nan() {
    let (dim, n) = (8, 500);
    let zero_weight = |i: usize| i.is_multiple_of(3);
    let set = |rows: usize, nan_rows: bool| {
        let mut x = vec![0f32; rows * dim];
        for i in 0..rows {
            if zero_weight(i) && nan_rows {
                x[i * dim..(i + 1) * dim].copy_from_slice(&[1., 1., 1., 1., -1., -1., -1., -1.]);
            } else {
                x[i * dim + i % dim] = 1e-30 * (1 + i % 7) as f32;
            }
        }
        learnlaw_core::data::Examples { x, y: (0..rows).map(|i| (i % 2) as f32).collect() }
    };
    let make = |nan_rows: bool| PerceptronData { dim, train: set(n, nan_rows), dev: set(40, false), test: set(40, false), theta0: None };
    let gamma: Vec<f32> = (0..n).map(|i| if zero_weight(i) { 0.0 } else { 1.0 / n as f32 }).collect();
    for opts in [
        Options::default(),
        Options { force_smem_variant: true, ..Default::default() },
        Options { force_global_theta: true, ..Default::default() },
    ] {
        let mut out = Vec::new();
        for nan_rows in [false, true] {
            let Some(mut e) = engine(&make(nan_rows), &opts) else { return };
            let theta = e.upload(&vec![3e38; dim]).unwrap();
            let gamma_d = e.upload(&gamma).unwrap();
            let mut next = e.zeros(dim).unwrap();
            e.forward_step(&theta, &gamma_d, 0, 1e-3, &mut next, None).unwrap();
            out.push(e.download(&next).unwrap());
        }
        assert!(out[1].iter().all(|v| v.is_finite()), "{opts:?}: a γ = 0 row leaked NaN into θ_next: {:?}", out[1]);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(&out[0]), bits(&out[1]), "{opts:?}: γ = 0 rows changed θ_next");
    }
}

/// The same step twice gives the same bits (fixed reduction order).
#[test]
fn steps_are_reproducible() {
    for dim in [128, 700, 2500] {
        let d = data(dim, 5000, 600, 9);
        let Some(mut e) = engine(&d, &Options::default()) else { return };
        let n = d.train.len();
        let theta = e.upload(&f32s(&theta_of(dim, 0.1))).unwrap();
        let gamma = e.upload(&vec![1.0 / n as f32; n]).unwrap();
        let lambda_next = e.upload(&f32s(&theta_of(dim, 0.5))).unwrap();
        let run = |e: &mut CudaPerceptron| {
            let (mut next, mut lambda, mut grad) = (e.zeros(dim).unwrap(), e.zeros(dim).unwrap(), e.zeros(n).unwrap());
            let mut curve = e.zeros(1).unwrap();
            e.forward_step(&theta, &gamma, 0, 0.1, &mut next, Some((&mut curve, 0))).unwrap();
            e.backward_step(&theta, &gamma, 0, &lambda_next, 0.1, 0.5, &mut grad, &mut lambda).unwrap();
            [next, lambda, grad, curve].map(|v| e.download(&v).unwrap().iter().map(|x| x.to_bits()).collect::<Vec<u32>>())
        };
        let (a, b) = (run(&mut e), run(&mut e));
        assert!(a == b, "D = {dim}: two identical steps differ");
    }
}

#[test]
fn projection_edge_cases_match_the_sorted_reference() {
    let d = data(4, 10, 3, 2);
    let Some(mut e) = engine(&d, &Options::default()) else { return };
    let noisy = |n: usize, off: f64| -> Vec<f64> { (0..n).map(|i| off + ((i * 2654435761) % 1000) as f64 * 1e-6).collect() };
    let cases: Vec<(&str, Vec<f64>, usize)> = vec![
        ("one element", vec![3.5], 1),
        ("all equal", vec![0.25; 8], 8),
        ("one dominant", [vec![10.0], vec![0.0; 99]].concat(), 100),
        ("offset 1000", noisy(500, 1000.0), 500),
        ("negative", noisy(64, -3.0), 64),
        ("wide row, 200k", noisy(200_000, 1.0 / 200_000.0), 200_000),
        ("many rows", noisy(300 * 37, 0.02), 37),
    ];
    for (what, v, row_len) in cases {
        let mut got = e.upload(&f32s(&v)).unwrap();
        e.project_simplex_rows(&mut got, row_len).unwrap();
        let mut want: Vec<f64> = f32s(&v).iter().map(|&x| x as f64).collect();
        want.chunks_mut(row_len).for_each(simplex::project_sorted);
        assert_close(&format!("projection: {what}"), &e.download(&got).unwrap(), &want, 1e-6, 1e-5);
    }
}

#[test]
fn non_finite_policy_is_an_error_and_left_untouched() {
    let d = data(4, 10, 3, 2);
    let Some(mut e) = engine(&d, &Options::default()) else { return };
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut v: Vec<f32> = (0..5 * 16).map(|i| i as f32 * 0.01).collect();
        v[2 * 16 + 3] = bad;
        v[4 * 16 + 1] = bad;
        let mut d_v = e.upload(&v).unwrap();
        match e.project_simplex_rows(&mut d_v, 16) {
            Err(Error::Numerical(msg)) => assert!(msg.contains("row 2, example 3"), "{msg}"),
            other => panic!("{bad}: expected a numerical error, got {other:?}"),
        }
        let after = e.download(&d_v).unwrap();
        assert!(after.iter().zip(&v).all(|(a, b)| a.to_bits() == b.to_bits()), "{bad}: the policy was modified");
    }
}

/// Unrolls through `run_steps` (recorded, then replayed as CUDA graphs from the second sighting
/// of a step sequence) give the same bits as the same unrolls launched step by step, while the
/// policy changes between them in place (a graph keeps pointers, not values). With checkpoints
/// every 5 steps the adjoint pass also recomputes segments and the forward buffers alternate.
#[test]
fn graph_replays_are_bit_identical_to_direct_launches() {
    use learnlaw_core::unroll::{Unroll, Workspace};
    let (dim, n, steps) = (128, 4096, 24);
    let d = data(dim, n, 512, 11);
    for every in [1, 5] {
        let mut runs = Vec::new();
        for direct_launches in [true, false] {
            let Some(mut e) = engine(&d, &Options { direct_launches, ..Default::default() }) else { return };
            let unroll = Unroll { steps, eta: 0.1 };
            let mut ws = Workspace::new(&mut e, unroll, every).unwrap();
            let theta0 = e.upload(&f32s(&theta_of(dim, 0.1))).unwrap();
            let mut gamma = e.upload(&vec![1.0 / n as f32; steps * n]).unwrap();
            let mut grad = e.zeros(steps * n).unwrap();
            let mut out = Vec::new();
            for call in 0..4 {
                let fwd = ws.gradient(&mut e, &theta0, &gamma, &mut grad).unwrap();
                let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
                out.push((fwd.j.to_bits(), bits(e.download(&grad).unwrap()), bits(e.download(ws.lambda0()).unwrap())));
                e.axpy(-0.5 / (call + 1) as f64, &grad, &mut gamma).unwrap();
                e.project_simplex_rows(&mut gamma, n).unwrap();
            }
            let stats = e.graph_stats();
            assert_eq!(stats.capture_failures, 0, "every = {every}: {stats:?}");
            if direct_launches {
                assert_eq!((stats.replays, stats.captures), (0, 0), "{stats:?}");
            } else {
                assert!(stats.captures >= 2 && stats.replays >= 4, "every = {every}: graphs were not used: {stats:?}");
            }
            if every == 1 && !direct_launches {
                // Forward and adjoint sequences: direct on the first call, captured on the second.
                assert_eq!(stats, learnlaw_cuda::GraphStats { replays: 6, captures: 2, direct: 2, capture_failures: 0 });
            }
            runs.push(out);
        }
        for (call, (a, b)) in runs[0].iter().zip(&runs[1]).enumerate() {
            assert!(a == b, "every = {every}, call {call}: graph replay differs from direct launches");
        }
    }
}
