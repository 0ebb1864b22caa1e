//! The derivatives the search rests on, against central finite differences in f64:
//! ∂J/∂γ from the adjoint pass (with and without checkpointing), ∂J/∂θ_0, and the HVP.
mod common;

use common::{problem, random_policy, rng, uniform};
use learnlaw::perceptron::{reference, CpuPerceptron};
use learnlaw::unroll::{Unroll, Workspace};
use learnlaw::Engine;

const UNROLL: Unroll = Unroll { steps: 7, eta: 0.5 };

/// J(γ) through the engine's forward pass.
fn j_of(e: &mut CpuPerceptron<f64>, ws: &mut Workspace<CpuPerceptron<f64>>, theta0: &[f64], gamma: &[f64]) -> f64 {
    let (t, g) = (e.upload(theta0).unwrap(), e.upload(gamma).unwrap());
    ws.forward(e, &t, &g).unwrap().j
}

/// max_i |a_i − b_i| / max_i |b_i|.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn setup(seed: u64) -> (CpuPerceptron<f64>, Vec<f64>, Vec<f64>) {
    let data = problem(4, 6, 5, seed);
    let mut r = rng(seed);
    let theta0 = uniform(&mut r, 4, -1.0, 1.0);
    let gamma = random_policy(&mut r, UNROLL.steps, 6);
    (CpuPerceptron::new(&data).unwrap(), theta0, gamma)
}

#[test]
fn policy_gradient_matches_finite_differences() {
    for seed in [1, 2, 3] {
        let (mut e, theta0, gamma) = setup(seed);
        let mut ws = Workspace::new(&mut e, UNROLL, 1).unwrap();
        let (t0, g) = (e.upload(&theta0).unwrap(), e.upload(&gamma).unwrap());
        let mut grad = e.zeros(gamma.len()).unwrap();
        ws.gradient(&mut e, &t0, &g, &mut grad).unwrap();
        let h = 1e-5;
        let fd: Vec<f64> = (0..gamma.len())
            .map(|i| {
                let (mut p, mut m) = (gamma.clone(), gamma.clone());
                p[i] += h;
                m[i] -= h;
                (j_of(&mut e, &mut ws, &theta0, &p) - j_of(&mut e, &mut ws, &theta0, &m)) / (2.0 * h)
            })
            .collect();
        let err = rel_err(&grad, &fd);
        assert!(err < 1e-5, "seed {seed}: ∂J/∂γ relative error {err:.2e}\nadjoint {grad:?}\nfinite differences {fd:?}");
    }
}

#[test]
fn theta0_gradient_matches_finite_differences() {
    let (mut e, theta0, gamma) = setup(4);
    let mut ws = Workspace::new(&mut e, UNROLL, 1).unwrap();
    let (t0, g) = (e.upload(&theta0).unwrap(), e.upload(&gamma).unwrap());
    let mut grad = e.zeros(gamma.len()).unwrap();
    ws.gradient(&mut e, &t0, &g, &mut grad).unwrap();
    let lambda0 = ws.lambda0().clone();
    let h = 1e-5;
    let fd: Vec<f64> = (0..theta0.len())
        .map(|i| {
            let (mut p, mut m) = (theta0.clone(), theta0.clone());
            p[i] += h;
            m[i] -= h;
            (j_of(&mut e, &mut ws, &p, &gamma) - j_of(&mut e, &mut ws, &m, &gamma)) / (2.0 * h)
        })
        .collect();
    let err = rel_err(&lambda0, &fd);
    assert!(err < 1e-5, "∂J/∂θ_0 relative error {err:.2e}: {lambda0:?} vs {fd:?}");
}

/// Recomputing segments from checkpoints must give exactly the keep-everything gradient,
/// for intervals that divide T and ones that do not.
#[test]
fn checkpointed_gradient_equals_full_history() {
    let (mut e, theta0, gamma) = setup(5);
    let (t0, g) = (e.upload(&theta0).unwrap(), e.upload(&gamma).unwrap());
    let mut full = e.zeros(gamma.len()).unwrap();
    let j_full = Workspace::new(&mut e, UNROLL, 1).unwrap().gradient(&mut e, &t0, &g, &mut full).unwrap();
    for every in [2, 3, 7, 100] {
        let mut grad = e.zeros(gamma.len()).unwrap();
        let j = Workspace::new(&mut e, UNROLL, every).unwrap().gradient(&mut e, &t0, &g, &mut grad).unwrap();
        assert_eq!(j, j_full, "every {every}: forward differs");
        assert_eq!(grad, full, "every {every}: gradient differs");
    }
}

/// The reference HVP against finite differences of the reference gradient, and the engine's HVP
/// (read out of the backward step with η = 1 and no dev term: λ = v − H v) against the reference.
#[test]
fn hvp_matches_finite_differences_of_the_gradient() {
    let data = problem(5, 9, 4, 6);
    let mut r = rng(6);
    let theta = uniform(&mut r, 5, -1.0, 1.0);
    let v = uniform(&mut r, 5, -1.0, 1.0);
    let gamma = random_policy(&mut r, 1, 9);
    let h = 1e-5;
    let shifted = |s: f64| -> Vec<f64> {
        let th: Vec<f64> = theta.iter().zip(&v).map(|(t, v)| t + s * h * v).collect();
        reference::weighted_grad(&data.train, &gamma, &th)
    };
    let fd: Vec<f64> = shifted(1.0).iter().zip(shifted(-1.0)).map(|(p, m)| (p - m) / (2.0 * h)).collect();
    let hvp = reference::weighted_hvp(&data.train, &gamma, &theta, &v);
    assert!(rel_err(&hvp, &fd) < 1e-7, "reference HVP {hvp:?} vs finite differences {fd:?}");

    let mut e = CpuPerceptron::<f64>::new(&data).unwrap();
    let (th, g, vd) = (e.upload(&theta).unwrap(), e.upload(&gamma).unwrap(), e.upload(&v).unwrap());
    let (mut grad, mut lambda) = (e.zeros(9).unwrap(), e.zeros(5).unwrap());
    e.backward_step(&th, &g, 0, &vd, 1.0, 0.0, &mut grad, &mut lambda).unwrap();
    let engine_hvp: Vec<f64> = v.iter().zip(&lambda).map(|(v, l)| v - l).collect();
    assert!(rel_err(&engine_hvp, &fd) < 1e-7, "engine HVP {engine_hvp:?} vs finite differences {fd:?}");
}
