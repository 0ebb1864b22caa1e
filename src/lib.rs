//! learnlaw: near-optimal learning policies in the sense of the Learning Law (Gu et al., 2024).
//!
//! This facade re-exports the workspace's library crates: `learnlaw_core` (at the root: the math,
//! the CPU engines, the unroll and its adjoint, the policy search, the file formats),
//! [`wgpu_backend`] (crate `learnlaw_wgpu`: the WGSL engines) and [`cuda_backend`] (crate
//! `learnlaw_cuda`: the CUDA engines). The command-line tool is the `learnlaw` binary of the
//! `learnlaw-cli` package.
//!
//! # Embedding an engine in a training loop
//!
//! Every backend implements [`Engine`]: device vectors, one fused launch per γ-weighted step
//! ([`Engine::forward_step`]) and one per step of the adjoint ([`Engine::backward_step`]). The loop
//! below trains the perceptron with a policy γ of shape \[T, N\], computes
//! J(γ) = (1/T) Σ_{t=0..T} L_dev(θ_t), then ∂J/∂γ by the adjoint recursion
//! λ_T = ∇L_dev(θ_T)/T, λ_t = ∇L_dev(θ_t)/T + λ_{t+1} − η H_t λ_{t+1}, and checks both against
//! [`unroll::Workspace::gradient`], which does the same with checkpointing. The same calls drive
//! [`transformer::CpuTransformer`] (built from a [`transformer::TransformerConfig`] and
//! [`text::TokenData`]) and the GPU engines ([`wgpu_backend::WgpuPerceptron`],
//! [`cuda_backend::CudaTransformer`], …); `examples/weighted_training.rs` picks a backend at run
//! time and batches the steps with [`Engine::run_steps`].
//!
//! ```
//! use learnlaw::data::{init_theta, PerceptronData, PerceptronRecipe};
//! use learnlaw::perceptron::CpuPerceptron;
//! use learnlaw::policy::Policy;
//! use learnlaw::unroll::{Unroll, Workspace};
//! use learnlaw::{Engine, Real, Set};
//!
//! # fn main() -> learnlaw::Result<()> {
//! // Data (a small teacher–student set), an engine, θ_0 and the constant policy γ_{t,n} = 1/N.
//! let recipe = PerceptronRecipe { dim: 16, n_train: 64, n_dev: 32, n_test: 32, ..Default::default() };
//! let data = PerceptronData::generate(&recipe)?;
//! let mut e = CpuPerceptron::<f64>::new(&data)?;
//! let (steps, eta) = (20, 0.1);
//! let (p, n) = (e.num_params(), e.num_train());
//! let real = |v: &[f32]| v.iter().map(|&x| f64::of(x as f64)).collect::<Vec<_>>();
//! let theta0 = e.upload(&real(&init_theta(data.dim, 10)))?;
//! let mut gamma = e.upload(&real(&Policy::constant(steps, n).gamma))?;
//!
//! // Forward: θ_{t+1} = θ_t − η ∇_θ Σ_n γ_{t,n} l_n(θ_t), keeping every θ_t for the adjoint;
//! // each step also writes L_dev(θ_t) into `curve` on the device.
//! let mut thetas = vec![theta0];
//! let mut curve = e.zeros(steps)?;
//! for t in 0..steps {
//!     let mut next = e.zeros(p)?;
//!     e.forward_step(&thetas[t], &gamma, t, eta, &mut next, Some((&mut curve, t)))?;
//!     thetas.push(next);
//! }
//! let mut dev: Vec<f64> = e.download(&curve)?.iter().map(|l| l.f64()).collect();
//! dev.push(e.loss(Set::Dev, &thetas[steps])?);
//! let j = dev.iter().sum::<f64>() / steps as f64;
//!
//! // Backward: λ_T = ∇L_dev(θ_T)/T, then row t of ∂J/∂γ and λ_t for t = T−1..0.
//! let mut lambda_next = e.zeros(p)?;
//! e.loss_grad(Set::Dev, &thetas[steps], &mut lambda_next)?;
//! e.scale(1.0 / steps as f64, &mut lambda_next)?;
//! let (mut lambda, mut grad) = (e.zeros(p)?, e.zeros(steps * n)?);
//! for t in (0..steps).rev() {
//!     e.backward_step(&thetas[t], &gamma, t, &lambda_next, eta, 1.0 / steps as f64, &mut grad, &mut lambda)?;
//!     std::mem::swap(&mut lambda, &mut lambda_next);
//! }
//!
//! // The library's unroll computes the same J and ∂J/∂γ.
//! let mut ws = Workspace::new(&mut e, Unroll { steps, eta }, 1)?;
//! let mut grad_ws = e.zeros(steps * n)?;
//! let fwd = ws.gradient(&mut e, &thetas[0], &gamma, &mut grad_ws)?;
//! assert!((fwd.j - j).abs() <= 1e-12 * j.abs());
//! let (g, g_ws) = (e.download(&grad)?, e.download(&grad_ws)?);
//! assert!(g.iter().zip(&g_ws).all(|(a, b)| (a - b).abs() <= 1e-12 * (1.0 + b.abs())));
//!
//! // One outer step of the paper's search, γ ← Π_simplex(γ − lr ∂J/∂γ) at lr = 2, lowers J
//! // (0.574 → 0.423 here).
//! e.axpy(-2.0, &grad, &mut gamma)?;
//! e.project_simplex_rows(&mut gamma, n)?;
//! assert!(ws.forward(&mut e, &thetas[0], &gamma)?.j < j);
//! # Ok(())
//! # }
//! ```
pub use learnlaw_core::*;
// Inlined, so the facade's pages (and the links above) do not depend on the order in which cargo
// documents the crates.
#[doc(inline)]
pub use learnlaw_cuda as cuda_backend;
#[doc(inline)]
pub use learnlaw_wgpu as wgpu_backend;
