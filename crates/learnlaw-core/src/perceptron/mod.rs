//! The perceptron task (paper §4): a linear classifier without bias, θ ∈ R^D, trained with
//! binary cross-entropy on logits z_n = x_n·θ.
//!
//! Per example: l_n = softplus(z_n) − y_n z_n, ∇l_n = (σ(z_n) − y_n) x_n,
//! ∇²l_n = σ(z_n)(1 − σ(z_n)) x_n x_nᵀ. So every quantity the search needs is a pass over the data
//! matrix with one or two dot products per row: `cpu` fuses them, `reference` spells them out.
pub mod cpu;
pub mod reference;

pub use cpu::CpuPerceptron;

use crate::engine::StepFlops;
use crate::Real;

/// The analytic FLOPs of the perceptron's steps with N training and K dev examples of dimension D.
/// Forward: z = Xθ and Xᵀ(γ⊙(σ(z)−y)) over the train set (4ND), the dev loss (2KD), the update (2D).
/// Backward: z = Xθ and u = Xλ (4ND; u gives the N dots ∇l_n·λ = (σ−y)·u_n), the HVP
/// Xᵀ(γ⊙σ'⊙u) (2ND), ∇L_dev (4KD) and the λ update (4D). Elementwise work (exp, ~10N) is included.
pub fn step_flops(n: usize, k: usize, d: usize) -> StepFlops {
    let (n, k, d) = (n as f64, k as f64, d as f64);
    StepFlops {
        forward: 4.0 * n * d + 2.0 * k * d + 2.0 * d + 10.0 * (n + k),
        backward: 6.0 * n * d + 4.0 * k * d + 4.0 * d + 10.0 * (n + k),
    }
}

/// σ(z), stable for large |z|: e = e^{−|z|} ∈ (0, 1], σ = 1/(1+e) or e/(1+e). Branch-free
/// (selects), so a loop over it vectorises.
#[inline(always)]
pub fn sigmoid<R: Real>(z: R) -> R {
    let e = (-z.abs()).exp_inline();
    let num = if z >= R::zero() { R::one() } else { e };
    num / (R::one() + e)
}

/// Binary cross-entropy with logits, softplus(z) − y·z, stable for large |z|. Branch-free and
/// without library calls in f32, so a loop over it vectorises.
#[inline(always)]
pub fn bce_with_logits<R: Real>(z: R, y: R) -> R {
    z.max(R::zero()) - z * y + (-z.abs()).exp_inline().ln_1p_unit()
}
