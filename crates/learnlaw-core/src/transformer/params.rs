//! The Transformer's parameters one by one: where each lies in the flat θ, its shape there, and
//! its name and shape in the official PyTorch module (microsoft/LMOps `learning_law`,
//! `transformer_model.Transformer` wrapping `modeling.BaseTransformer`). Every import and export
//! of θ goes through [`TransformerConfig::params`], so the order is written once.
//!
//! learnlaw stores matrices row-major as [in, out] (y = x·W); the official `nn.Linear` stores
//! [out, in] (y = x·Wᵀ), so every linear weight is transposed between the two. Embeddings are
//! [rows, hidden] in both, and norm weights and biases are vectors.
use std::ops::Range;

use super::{AttentionScale, TransformerConfig};
use crate::{Error, Result};

/// The prefix of every key of the official `Transformer`'s state dict (its `base_model` field).
pub const OFFICIAL_PREFIX: &str = "base_model.";

/// One parameter tensor of the Transformer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// learnlaw's name, e.g. `blocks.0.wq` (the field of [`super::Layout`]).
    pub name: String,
    /// Where it lies in θ.
    pub range: Range<usize>,
    /// Its shape in θ (row-major): [in, out] for linear weights.
    pub shape: Vec<usize>,
    /// Its key in the official `Transformer`'s state dict, e.g. `base_model.blocks.0.attn.w_q.weight`.
    pub official: String,
    /// Whether the official module stores the transpose of `shape` (an `nn.Linear` weight, [out, in]).
    pub transposed: bool,
}

impl ParamSpec {
    /// The shape in the official module: `shape`, reversed when `transposed`.
    pub fn official_shape(&self) -> Vec<usize> {
        let mut s = self.shape.clone();
        if self.transposed {
            s.reverse();
        }
        s
    }

    /// The parameter's values from θ, in the official module's layout (transposed when it is).
    pub fn to_official<T: Copy>(&self, theta: &[T]) -> Vec<T> {
        let v = &theta[self.range.clone()];
        match (self.transposed, self.shape.as_slice()) {
            (true, &[rows, cols]) => (0..cols).flat_map(|c| (0..rows).map(move |r| v[r * cols + c])).collect(),
            _ => v.to_vec(),
        }
    }

    /// Writes `values`, in the official module's layout, into θ (transposing when it is).
    pub fn from_official<T: Copy>(&self, values: &[T], theta: &mut [T]) {
        assert_eq!(values.len(), self.range.len(), "{}: values of the parameter's size", self.official);
        let dst = &mut theta[self.range.clone()];
        match (self.transposed, self.shape.as_slice()) {
            (true, &[rows, cols]) => {
                // values is [cols, rows] row-major.
                for c in 0..cols {
                    for r in 0..rows {
                        dst[r * cols + c] = values[c * rows + r];
                    }
                }
            }
            _ => dst.copy_from_slice(values),
        }
    }
}

