//! The large-input path: with a storage binding capped at 64 KiB (the device is created with that
//! limit, so wgpu validates every binding against it) the training matrix is split into many
//! shards and the policy, ∂J/∂γ and long vectors are bound through aligned windows (the exp-grad
//! step, max |g| and block sums of rows included). Every operation must give bit-for-bit the
//! unsplit engine's results (the chunking of the sums is the same), and match the CPU f32 engine. This is how a multi-GiB
//! X runs on lavapipe's 128 MiB limit. The kernels' variant without subgroup operations gives the
//! same bits as the one with them (where the adapter has them: lavapipe does).
//! Skips visibly without an adapter (fails with LEARNLAW_REQUIRE_WGPU=1).
use learnlaw_core::data::{PerceptronData, PerceptronRecipe};
use learnlaw_core::perceptron::CpuPerceptron;
use learnlaw_core::{Engine, Error, Set};
use learnlaw_wgpu::{Options, WgpuPerceptron};

mod common;
use common::engine;

const CAP: u64 = 64 << 10;

/// splitmix64 → uniform [0, 1).
fn uniform(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// Every result of the engine on one fixed sequence of operations.
fn outputs<E: Engine<Real = f32>>(e: &mut E, steps: usize) -> Vec<(String, Vec<f32>)> {
    let (d, n) = (e.num_params(), e.num_train());
    let mut out = Vec::new();
    let theta = e.upload(&uniform(1, d).iter().map(|v| v - 0.5).collect::<Vec<_>>()).unwrap();
    let lambda_next = e.upload(&uniform(2, d).iter().map(|v| 2.0 * v - 1.0).collect::<Vec<_>>()).unwrap();
    // A policy after an outer step: 1/N plus noise, some entries negative; projected below.
    let raw: Vec<f32> = uniform(3, steps * n).iter().map(|v| (1.0 + 3.0 * (v - 0.5)) / n as f32).collect();
    let mut gamma = e.upload(&raw).unwrap();
    e.project_simplex_rows(&mut gamma, n).unwrap();
    out.push(("projected policy".into(), e.download(&gamma).unwrap()));
    let mut grad = e.upload(&vec![7.0; steps * n]).unwrap();
    let (mut next, mut lambda) = (e.zeros(d).unwrap(), e.zeros(d).unwrap());
    // The dev losses go to slots of a curve longer than one 64 KiB binding (so the slot is bound
    // through a window), read back once at the end like an unroll does.
    let mut curve = e.upload(&vec![7.0; 3 * steps * n]).unwrap();
    let slot = |t: usize| (2 * t + 1) * n + 3;
    let ts = [0, steps / 2, steps - 1];
    for t in ts {
        e.forward_step(&theta, &gamma, t, 0.3, &mut next, Some((&mut curve, slot(t)))).unwrap();
        out.push((format!("forward θ_next t={t}"), e.download(&next).unwrap()));
        e.backward_step(&theta, &gamma, t, &lambda_next, 0.3, 0.01, &mut grad, &mut lambda).unwrap();
        out.push((format!("backward λ t={t}"), e.download(&lambda).unwrap()));
    }
    let curve_host = e.download(&curve).unwrap();
    out.push(("forward dev losses".into(), ts.iter().map(|&t| curve_host[slot(t)]).collect()));
    out.push(("forward dev-loss curve (other slots untouched)".into(), curve_host));
    assert!(
        matches!(e.forward_step(&theta, &gamma, 0, 0.3, &mut next, Some((&mut curve, 3 * steps * n))), Err(Error::Shape { .. })),
        "a dev-loss slot past the curve must be a shape error"
    );
    out.push(("∂J/∂γ".into(), e.download(&grad).unwrap()));
    e.axpy(-0.5, &grad, &mut gamma).unwrap();
    e.scale(1.5, &mut gamma).unwrap();
    out.push(("axpy + scale".into(), e.download(&gamma).unwrap()));
    let mut copy = e.zeros(steps * n).unwrap();
    e.copy(&gamma, &mut copy).unwrap();
    out.push(("copy".into(), e.download(&copy).unwrap()));
    // The exp-grad step on the (projected) policy, with the policy gradient as its direction.
    let mut policy = e.upload(&out[0].1.clone()).unwrap();
    let scale = e.max_abs(&grad).unwrap();
    out.push(("max |∂J/∂γ|".into(), vec![scale as f32]));
    e.exp_grad_rows(&mut policy, &grad, 2.0 / scale, n).unwrap();
    out.push(("exp-grad step".into(), e.download(&policy).unwrap()));
    // Block sums of ∂J/∂γ's rows (block policies), blocks of 3 steps (the last one shorter).
    e.tie_rows(&mut grad, 3, n).unwrap();
    out.push(("tie_rows".into(), e.download(&grad).unwrap()));
    let mut g = e.zeros(d).unwrap();
    for set in [Set::Dev, Set::Test] {
        let l = e.loss_grad(set, &theta, &mut g).unwrap();
        out.push((format!("{set:?} loss"), vec![l as f32, e.loss(set, &theta).unwrap() as f32]));
        out.push((format!("{set:?} grad"), e.download(&g).unwrap()));
    }
    let mut per = e.zeros(n).unwrap();
    e.train_losses(&theta, &mut per).unwrap();
    out.push(("train losses".into(), e.download(&per).unwrap()));
    e.train_dots(&theta, &lambda_next, &mut per).unwrap();
    out.push(("train dots".into(), e.download(&per).unwrap()));
    out
}

#[test]
fn split_bindings_match_unsplit_and_cpu() {
    // X_train: 3000 × 40 f32 = 480 KB ≈ 7.3 bindings of 64 KiB; γ [20, 3000] = 240 KB; dev 700 rows.
    let recipe =
        PerceptronRecipe { dim: 40, n_train: 3000, n_dev: 700, n_test: 300, train_label_noise: 0.1, seed: 5, ..Default::default() };
    let data = PerceptronData::generate(&recipe).unwrap();
    let Some(mut small) = engine(&data, &Options { max_binding_bytes: Some(CAP), ..Options::default() }) else { return };
    assert!(small.max_binding_bytes() <= CAP);
    assert!(small.train_shards() > 1, "X must be split into shards");
    let Some(mut full) = engine(&data, &Options::default()) else { return };
    assert_eq!(full.train_shards(), 1);
    let Some(mut no_subgroups) = engine(&data, &Options { no_subgroups: true, ..Options::default() }) else { return };
    assert!(!no_subgroups.uses_subgroups());
    println!("subgroup variant on this adapter: {}", full.uses_subgroups());
    let steps = 20;
    let split = outputs(&mut small, steps);
    let unsplit = outputs(&mut full, steps);
    let workgroup = outputs(&mut no_subgroups, steps);
    let cpu = outputs(&mut CpuPerceptron::<f32>::new(&data).unwrap(), steps);
    for ((what, a), (((_, b), (_, w)), (_, c))) in split.iter().zip(unsplit.iter().zip(&workgroup).zip(&cpu)) {
        assert_eq!(a.len(), b.len(), "{what}: length");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(a) == bits(b), "{what}: split and unsplit engines differ");
        // Both team-sum variants add in the same order.
        assert!(bits(w) == bits(b), "{what}: the workgroup-memory and subgroup variants differ");
        let scale = c.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
        for (i, (&x, &y)) in a.iter().zip(c).enumerate() {
            assert!((x - y).abs() <= 1e-5 + 1e-4 * y.abs() + 1e-5 * scale, "{what}[{i}]: wgpu {x} vs cpu {y}");
        }
    }
}

