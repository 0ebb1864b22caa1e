//! Any engine behind one object-safe interface over host arrays in f64, for a program that picks
//! the backend at run time and brings its own arrays (the Python package's engine operations).
//! Every call checks its inputs' lengths and finiteness, uploads them and downloads its results:
//! meant for experiments and checks; a trainer's inner loop keeps its vectors on the device with
//! [`Engine`] itself.
use crate::engine::{Engine, Set};
use crate::search::THETA_HISTORY_BUDGET;
use crate::unroll::{Forward, Unroll, Workspace};
use crate::{Error, Real, Result};

/// The engine operations of a task, on host f64 arrays. Implemented by [`OnHost`] for every
/// [`Engine`]. γ-weighted quantities take one policy row `gamma` (length N) unless said otherwise.
pub trait HostEngine {
    /// The engine's name, e.g. `cpu-f32`.
    fn engine_name(&self) -> String;
    /// P, the length of θ.
    fn params(&self) -> usize;
    /// N, the number of training examples.
    fn examples(&self) -> usize;
    /// Per-example training losses l_n(θ).
    fn losses(&mut self, theta: &[f64]) -> Result<Vec<f64>>;
    /// Per-example gradient dots ∇l_n(θ)·v (with v = ∇L_dev(θ): the contributions CT_n).
    fn dots(&mut self, theta: &[f64], v: &[f64]) -> Result<Vec<f64>>;
    /// Mean loss on an evaluation set and its gradient.
    fn set_loss_grad(&mut self, set: Set, theta: &[f64]) -> Result<(f64, Vec<f64>)>;
    /// H·v with H the Hessian of Σ_n γ_n l_n at θ.
    fn hvp(&mut self, theta: &[f64], gamma: &[f64], v: &[f64]) -> Result<Vec<f64>>;
    /// One γ-weighted gradient step: θ − η ∇_θ Σ_n γ_n l_n(θ).
    fn step(&mut self, theta: &[f64], gamma: &[f64], eta: f64) -> Result<Vec<f64>>;
    /// The unrolled run of T = `gamma.len()` / N steps from θ_0 under the policy `gamma` \[T, N\]
    /// (row-major): J, the desired-loss curve L_dev(θ_0..θ_T), and ∂J/∂γ \[T, N\] by the adjoint.
    fn unroll_gradient(&mut self, theta0: &[f64], gamma: &[f64], eta: f64) -> Result<(Forward, Vec<f64>)>;
}

/// An [`Engine`] seen through [`HostEngine`].
pub struct OnHost<E>(pub E);

/// η of the adjoint step that `hvp` reads H·v from: λ = v − ηHv, so Hv = (v − λ)/η. A large power
/// of two makes ηHv dominate λ, so the difference keeps the engine's relative precision, and
/// dividing by it is exact.
const HVP_ETA: f64 = (1u64 << 20) as f64;

impl<E: Engine> OnHost<E> {
    fn vector(&mut self, what: &str, host: &[f64], len: usize) -> Result<E::Vec> {
        if host.len() != len {
            return Err(Error::shape(what, len, host.len()));
        }
        if let Some(i) = host.iter().position(|x| !x.is_finite()) {
            return Err(Error::BadInput { what: what.into(), problem: format!("entry {i} is {}", host[i]) });
        }
        self.0.upload(&host.iter().map(|&x| E::Real::of(x)).collect::<Vec<_>>())
    }

    fn theta(&mut self, theta: &[f64]) -> Result<E::Vec> {
        let p = self.0.num_params();
        self.vector("theta", theta, p)
    }

    fn gamma_row(&mut self, gamma: &[f64]) -> Result<E::Vec> {
        let n = self.0.num_train();
        self.vector("gamma", gamma, n)
    }

    fn host(&mut self, v: &E::Vec) -> Result<Vec<f64>> {
        Ok(self.0.download(v)?.iter().map(|x| x.f64()).collect())
    }
}

fn positive_eta(eta: f64) -> Result<()> {
    if eta.is_finite() && eta > 0.0 {
        Ok(())
    } else {
        Err(Error::config("eta", eta, "must be a positive finite number"))
    }
}

impl<E: Engine> HostEngine for OnHost<E> {
    fn engine_name(&self) -> String {
        self.0.name()
    }
    fn params(&self) -> usize {
        self.0.num_params()
    }
    fn examples(&self) -> usize {
        self.0.num_train()
    }

    fn losses(&mut self, theta: &[f64]) -> Result<Vec<f64>> {
        let theta = self.theta(theta)?;
        let mut out = self.0.zeros(self.0.num_train())?;
        self.0.train_losses(&theta, &mut out)?;
        self.host(&out)
    }

    fn dots(&mut self, theta: &[f64], v: &[f64]) -> Result<Vec<f64>> {
        let theta = self.theta(theta)?;
        let p = self.0.num_params();
        let v = self.vector("v", v, p)?;
        let mut out = self.0.zeros(self.0.num_train())?;
        self.0.train_dots(&theta, &v, &mut out)?;
        self.host(&out)
    }

    fn set_loss_grad(&mut self, set: Set, theta: &[f64]) -> Result<(f64, Vec<f64>)> {
        let theta = self.theta(theta)?;
        let mut grad = self.0.zeros(self.0.num_params())?;
        let loss = self.0.loss_grad(set, &theta, &mut grad)?;
        Ok((loss, self.host(&grad)?))
    }

