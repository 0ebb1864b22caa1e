//! The perceptron's ground truth: plain f64 loops, one example at a time, no fusion and no tricks.
//! Every backend's kernels are checked against these functions.
use super::{bce_with_logits, sigmoid};
use crate::data::Examples;

fn dot(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y).sum()
}

fn row(set: &Examples, n: usize, dim: usize) -> &[f32] {
    &set.x[n * dim..(n + 1) * dim]
}

/// l_n(θ) for every example of the set.
pub fn losses(set: &Examples, theta: &[f64]) -> Vec<f64> {
    let dim = theta.len();
    (0..set.len()).map(|n| bce_with_logits(dot(row(set, n, dim), theta), set.y[n] as f64)).collect()
}

/// ∇l_n(θ) = (σ(z_n) − y_n) x_n, materialised.
pub fn example_grad(set: &Examples, n: usize, theta: &[f64]) -> Vec<f64> {
    let x = row(set, n, theta.len());
    let s = sigmoid(dot(x, theta)) - set.y[n] as f64;
    x.iter().map(|&v| s * v as f64).collect()
}

/// Mean loss over the set.
pub fn mean_loss(set: &Examples, theta: &[f64]) -> f64 {
    losses(set, theta).iter().sum::<f64>() / set.len() as f64
}

/// Σ_n w_n ∇l_n(θ) (w = 1/n for the mean-loss gradient, w = γ_t for the training step).
pub fn weighted_grad(set: &Examples, weights: &[f64], theta: &[f64]) -> Vec<f64> {
    let mut g = vec![0.0; theta.len()];
    for (n, &w) in weights.iter().enumerate() {
        for (gi, ei) in g.iter_mut().zip(example_grad(set, n, theta)) {
            *gi += w * ei;
        }
    }
    g
}

/// Gradient of the mean loss over the set.
pub fn mean_grad(set: &Examples, theta: &[f64]) -> Vec<f64> {
    weighted_grad(set, &vec![1.0 / set.len() as f64; set.len()], theta)
}

/// H v with H = Σ_n w_n ∇²l_n(θ) = Σ_n w_n σ'(z_n) x_n x_nᵀ.
pub fn weighted_hvp(set: &Examples, weights: &[f64], theta: &[f64], v: &[f64]) -> Vec<f64> {
    let dim = theta.len();
    let mut h = vec![0.0; dim];
    for (n, &w) in weights.iter().enumerate() {
        let x = row(set, n, dim);
        let p = sigmoid(dot(x, theta));
        let c = w * p * (1.0 - p) * dot(x, v);
        for (hi, &xi) in h.iter_mut().zip(x) {
            *hi += c * xi as f64;
        }
    }
    h
}

/// ∇l_n(θ)·v for every example, through the materialised per-example gradients.
pub fn example_dots(set: &Examples, theta: &[f64], v: &[f64]) -> Vec<f64> {
    (0..set.len()).map(|n| example_grad(set, n, theta).iter().zip(v).map(|(a, b)| a * b).sum()).collect()
}