#[test]
fn too_long_rows_are_an_error_not_a_panic() {
    // One row of 20000 f32 (80 KB) cannot fit a 64 KiB binding.
    let recipe = PerceptronRecipe { dim: 20000, n_train: 3, n_dev: 2, n_test: 2, ..Default::default() };
    let data = PerceptronData::generate(&recipe).unwrap();
    match WgpuPerceptron::with_options(&data, &Options { max_binding_bytes: Some(CAP), ..Options::default() }) {
        Err(Error::BadInput { .. }) => {}
        Err(Error::Unavailable { reason, .. }) => println!("SKIPPED: no wgpu adapter ({reason})"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a row larger than a binding must be refused"),
    }
}

#[test]
fn bf16_storage_is_a_config_error() {
    let recipe = PerceptronRecipe { dim: 4, n_train: 3, n_dev: 2, n_test: 2, ..Default::default() };
    let data = PerceptronData::generate(&recipe).unwrap();
    match WgpuPerceptron::with_options(&data, &Options { storage: learnlaw_wgpu::Storage::Bf16, ..Options::default() }) {
        Err(Error::Config { name, problem, .. }) => assert!(name == "storage" && problem.contains("bf16"), "{problem}"),
        Err(Error::Unavailable { reason, .. }) => println!("SKIPPED: no wgpu adapter ({reason})"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("WGSL has no bf16: the engine must refuse it"),
    }
}