    fn hvp(&mut self, theta: &[f64], gamma: &[f64], v: &[f64]) -> Result<Vec<f64>> {
        let theta = self.theta(theta)?;
        let gamma = self.gamma_row(gamma)?;
        let p = self.0.num_params();
        let v_dev = self.vector("v", v, p)?;
        let mut grad_gamma = self.0.zeros(self.0.num_train())?;
        let mut lambda = self.0.zeros(p)?;
        self.0.backward_step(&theta, &gamma, 0, &v_dev, HVP_ETA, 0.0, &mut grad_gamma, &mut lambda)?;
        Ok(v.iter().zip(self.host(&lambda)?).map(|(v, l)| (v - l) / HVP_ETA).collect())
    }

    fn step(&mut self, theta: &[f64], gamma: &[f64], eta: f64) -> Result<Vec<f64>> {
        positive_eta(eta)?;
        let theta = self.theta(theta)?;
        let gamma = self.gamma_row(gamma)?;
        let mut next = self.0.zeros(self.0.num_params())?;
        self.0.forward_step(&theta, &gamma, 0, eta, &mut next, None)?;
        self.host(&next)
    }

    fn unroll_gradient(&mut self, theta0: &[f64], gamma: &[f64], eta: f64) -> Result<(Forward, Vec<f64>)> {
        let n = self.0.num_train();
        let steps = crate::engine::rows_of("gamma [T, N]", gamma.len(), n)?;
        let unroll = Unroll { steps, eta };
        unroll.validate()?;
        let theta0 = self.theta(theta0)?;
        let gamma = self.vector("gamma", gamma, gamma.len())?;
        let every = unroll.checkpoint_interval(self.0.num_params(), std::mem::size_of::<E::Real>(), THETA_HISTORY_BUDGET);
        let mut ws = Workspace::new(&mut self.0, unroll, every)?;
        let mut grad = self.0.zeros(steps * n)?;
        let forward = ws.gradient(&mut self.0, &theta0, &gamma, &mut grad)?;
        Ok((forward, self.host(&grad)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{PerceptronData, PerceptronRecipe};
    use crate::perceptron::CpuPerceptron;

    fn engine<R: Real>() -> OnHost<CpuPerceptron<R>> {
        let recipe = PerceptronRecipe { dim: 6, n_train: 20, n_dev: 8, n_test: 4, ..PerceptronRecipe::default() };
        OnHost(CpuPerceptron::new(&PerceptronData::generate(&recipe).unwrap()).unwrap())
    }

    fn theta(p: usize) -> Vec<f64> {
        (0..p).map(|i| 0.3 * ((i as f64) * 1.7).sin()).collect()
    }

    /// H·v against central differences of the γ-weighted gradient (itself read from `step`).
    #[test]
    fn hvp_matches_differences_of_the_gradient_in_f64_and_f32() {
        let mut e64 = engine::<f64>();
        let (p, n) = (e64.params(), e64.examples());
        let (th, v) = (theta(p), (0..p).map(|i| ((i as f64) * 0.9).cos()).collect::<Vec<_>>());
        let gamma: Vec<f64> = (0..n).map(|i| (1.0 + (i % 3) as f64) / (2.0 * n as f64)).collect();
        let grad = |e: &mut OnHost<CpuPerceptron<f64>>, th: &[f64]| -> Vec<f64> {
            e.step(th, &gamma, 1.0).unwrap().iter().zip(th).map(|(next, t)| t - next).collect()
        };
        let h = 1e-5;
        let shifted = |s: f64| th.iter().zip(&v).map(|(t, v)| t + s * v).collect::<Vec<_>>();
        let (plus, minus) = (grad(&mut e64, &shifted(h)), grad(&mut e64, &shifted(-h)));
        let fd: Vec<f64> = plus.iter().zip(&minus).map(|(a, b)| (a - b) / (2.0 * h)).collect();
        let scale = fd.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        for (hv, tol) in [(e64.hvp(&th, &gamma, &v).unwrap(), 1e-7), (engine::<f32>().hvp(&th, &gamma, &v).unwrap(), 1e-5)] {
            let err = hv.iter().zip(&fd).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= tol * scale, "max |Hv − FD| = {err:e}, scale {scale:e}");
        }
    }

    #[test]
    fn unroll_gradient_and_inputs_are_checked() {
        let mut e = engine::<f64>();
        let (p, n) = (e.params(), e.examples());
        let gamma = vec![1.0 / n as f64; 3 * n];
        let (fwd, grad) = e.unroll_gradient(&theta(p), &gamma, 0.5).unwrap();
        assert_eq!((fwd.dev.len(), grad.len()), (4, 3 * n));
        assert!((fwd.j - fwd.dev.iter().sum::<f64>() / 3.0).abs() < 1e-12);
        // ∂J/∂γ against a central difference in one entry.
        let (k, h) = (n + 2, 1e-6);
        let j_at = |e: &mut OnHost<CpuPerceptron<f64>>, d: f64| {
            let mut g = gamma.clone();
            g[k] += d;
            e.unroll_gradient(&theta(p), &g, 0.5).unwrap().0.j
        };
        let fd = (j_at(&mut e, h) - j_at(&mut e, -h)) / (2.0 * h);
        assert!((grad[k] - fd).abs() < 1e-7 * fd.abs().max(1e-3), "{} vs {fd}", grad[k]);

        assert!(matches!(e.losses(&theta(p + 1)), Err(Error::Shape { .. })));
        let mut bad = theta(p);
        bad[1] = f64::NAN;
        assert!(matches!(e.losses(&bad), Err(Error::BadInput { .. })));
        assert!(matches!(e.unroll_gradient(&theta(p), &gamma[..n + 1], 0.5), Err(Error::Shape { .. })));
        assert!(matches!(e.step(&theta(p), &gamma[..n], -1.0), Err(Error::Config { .. })));
    }
}
