//! The unrolled training run and its adjoint: J(γ) and ∂J/∂γ for one policy (reference §3).
//!
//! Forward: θ_{t+1} = θ_t − η ∇Σ_n γ_{t,n} l_n(θ_t) for t < T, and J = (1/T) Σ_{t=0..T} L_dev(θ_t)
//! (the official code's normalisation: T+1 terms, divided by T).
//! Backward: λ_T = ∇L_dev(θ_T)/T, then for t = T−1..0:
//!   ∂J/∂γ_{t,n} = −η ∇l_n(θ_t)·λ_{t+1},   λ_t = ∇L_dev(θ_t)/T + λ_{t+1} − η H_t λ_{t+1}.
//! The backward pass needs every θ_t. They are kept every `every` steps and the segments between
//! checkpoints recomputed (every = 1 keeps all; ≈√T bounds memory by ~2√T parameter copies).
use crate::engine::{Engine, Set};
use crate::{Error, Real, Result};

/// The inner training run: T steps of full-batch gradient descent with learning rate η.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Unroll {
    pub steps: usize,
    pub eta: f64,
}

impl Unroll {
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::config("steps", self.steps, "must be at least 1"));
        }
        if !(self.eta.is_finite() && self.eta > 0.0) {
            return Err(Error::config("eta", self.eta, "must be a positive finite number"));
        }
        Ok(())
    }

    /// The checkpoint interval: keep every θ when T·P reals fit in `budget_bytes`, else every ⌈√T⌉.
    pub fn checkpoint_interval(&self, num_params: usize, real_bytes: usize, budget_bytes: usize) -> usize {
        if self.steps.saturating_mul(num_params).saturating_mul(real_bytes) <= budget_bytes {
            1
        } else {
            (self.steps as f64).sqrt().ceil() as usize
        }
    }
}

/// J and the desired-loss curve of one unrolled run.
#[derive(Clone, Debug, PartialEq)]
pub struct Forward {
    /// J = (1/T) Σ_{t=0..T} L_dev(θ_t).
    pub j: f64,
    /// L_dev(θ_t) for t = 0..T.
    pub dev: Vec<f64>,
}

/// Device buffers for unrolled runs of one size, allocated once and reused across outer epochs.
pub struct Workspace<E: Engine> {
    unroll: Unroll,
    every: usize,
    /// θ_0, θ_every, θ_2·every, …
    checkpoints: Vec<E::Vec>,
    /// θ_{s+1} … θ_{s+every−1} of the segment being differentiated (θ_s is its checkpoint).
    segment: Vec<E::Vec>,
    /// The running θ of the forward pass (and θ_T at its end).
    theta: E::Vec,
    /// L_dev(θ_t) for t < T, written on the device and read back once per unroll.
    dev_curve: E::Vec,
    theta_next: E::Vec,
    lambda: E::Vec,
    lambda_next: E::Vec,
}

impl<E: Engine> Workspace<E> {
    pub fn new(engine: &mut E, unroll: Unroll, every: usize) -> Result<Self> {
        unroll.validate()?;
        if every == 0 {
            return Err(Error::config("checkpoint_every", every, "must be at least 1"));
        }
        let every = every.min(unroll.steps);
        let p = engine.num_params();
        let mut vecs = |k: usize| (0..k).map(|_| engine.zeros(p)).collect::<Result<Vec<_>>>();
        Ok(Workspace {
            unroll,
            every,
            checkpoints: vecs(unroll.steps.div_ceil(every))?,
            segment: vecs(every - 1)?,
            theta: engine.zeros(p)?,
            dev_curve: engine.zeros(unroll.steps)?,
            theta_next: engine.zeros(p)?,
            lambda: engine.zeros(p)?,
            lambda_next: engine.zeros(p)?,
        })
    }

    pub fn unroll(&self) -> Unroll {
        self.unroll
    }