impl TransformerConfig {
    /// Every parameter, in the official module's `named_parameters()` order (the order of its
    /// `params_to_vector`): word and position embeddings, LM head, final norm, then per block the
    /// attention's q, k, v, o, the FFN's two layers and the two norms. Their ranges cover θ
    /// exactly once (in learnlaw's own order, which differs).
    pub fn params(&self) -> impl Iterator<Item = ParamSpec> + '_ {
        let lay = self.layout();
        let (h, f, v, c) = (self.hidden, self.ffn, self.vocab_size, self.context);
        let p = |name: String, range: &Range<usize>, shape: Vec<usize>, official: String, transposed: bool| ParamSpec {
            name,
            range: range.clone(),
            shape,
            official: format!("{OFFICIAL_PREFIX}{official}"),
            transposed,
        };
        let mut out = vec![
            p("tok".into(), &lay.tok, vec![v, h], "word_embed.weight".into(), false),
            p("pos".into(), &lay.pos, vec![c, h], "pos_embed.weight".into(), false),
            p("head".into(), &lay.head, vec![h, v], "lm_head.weight".into(), true),
            p("norm_w".into(), &lay.norm_w, vec![h], "ln_end.weight".into(), false),
            p("norm_b".into(), &lay.norm_b, vec![h], "ln_end.bias".into(), false),
        ];
        for (i, b) in lay.blocks.iter().enumerate() {
            let linear =
                [(&b.wq, "wq", "attn.w_q", h), (&b.wk, "wk", "attn.w_k", h), (&b.wv, "wv", "attn.w_v", h), (&b.wo, "wo", "attn.w_o", h)];
            for (range, name, official, out_dim) in linear.into_iter().chain([(&b.w1, "w1", "ffn.mlp_1", f)]) {
                out.push(p(format!("blocks.{i}.{name}"), range, vec![h, out_dim], format!("blocks.{i}.{official}.weight"), true));
            }
            out.push(p(format!("blocks.{i}.w2"), &b.w2, vec![f, h], format!("blocks.{i}.ffn.mlp_2.weight"), true));
            let norms = [(&b.norm1_w, "norm1_w", "ln_1.weight"), (&b.norm1_b, "norm1_b", "ln_1.bias")];
            let norms = norms.into_iter().chain([(&b.norm2_w, "norm2_w", "ln_2.weight"), (&b.norm2_b, "norm2_b", "ln_2.bias")]);
            for (range, name, official) in norms {
                out.push(p(format!("blocks.{i}.{name}"), range, vec![h], format!("blocks.{i}.{official}"), false));
            }
        }
        out.into_iter()
    }

    /// Whether the official module can express this model: its FFN is 4 × hidden and it scales
    /// attention scores by 1/√hidden. The error says which setting it cannot express.
    pub fn check_official(&self) -> Result<()> {
        if self.ffn != 4 * self.hidden {
            let problem = format!("the official module's FFN is 4 × hidden = {}; export this run with --format learnlaw", 4 * self.hidden);
            return Err(Error::config("ffn", self.ffn, problem));
        }
        if self.attention_scale != AttentionScale::Hidden {
            return Err(Error::config(
                "attention_scale",
                "head-dim",
                "the official module scales attention scores by 1/√hidden; export this run with --format learnlaw",
            ));
        }
        Ok(())
    }

    /// The official `BaseTransformer`'s `config` dict for this model (its keys and values, as JSON).
    pub fn official_config(&self) -> serde_json::Value {
        serde_json::json!({
            "vocab_size": self.vocab_size,
            "max_len": self.context,
            "hidden_size": self.hidden,
            "num_head": self.heads,
            "num_layers": self.layers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_cover_theta_once() {
        let cfg = TransformerConfig { ffn: 24, ..TransformerConfig::small(50, 7) };
        let lay = cfg.layout();
        let mut covered = vec![0u8; lay.len];
        for p in cfg.params() {
            assert_eq!(p.range.len(), p.shape.iter().product::<usize>(), "{}", p.name);
            covered[p.range.clone()].iter_mut().for_each(|c| *c += 1);
        }
        assert!(covered.iter().all(|&c| c == 1));
        assert_eq!(cfg.params().count(), 5 + 10 * cfg.layers);
    }

    /// The official module's `named_parameters()` for the paper's model, written out from
    /// `modeling.py` (registration order: embeddings, lm_head, ln_end, then each block's attn,
    /// ffn, ln_1, ln_2; `nn.Linear(in, out)` stores [out, in]).
    #[test]
    fn the_paper_model_has_the_official_names_order_and_shapes() {
        let mut expected: Vec<(String, Vec<usize>)> = vec![
            ("word_embed.weight".into(), vec![5000, 128]),
            ("pos_embed.weight".into(), vec![64, 128]),
            ("lm_head.weight".into(), vec![5000, 128]),
            ("ln_end.weight".into(), vec![128]),
            ("ln_end.bias".into(), vec![128]),
        ];
        for l in 0..2 {
            for w in ["w_q", "w_k", "w_v", "w_o"] {
                expected.push((format!("blocks.{l}.attn.{w}.weight"), vec![128, 128]));
            }
            expected.push((format!("blocks.{l}.ffn.mlp_1.weight"), vec![512, 128]));
            expected.push((format!("blocks.{l}.ffn.mlp_2.weight"), vec![128, 512]));
            for n in ["ln_1", "ln_2"] {
                expected.push((format!("blocks.{l}.{n}.weight"), vec![128]));
                expected.push((format!("blocks.{l}.{n}.bias"), vec![128]));
            }
        }
        let expected: Vec<(String, Vec<usize>)> = expected.into_iter().map(|(k, s)| (format!("base_model.{k}"), s)).collect();
        let cfg = TransformerConfig::paper();
        let got: Vec<(String, Vec<usize>)> = cfg.params().map(|p| (p.official.clone(), p.official_shape())).collect();
        assert_eq!(got, expected);
        assert_eq!(cfg.params().filter(|p| p.transposed).count(), 1 + 6 * 2, "lm_head and the six linear layers of each block");
        assert_eq!(got.iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>(), 1_682_688);
    }

    #[test]
    fn transposes_round_trip() {
        let p = ParamSpec { name: "w".into(), range: 1..7, shape: vec![2, 3], official: "w".into(), transposed: true };
        let theta = [9, 0, 1, 2, 3, 4, 5, 9];
        // θ holds [[0, 1, 2], [3, 4, 5]]; the official layout is its transpose.
        assert_eq!(p.to_official(&theta), vec![0, 3, 1, 4, 2, 5]);
        assert_eq!(p.official_shape(), vec![3, 2]);
        let mut back = [9; 8];
        p.from_official(&p.to_official(&theta), &mut back);
        assert_eq!(back, theta);
    }

    #[test]
    fn only_the_official_architecture_is_official() {
        let cfg = TransformerConfig::small(50, 8);
        assert!(cfg.check_official().is_ok());
        let e = TransformerConfig { ffn: 100, ..cfg.clone() }.check_official().unwrap_err().to_string();
        assert!(e.contains("ffn = 100") && e.contains("4 × hidden = 256"), "{e}");
        let e = TransformerConfig { attention_scale: AttentionScale::HeadDim, ..cfg }.check_official().unwrap_err().to_string();
        assert!(e.contains("1/√hidden"), "{e}");
    }
}
