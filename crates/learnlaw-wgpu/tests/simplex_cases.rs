//! The device projection on the awkward inputs the CPU projection is tested on (ties, all equal,
//! one dominant entry, all negative, large magnitudes, tiny and non-multiple-of-256 rows), against
//! the sorting reference `learnlaw_core::simplex::project_sorted` in f64; the failure paths of the
//! projection and of the exp-grad step. Skips without an adapter.
use learnlaw_core::data::{PerceptronData, PerceptronRecipe};
use learnlaw_core::{simplex, Engine, Error};
use learnlaw_wgpu::{Options, WgpuPerceptron};

mod common;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unif(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unif();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.unif()).cos()
    }
}

/// The engine on a problem with `n` training examples, or None after a visible skip.
fn engine(n: usize) -> Option<WgpuPerceptron> {
    let data = PerceptronData::generate(&PerceptronRecipe { dim: 2, n_train: n, n_dev: 1, n_test: 1, ..Default::default() }).unwrap();
    common::engine(&data, &Options::default())
}

fn cases(n: usize, rng: &mut Rng) -> Vec<(&'static str, Vec<f64>)> {
    let m = 1.0 / n as f64;
    let mut g = |f: &mut dyn FnMut(&mut Rng, usize) -> f64| (0..n).map(|i| f(rng, i)).collect();
    vec![
        ("policy+small step", g(&mut |r, _| m + 0.1 * m * r.normal())),
        ("policy+big step", g(&mut |r, _| m + 2.0 * m * r.normal())),
        ("uniform[-1,1]", g(&mut |r, _| 2.0 * r.unif() - 1.0)),
        ("large", g(&mut |r, _| 1e4 * r.normal())),
        ("all negative", g(&mut |r, _| -1.0 - 10.0 * r.unif())),
        ("all equal", g(&mut |_, _| 3.7)),
        ("one dominant", g(&mut |r, i| if i == n / 2 { 100.0 } else { 0.01 * r.normal() })),
        ("ties on a grid", g(&mut |r, _| (r.next() % 5) as f64 * 0.25)),
        ("geometric", g(&mut |_, i| 0.5f64.powi((i % 60) as i32))),
        ("feasible", g(&mut |_, _| m)),
    ]
}

#[test]
fn projection_matches_sorting_reference() {
    for n in [1, 2, 3, 7, 255, 256, 257, 1000, 4096] {
        let Some(mut e) = engine(n) else { return };
        let mut rng = Rng(n as u64);
        let all = cases(n, &mut rng);
        // All cases as rows of one [cases, n] buffer: one dispatch, one workgroup per row.
        let flat: Vec<f32> = all.iter().flat_map(|(_, v)| v.iter().map(|&x| x as f32)).collect();
        let mut d = e.upload(&flat).unwrap();
        e.project_simplex_rows(&mut d, n).unwrap();
        let got = e.download(&d).unwrap();
        for (k, (name, v)) in all.iter().enumerate() {
            let mut want: Vec<f64> = v.iter().map(|&x| x as f32 as f64).collect();
            simplex::project_sorted(&mut want);
            let row = &got[k * n..(k + 1) * n];
            // τ is only known to ~ε·max|v|, so the tolerance scales with the input magnitude.
            let scale = v.iter().fold(1.0f64, |m, x| m.max(x.abs()));
            let tol = 1e-6 + 4.0 * f32::EPSILON as f64 * scale;
            let worst = row.iter().zip(&want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
            assert!(worst <= tol, "{name}, n={n}: max deviation {worst:.3e} > {tol:.1e}");
            assert!(row.iter().all(|&x| x >= 0.0), "{name}, n={n}: negative entry");
            let sum: f64 = row.iter().map(|&x| x as f64).sum();
            assert!((sum - 1.0).abs() <= 1e-5 + n as f64 * f32::EPSILON as f64 * scale, "{name}, n={n}: sum {sum}");
        }
    }
}

#[test]
fn non_finite_policy_is_an_error_and_left_untouched() {
    let Some(mut e) = engine(300) else { return };
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut v = vec![0.5f32; 3 * 300];
        v[2 * 300 + 17] = bad;
        let mut d = e.upload(&v).unwrap();
        match e.project_simplex_rows(&mut d, 300) {
            Err(Error::Numerical(msg)) => assert!(msg.contains("row 2, example 17"), "{msg}"),
            other => panic!("{bad}: expected a numerical error, got {other:?}"),
        }
        let after = e.download(&d).unwrap();
        assert!(after.iter().zip(&v).all(|(a, b)| a.to_bits() == b.to_bits()), "{bad}: the policy was modified");
    }
}

/// exp_grad_sums flags rows whose Σ γ·exp(−step·g) is not a positive finite number (an all-zero
/// row, an infinite entry) while the other workgroups of its dispatch run on: the error names the
/// first such row, no row of γ is updated, and the next call starts from a clear flag.
#[test]
fn exp_grad_bad_row_sum_is_an_error_and_left_untouched() {
    let (n, rows) = (300, 500);
    let Some(mut e) = engine(n) else { return };
    let mut rng = Rng(11);
    let grad: Vec<f32> = (0..rows * n).map(|_| (2.0 * rng.unif() - 1.0) as f32).collect();
    let grad_d = e.upload(&grad).unwrap();
    let mut gamma = vec![1.0 / n as f32; rows * n];
    gamma[401 * n..402 * n].fill(0.0);
    gamma[250 * n + 7] = f32::INFINITY;
    gamma[97 * n..98 * n].fill(0.0);
    let mut d = e.upload(&gamma).unwrap();
    match e.exp_grad_rows(&mut d, &grad_d, 0.5, n) {
        Err(Error::Numerical(msg)) => assert!(msg.contains("row 97:"), "{msg}"),
        other => panic!("expected a numerical error, got {other:?}"),
    }
    let after = e.download(&d).unwrap();
    assert!(after.iter().zip(&gamma).all(|(a, b)| a.to_bits() == b.to_bits()), "the policy was modified");

    // Only row 250 left bad: it is the one named now.
    gamma[97 * n..98 * n].fill(1.0 / n as f32);
    gamma[401 * n..402 * n].fill(1.0 / n as f32);
    let mut d = e.upload(&gamma).unwrap();
    match e.exp_grad_rows(&mut d, &grad_d, 0.5, n) {
        Err(Error::Numerical(msg)) => assert!(msg.contains("row 250:"), "{msg}"),
        other => panic!("expected a numerical error, got {other:?}"),
    }
    // All rows good: the step runs and keeps every row on the simplex.
    gamma[250 * n + 7] = 1.0 / n as f32;
    let mut d = e.upload(&gamma).unwrap();
    e.exp_grad_rows(&mut d, &grad_d, 0.5, n).unwrap();
    let after = e.download(&d).unwrap();
    for (r, row) in after.chunks(n).enumerate() {
        let sum: f64 = row.iter().map(|&x| x as f64).sum();
        assert!((sum - 1.0).abs() < 1e-4 && row.iter().all(|&x| x > 0.0), "row {r}: sum {sum}");
    }
}