    /// The forward pass: J(γ) and the dev curve. With `dev_grad_at_end`, λ_next ends up holding
    /// ∇L_dev(θ_T)/T, the start of the adjoint recursion.
    fn run_forward(&mut self, e: &mut E, theta0: &E::Vec, gamma: &E::Vec, dev_grad_at_end: bool) -> Result<Forward> {
        let Unroll { steps, eta } = self.unroll;
        let k = self.every;
        // Steps read from and write to the checkpoints in place, so keeping θ costs no copies;
        // between checkpoints they alternate between two running buffers. θ_T ends in `theta`.
        // An engine may take the curve from the θ_t itself: from them all at once afterwards
        // where every θ_t is kept, else from each before its step.
        let batch_dev = e.batches_dev_losses(steps);
        e.copy(theta0, &mut self.checkpoints[0])?;
        e.run_steps(|e| {
            for t in 0..steps {
                if batch_dev && k > 1 {
                    let theta_t = if t % k == 0 { &self.checkpoints[t / k] } else { &self.theta };
                    e.dev_losses(std::slice::from_ref(theta_t), &mut self.dev_curve, t)?;
                }
                let curve = (!batch_dev).then_some((&mut self.dev_curve, t));
                let to_checkpoint = (t + 1) % k == 0 && t + 1 < steps;
                match (t % k == 0, to_checkpoint) {
                    (true, true) => {
                        let (done, rest) = self.checkpoints.split_at_mut(t / k + 1);
                        e.forward_step(&done[t / k], gamma, t, eta, &mut rest[0], curve)?
                    }
                    (true, false) => e.forward_step(&self.checkpoints[t / k], gamma, t, eta, &mut self.theta, curve)?,
                    (false, true) => e.forward_step(&self.theta, gamma, t, eta, &mut self.checkpoints[(t + 1) / k], curve)?,
                    (false, false) => {
                        e.forward_step(&self.theta, gamma, t, eta, &mut self.theta_next, curve)?;
                        std::mem::swap(&mut self.theta, &mut self.theta_next);
                    }
                }
            }
            Ok(())
        })?;
        if batch_dev && k == 1 {
            e.dev_losses(&self.checkpoints, &mut self.dev_curve, 0)?;
        }
        let mut dev: Vec<f64> = e.download(&self.dev_curve)?.iter().map(|l| l.f64()).collect();
        let last = if dev_grad_at_end {
            let l = e.loss_grad(Set::Dev, &self.theta, &mut self.lambda_next)?;
            e.scale(1.0 / steps as f64, &mut self.lambda_next)?;
            l
        } else {
            e.loss(Set::Dev, &self.theta)?
        };
        dev.push(last);
        let j = dev.iter().sum::<f64>() / steps as f64;
        if !j.is_finite() {
            let t = dev.iter().position(|l| !l.is_finite()).unwrap_or(steps);
            let problem = format!("the inner training diverged: the desired loss is {} at inner step {t}", dev[t]);
            return Err(Error::Numerical(format!("{problem}; lower the inner learning rate η = {eta:?}")));
        }
        Ok(Forward { j, dev })
    }

    /// J(γ) and the dev curve, without the gradient.
    pub fn forward(&mut self, e: &mut E, theta0: &E::Vec, gamma: &E::Vec) -> Result<Forward> {
        self.run_forward(e, theta0, gamma, false)
    }

    /// J(γ), the dev curve, and ∂J/∂γ written into `grad_gamma` ([T, N], like γ).
    pub fn gradient(&mut self, e: &mut E, theta0: &E::Vec, gamma: &E::Vec, grad_gamma: &mut E::Vec) -> Result<Forward> {
        let fwd = self.run_forward(e, theta0, gamma, true)?;
        let Unroll { steps, eta } = self.unroll;
        let dev_weight = 1.0 / steps as f64;
        e.run_steps(|e| {
            for seg in (0..self.checkpoints.len()).rev() {
                let start = seg * self.every;
                let len = self.every.min(steps - start);
                // θ_start is the checkpoint; θ_{start+i} for i ≥ 1 is recomputed into segment[i − 1].
                for i in 1..len {
                    let (done, rest) = self.segment.split_at_mut(i - 1);
                    let prev = if i == 1 { &self.checkpoints[seg] } else { &done[i - 2] };
                    e.forward_step(prev, gamma, start + i - 1, eta, &mut rest[0], None)?;
                }
                for i in (0..len).rev() {
                    let theta = if i == 0 { &self.checkpoints[seg] } else { &self.segment[i - 1] };
                    e.backward_step(theta, gamma, start + i, &self.lambda_next, eta, dev_weight, grad_gamma, &mut self.lambda)?;
                    std::mem::swap(&mut self.lambda, &mut self.lambda_next);
                }
            }
            Ok(())
        })?;
        Ok(fwd)
    }

    /// ∂J/∂θ_0 after `gradient` (the adjoint λ_0).
    pub fn lambda0(&self) -> &E::Vec {
        &self.lambda_next
    }
}
