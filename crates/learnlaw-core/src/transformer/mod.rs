//! The Transformer language-model task (paper §5): a small pre-norm decoder trained on token
//! sequences, per-example loss = mean token cross-entropy over the non-PAD labels.
//!
//! Architecture (the official `modeling.py`): token + learned position embeddings; `layers`
//! blocks of [RMSNorm → causal multi-head self-attention → residual; RMSNorm → FFN (ReLU) →
//! residual]; a final RMSNorm; an untied LM head. No biases in linear layers; RMSNorm has a weight
//! and a bias and divides by (rms + 1e-8).
//!
//! - `model`: forward, backward, and their forward-mode tangents (for exact HVPs and per-example
//!   gradient dots), on a chunk of sequences, written once over the layer kernels of `kernels`;
//! - `cpu_kernels`: those kernels on the CPU (f64: the reference every backend is held to);
//! - `cpu`: the CPU engine (multithreaded over chunks of sequences);
//! - `device`: the passes of a device backend's engine (wgpu, CUDA) over its kernels.
pub mod cpu;
pub mod cpu_kernels;
pub mod device;
pub mod kernels;
pub mod model;
pub mod params;

pub use cpu::CpuTransformer;
pub use cpu_kernels::CpuKernels;
pub use params::{ParamSpec, OFFICIAL_PREFIX};

use std::ops::Range;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use serde::{Deserialize, Serialize};

use crate::engine::StepFlops;
use crate::text::TokenData;
use crate::{Error, Result};

/// How attention scores are scaled before the softmax.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttentionScale {
    /// 1/√hidden: what the official code does (and so what produced the paper's numbers).
    Hidden,
    /// 1/√head_dim: the usual Transformer choice.
    HeadDim,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    pub vocab_size: usize,
    pub hidden: usize,
    pub heads: usize,
    pub layers: usize,
    /// The longest input the model takes (positions of the position embedding).
    pub context: usize,
    /// The FFN's inner width (the paper: 4·hidden).
    pub ffn: usize,
    pub attention_scale: AttentionScale,
}

impl TransformerConfig {
    /// The paper's model: 2 layers, hidden 128, 8 heads, vocabulary 5000, length 64 (1,682,688
    /// parameters).
    pub fn paper() -> Self {
        TransformerConfig {
            vocab_size: 5000,
            hidden: 128,
            heads: 8,
            layers: 2,
            context: 64,
            ffn: 512,
            attention_scale: AttentionScale::Hidden,
        }
    }

    /// The scaled default that a 2-core CPU searches in minutes.
    pub fn small(vocab_size: usize, context: usize) -> Self {
        TransformerConfig { vocab_size, hidden: 64, heads: 4, layers: 2, context, ffn: 256, attention_scale: AttentionScale::Hidden }
    }

    pub fn validate(&self) -> Result<()> {
        for (name, v) in
            [("vocab_size", self.vocab_size), ("hidden", self.hidden), ("heads", self.heads), ("context", self.context), ("ffn", self.ffn)]
        {
            if v == 0 {
                return Err(Error::config(name, v, "must be at least 1"));
            }
        }
        if self.vocab_size < 3 {
            return Err(Error::config("vocab_size", self.vocab_size, "needs UNK, PAD and at least one real token"));
        }
        if !self.hidden.is_multiple_of(self.heads) {
            return Err(Error::config("heads", self.heads, format!("must divide hidden = {}", self.hidden)));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    pub fn score_scale(&self) -> f64 {
        match self.attention_scale {
            AttentionScale::Hidden => 1.0 / (self.hidden as f64).sqrt(),
            AttentionScale::HeadDim => 1.0 / (self.head_dim() as f64).sqrt(),
        }
    }

    pub fn layout(&self) -> Layout {
        Layout::new(self)
    }

    /// Analytic FLOPs of a forward pass over `tokens` input positions of sequences of length
    /// `len`: the linear layers (2 per weight per token) and the attention products, as computed
    /// (the full L×L score matrix per head, masked after).
    pub fn forward_flops(&self, tokens: usize, len: usize) -> f64 {
        let (h, f, v, l) = (self.hidden as f64, self.ffn as f64, self.vocab_size as f64, len as f64);
        let per_token = self.layers as f64 * (2.0 * (4.0 * h * h + 2.0 * h * f) + 4.0 * l * h) + 2.0 * h * v;
        tokens as f64 * per_token
    }
}

/// The analytic FLOPs of the search's steps, in units of one forward pass F (see `model`):
/// gradient = 3F (forward + two products per linear layer backward); the tangent forward of a
/// backward step = 3F (value + two tangent products); its tangent backward without the weight
/// gradient = 5F (input gradient + two tangent products for inputs and weights).
pub fn step_flops(cfg: &TransformerConfig, train_tokens: usize, dev_tokens: usize, len: usize) -> StepFlops {
    let (ft, fd) = (cfg.forward_flops(train_tokens, len), cfg.forward_flops(dev_tokens, len));
    StepFlops { forward: 3.0 * ft + fd, backward: 8.0 * ft + 3.0 * fd }
}

/// Checks a model and its token data before an engine is made on them: both valid, the data's
/// ids within the vocabulary, its sequences within the context.
pub fn check_task(cfg: &TransformerConfig, data: &TokenData) -> Result<()> {
    cfg.validate()?;
    data.validate()?;
    if data.vocab_size > cfg.vocab_size {
        return Err(Error::config("vocab_size", cfg.vocab_size, format!("the data's token ids go up to {}", data.vocab_size - 1)));
    }
    if data.seq_len - 1 > cfg.context {
        return Err(Error::bad_input(
            "token data",
            format!("sequences of {} inputs are longer than the model's context of {}", data.seq_len - 1, cfg.context),
        ));
    }
    Ok(())
}

/// `v`, or a numerical error naming `what` when it is not finite.
pub fn check_finite(what: &str, v: f64) -> Result<f64> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(Error::Numerical(format!("{what} became {v}")))
    }
}

