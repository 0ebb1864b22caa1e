//! The perceptron task (paper §4): a linear classifier without bias, θ ∈ R^D, trained with
//! binary cross-entropy on logits z_n = x_n·θ.
//!
//! Per example: l_n = softplus(z_n) − y_n z_n, ∇l_n = (σ(z_n) − y_n) x_n,
//! ∇²l_n = σ(z_n)(1 − σ(z_n)) x_n x_nᵀ. So every quantity the search needs is a pass over the data
//! matrix with one or two dot products per row: `cpu` fuses them, `reference` spells them out.
pub mod cpu;
pub mod reference;

pub use cpu::CpuPerceptron;

use crate::Real;

/// σ(z), stable for large |z|: e = e^{−|z|} ∈ (0, 1], σ = 1/(1+e) or e/(1+e). Branch-free
/// (selects), so a loop over it vectorises.
#[inline(always)]
pub fn sigmoid<R: Real>(z: R) -> R {
    let e = (-z.abs()).exp_inline();
    let num = if z >= R::zero() { R::one() } else { e };
    num / (R::one() + e)
}

/// Binary cross-entropy with logits, softplus(z) − y·z, stable for large |z|.
#[inline(always)]
pub fn bce_with_logits<R: Real>(z: R, y: R) -> R {
    z.max(R::zero()) - z * y + (-z.abs()).exp().ln_1p()
}