/// Where each parameter lives in the flat θ. Matrices are row-major [in, out] (y = x·W).
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// Token embedding [vocab, hidden].
    pub tok: Range<usize>,
    /// Position embedding [context, hidden].
    pub pos: Range<usize>,
    pub blocks: Vec<BlockLayout>,
    pub norm_w: Range<usize>,
    pub norm_b: Range<usize>,
    /// LM head [hidden, vocab].
    pub head: Range<usize>,
    pub len: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BlockLayout {
    pub norm1_w: Range<usize>,
    pub norm1_b: Range<usize>,
    /// Query, key, value and output projections, each [hidden, hidden].
    pub wq: Range<usize>,
    pub wk: Range<usize>,
    pub wv: Range<usize>,
    pub wo: Range<usize>,
    pub norm2_w: Range<usize>,
    pub norm2_b: Range<usize>,
    /// FFN [hidden, ffn] then [ffn, hidden].
    pub w1: Range<usize>,
    pub w2: Range<usize>,
}

impl Layout {
    fn new(cfg: &TransformerConfig) -> Self {
        let mut at = 0;
        let mut take = |n: usize| {
            at += n;
            at - n..at
        };
        let (h, f) = (cfg.hidden, cfg.ffn);
        let tok = take(cfg.vocab_size * h);
        let pos = take(cfg.context * h);
        let blocks = (0..cfg.layers)
            .map(|_| BlockLayout {
                norm1_w: take(h),
                norm1_b: take(h),
                wq: take(h * h),
                wk: take(h * h),
                wv: take(h * h),
                wo: take(h * h),
                norm2_w: take(h),
                norm2_b: take(h),
                w1: take(h * f),
                w2: take(f * h),
            })
            .collect();
        let norm_w = take(h);
        let norm_b = take(h);
        let head = take(h * cfg.vocab_size);
        Layout { tok, pos, blocks, norm_w, norm_b, head, len: at }
    }
}

/// θ_0 with PyTorch's default initialisation (the official code never calls `init_weights`):
/// embeddings N(0, 1), linear weights U(−1/√fan_in, 1/√fan_in), RMSNorm weight 1 and bias 0.
pub fn init_params(cfg: &TransformerConfig, seed: u64) -> Vec<f32> {
    let lay = cfg.layout();
    let mut theta = vec![0.0f32; lay.len];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 1.0).expect("unit normal");
    for r in [&lay.tok, &lay.pos] {
        theta[r.clone()].iter_mut().for_each(|x| *x = normal.sample(&mut rng));
    }
    let mut uniform = |theta: &mut [f32], fan_in: usize| {
        let bound = 1.0 / (fan_in as f32).sqrt();
        let u = Uniform::new_inclusive(-bound, bound).expect("finite bound");
        theta.iter_mut().for_each(|x| *x = u.sample(&mut rng));
    };
    let (h, f) = (cfg.hidden, cfg.ffn);
    for b in &lay.blocks {
        for r in [&b.wq, &b.wk, &b.wv, &b.wo, &b.w1] {
            uniform(&mut theta[r.clone()], h);
        }
        uniform(&mut theta[b.w2.clone()], f);
        for r in [&b.norm1_w, &b.norm2_w] {
            theta[r.clone()].fill(1.0);
        }
    }
    uniform(&mut theta[lay.head.clone()], h);
    theta[lay.norm_w.clone()].fill(1.0);
    theta
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paper_model_has_the_official_parameter_count() {
        assert_eq!(TransformerConfig::paper().layout().len, 1_682_688);
    }

    #[test]
    fn bad_configs_are_rejected() {
        let mut c = TransformerConfig::small(100, 16);
        c.heads = 5;
        assert!(c.validate().is_err());
        assert!(TransformerConfig::small(2, 16).validate().is_err());
        assert!(TransformerConfig { hidden: 0, ..TransformerConfig::small(100, 16) }.validate().is_err());
    }
}
