//! θ files: a model's parameters in and out, as safetensors, in one of two formats.
//!
//! - **official**: the state dict of the official PyTorch module (microsoft/LMOps `learning_law`),
//!   loadable with `load_state_dict`. The Transformer: `transformer_model.Transformer`, keys
//!   `base_model.word_embed.weight`, … with `nn.Linear` weights as [out, in] (see
//!   [`crate::transformer::params`]; a `BaseTransformer`'s keys, without `base_model.`, are read
//!   too). The perceptron: `perceptron_model.PerceptronModel`, one key `linear.weight` [1, D].
//! - **learnlaw**: learnlaw's own flat θ, one tensor `theta` \[P\] (`theta0` is read too, as in a
//!   perceptron data file), in learnlaw's order and [in, out] matrices.
//!
//! Reading checks the names (missing and unknown keys are errors naming them), the shapes (with
//! the model the file seems to hold, when that differs) and the values (finite). Values are read
//! as f64, so a θ given in f64 stays f64 for an f64 engine; F32, F64, F16 and BF16 are read.
//!
//! [`replay`] re-runs a policy's inner training to reach θ_t at chosen steps (what `export` writes).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::engine::Engine;
use crate::tensor_file::{self, le, Tensor, Values};
use crate::transformer::{TransformerConfig, OFFICIAL_PREFIX};
use crate::unroll::Unroll;
use crate::{Error, Real, Result};

/// The key of the official perceptron's weight ([1, D], `nn.Linear(D, 1, bias=False)`).
pub const OFFICIAL_PERCEPTRON_KEY: &str = "linear.weight";
/// The key of learnlaw's flat θ; [`LEARNLAW_KEY_THETA0`] is read as well.
pub const LEARNLAW_KEY: &str = "theta";
pub const LEARNLAW_KEY_THETA0: &str = "theta0";

/// The format of a θ file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThetaFormat {
    /// The official PyTorch module's state dict.
    Official,
    /// learnlaw's flat θ (`theta` \[P\]).
    Learnlaw,
}

impl ThetaFormat {
    pub fn name(self) -> &'static str {
        match self {
            ThetaFormat::Official => "official",
            ThetaFormat::Learnlaw => "learnlaw",
        }
    }
}

/// The precision a θ file is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    F64,
}

/// The model whose θ a file holds.
#[derive(Clone, Copy, Debug)]
pub enum ThetaModel<'a> {
    /// A perceptron on D inputs (θ = its D weights).
    Perceptron {
        dim: usize,
    },
    Transformer(&'a TransformerConfig),
}

impl ThetaModel<'_> {
    /// P, the length of θ.
    pub fn num_params(&self) -> usize {
        match self {
            ThetaModel::Perceptron { dim } => *dim,
            ThetaModel::Transformer(cfg) => cfg.layout().len,
        }
    }

    fn describe(&self) -> String {
        match self {
            ThetaModel::Perceptron { dim } => format!("the perceptron on D = {dim} inputs"),
            ThetaModel::Transformer(cfg) => describe_transformer(cfg.vocab_size, cfg.hidden, cfg.context, cfg.layers, Some(cfg.ffn)),
        }
    }

    /// The official module's keys and shapes, and where each lies in θ (with its transpose).
    fn official(&self) -> Vec<Slot> {
        match self {
            ThetaModel::Perceptron { dim } => {
                vec![Slot { key: OFFICIAL_PERCEPTRON_KEY.into(), shape: vec![1, *dim], apply: Apply::Copy(0..*dim) }]
            }
            ThetaModel::Transformer(cfg) => {
                cfg.params().map(|p| Slot { key: p.official.clone(), shape: p.official_shape(), apply: Apply::Param(p) }).collect()
            }
        }
    }
}

fn describe_transformer(vocab: usize, hidden: usize, context: usize, layers: usize, ffn: Option<usize>) -> String {
    let ffn = ffn.map_or(String::new(), |f| format!(", FFN {f}"));
    let s = if layers == 1 { "" } else { "s" };
    format!("a Transformer with vocabulary {vocab}, hidden {hidden}, context {context}, {layers} layer{s}{ffn}")
}

enum Apply {
    Copy(std::ops::Range<usize>),
    Param(crate::transformer::ParamSpec),
}

/// One tensor of an official state dict.
struct Slot {
    key: String,
    shape: Vec<usize>,
    apply: Apply,
}

impl Slot {
    fn values_from(&self, theta: &[f64]) -> Vec<f64> {
        match &self.apply {
            Apply::Copy(r) => theta[r.clone()].to_vec(),
            Apply::Param(p) => p.to_official(theta),
        }
    }
    fn write_into(&self, values: &[f64], theta: &mut [f64]) {
        match &self.apply {
            Apply::Copy(r) => theta[r.clone()].copy_from_slice(values),
            Apply::Param(p) => p.from_official(values, theta),
        }
    }
}

/// A θ read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Theta {
    /// θ in learnlaw's layout (exact: every stored dtype fits in f64).
    pub values: Vec<f64>,
    pub format: ThetaFormat,
    /// Whether every tensor was stored in f64.
    pub f64: bool,
}

/// Writes θ (learnlaw's layout, length P of `model`) to `path` in `format`, atomically, with
/// `metadata` and the keys this module adds (`learnlaw_format`, and for the official format
/// `format` = `pt` and the module's `config` dict as JSON).
pub fn save(
    path: &Path,
    model: ThetaModel,
    theta: &[f64],
    format: ThetaFormat,
    precision: Precision,
    mut metadata: HashMap<String, String>,
) -> Result<()> {
    if theta.len() != model.num_params() {
        return Err(Error::shape("θ", format!("[{}] (the parameters of {})", model.num_params(), model.describe()), theta.len()));
    }
    if let Some(i) = theta.iter().position(|v| !v.is_finite()) {
        return Err(Error::bad_input("θ", format!("non-finite value {} at index {i}", theta[i])));
    }
    metadata.insert("learnlaw_format".into(), format.name().into());
    let tensors: Vec<(String, Vec<usize>, Vec<f64>)> = match format {
        ThetaFormat::Learnlaw => vec![(LEARNLAW_KEY.into(), vec![theta.len()], theta.to_vec())],
        ThetaFormat::Official => {
            if let ThetaModel::Transformer(cfg) = model {
                cfg.check_official()?;
                metadata.insert("config".into(), cfg.official_config().to_string());
            } else if let ThetaModel::Perceptron { dim } = model {
                metadata.insert("config".into(), serde_json::json!({ "hidden_size": dim }).to_string());
            }
            metadata.insert("format".into(), "pt".into());
            model.official().into_iter().map(|s| (s.key.clone(), s.shape.clone(), s.values_from(theta))).collect()
        }
    };
    let narrowed: Vec<Vec<f32>> = match precision {
        Precision::F32 => tensors.iter().map(|(_, _, v)| v.iter().map(|&x| x as f32).collect()).collect(),
        Precision::F64 => Vec::new(),
    };
    let views: Vec<Tensor> = tensors
        .iter()
        .enumerate()
        .map(|(i, (name, shape, v))| Tensor {
            name,
            shape: shape.clone(),
            values: match precision {
                Precision::F32 => Values::F32(&narrowed[i]),
                Precision::F64 => Values::F64(v),
            },
        })
        .collect();
    tensor_file::write(path, &views, Some(metadata))
}

/// Reads a θ file of `model`, in either format (told apart by its keys).
pub fn load(path: &Path, model: ThetaModel) -> Result<Theta> {
    let bytes = tensor_file::read(path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, e))?;
    from_tensors(&st, model).map_err(|e| match e {
        // Shape/value errors name only the tensor; add the file so the message stands alone.
        Error::Shape { what, expected, got } => Error::Shape { what: format!("{what} in {}", path.display()), expected, got },
        Error::BadInput { what, problem } => Error::BadInput { what: format!("{what} in {}", path.display()), problem },
        Error::Format { problem, .. } => Error::format(path, problem),
        e => e,
    })
}

fn from_tensors(st: &SafeTensors, model: ThetaModel) -> Result<Theta> {
    let names: BTreeSet<String> = st.names().into_iter().map(String::from).collect();
    let p = model.num_params();
    let learnlaw: Vec<&str> = [LEARNLAW_KEY, LEARNLAW_KEY_THETA0].into_iter().filter(|k| names.contains(*k)).collect();
    if let [key] = learnlaw.as_slice() {
        if names.len() > 1 {
            let others: Vec<&String> = names.iter().filter(|n| n.as_str() != *key).collect();
            return Err(Error::format(
                "",
                format!("holds learnlaw's flat `{key}` and other tensors too ({}); expected only `{key}`", list(&others)),
            ));
        }
        let t = st.tensor(key).map_err(|e| Error::format("", e))?;
        if t.shape() != [p] {
            let expected = format!("[{p}] (the parameters of {})", model.describe());
            return Err(Error::shape(*key, expected, format!("shape {:?}", t.shape())));
        }
        let values = finite_f64(key, &t)?;
        return Ok(Theta { values, format: ThetaFormat::Learnlaw, f64: t.dtype() == Dtype::F64 });
    }
    let slots = model.official();
    // A BaseTransformer's state dict (no `base_model.` prefix) holds the same tensors.
    let unprefixed = matches!(model, ThetaModel::Transformer(_))
        && !names.iter().any(|n| n.starts_with(OFFICIAL_PREFIX))
        && slots.iter().any(|s| names.contains(&s.key[OFFICIAL_PREFIX.len()..]));
    let key_of = |s: &Slot| if unprefixed { s.key[OFFICIAL_PREFIX.len()..].to_string() } else { s.key.clone() };
    let expected: BTreeSet<String> = slots.iter().map(key_of).collect();
    let missing: Vec<String> = slots.iter().map(key_of).filter(|k| !names.contains(k)).collect();
    let unknown: Vec<&String> = names.iter().filter(|n| !expected.contains(*n)).collect();
    let hint = file_model_hint(st, &names, unprefixed, model);
    if !missing.is_empty() || !unknown.is_empty() {
        let mut problem = format!("is not a θ of {} in the official or learnlaw format:", model.describe());
        if !missing.is_empty() {
            problem += &format!(" missing {} of the official module's keys ({})", missing.len(), list(&missing));
        }
        if !unknown.is_empty() {
            problem += &format!("{} unknown keys ({})", if missing.is_empty() { "" } else { ";" }, list(&unknown));
        }
        if missing.len() == expected.len() && learnlaw.is_empty() {
            problem += &format!("; learnlaw's own format is one tensor `{LEARNLAW_KEY}` [{p}]");
        }
        return Err(Error::format("", problem + &hint));
    }
    let mut values = vec![0.0f64; p];
    let mut all_f64 = true;
    for s in &slots {
        let key = key_of(s);
        let t = st.tensor(&key).map_err(|e| Error::format("", e))?;
        if t.shape() != s.shape.as_slice() {
            return Err(Error::shape(key, format!("{:?} for {}", s.shape, model.describe()), format!("shape {:?}{hint}", t.shape())));
        }
        all_f64 &= t.dtype() == Dtype::F64;
        s.write_into(&finite_f64(&key, &t)?, &mut values);
    }
    Ok(Theta { values, format: ThetaFormat::Official, f64: all_f64 })
}

/// "; the file holds a Transformer with …" when the file's official tensors describe another
/// model than `model` (the usual mistake: the search's --hidden or --layers differ); else "".
fn file_model_hint(st: &SafeTensors, names: &BTreeSet<String>, unprefixed: bool, model: ThetaModel) -> String {
    let ThetaModel::Transformer(cfg) = model else { return String::new() };
    let prefix = if unprefixed { "" } else { OFFICIAL_PREFIX };
    let shape = |k: &str| st.tensor(&format!("{prefix}{k}")).ok().map(|t| t.shape().to_vec());
    let (Some(&[vocab, hidden]), Some(&[context, _])) = (shape("word_embed.weight").as_deref(), shape("pos_embed.weight").as_deref())
    else {
        return String::new();
    };
    let block = format!("{prefix}blocks.");
    let layers =
        names.iter().filter_map(|n| n.strip_prefix(&block)?.split('.').next()?.parse::<usize>().ok()).collect::<BTreeSet<_>>().len();
    let ffn = shape("blocks.0.ffn.mlp_1.weight").and_then(|s| s.first().copied());
    if (vocab, hidden, context, layers) == (cfg.vocab_size, cfg.hidden, cfg.context, cfg.layers) && ffn.is_none_or(|f| f == cfg.ffn) {
        return String::new();
    }
    format!(
        "; the file holds {} (set the model with --hidden, --heads, --layers; vocabulary and context come from the data)",
        describe_transformer(vocab, hidden, context, layers, ffn)
    )
}

/// At most five names, then how many more.
fn list<S: AsRef<str>>(names: &[S]) -> String {
    let shown: Vec<&str> = names.iter().take(5).map(|s| s.as_ref()).collect();
    let more = names.len().saturating_sub(5);
    if more > 0 {
        format!("{}, and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// A float tensor's values as f64, all finite (an error names the tensor and the index).
fn finite_f64(name: &str, t: &TensorView) -> Result<Vec<f64>> {
    let b = t.data();
    let values: Vec<f64> = match t.dtype() {
        Dtype::F64 => le(b, f64::from_le_bytes).collect(),
        Dtype::F32 => le(b, |c| f32::from_le_bytes(c) as f64).collect(),
        Dtype::F16 => le(b, |c| half::f16::from_le_bytes(c).to_f64()).collect(),
        Dtype::BF16 => le(b, |c| half::bf16::from_le_bytes(c).to_f64()).collect(),
        dt => return Err(Error::bad_input(name, format!("unsupported dtype {dt:?}; expected F32, F64, F16 or BF16"))),
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::bad_input(name, format!("non-finite value {} at flat index {i}", values[i])));
    }
    Ok(values)
}

/// Re-runs the inner training θ_{t+1} = θ_t − η ∇ Σ_n γ_{t,n} l_n(θ_t) from `theta0` under the
/// policy `gamma` ([T, N]) and calls `visit(t, engine, θ_t)` at each step of `at` (0..=T, in
/// increasing order; others are an error), e.g. to download θ_t or its per-example losses.
/// `step_done` runs after each inner step (for progress display); the replay stops at the last
/// step of `at`.
pub fn replay<E: Engine>(
    e: &mut E,
    theta0: &[E::Real],
    gamma: &[E::Real],
    unroll: Unroll,
    at: &[usize],
    mut visit: impl FnMut(usize, &mut E, &E::Vec) -> Result<()>,
    step_done: &mut dyn FnMut(),
) -> Result<()> {
    unroll.validate()?;
    if let Some(w) = at.windows(2).find(|w| w[0] >= w[1]) {
        return Err(Error::config("steps", format!("{:?}", at), format!("must increase ({} then {})", w[0], w[1])));
    }
    if let Some(&t) = at.iter().find(|&&t| t > unroll.steps) {
        return Err(Error::config("steps", t, format!("must be at most T = {}", unroll.steps)));
    }
    let (p, n) = (e.num_params(), e.num_train());
    if theta0.len() != p || gamma.len() != unroll.steps * n {
        return Err(Error::shape(
            "θ_0 and γ",
            format!("[{p}] and [{}, {n}]", unroll.steps),
            format!("[{}] and {} values", theta0.len(), gamma.len()),
        ));
    }
    let gamma = e.upload(gamma)?;
    let mut theta = e.upload(theta0)?;
    let mut next = e.zeros(p)?;
    let mut wanted = at.iter().copied().peekable();
    for t in 0..=unroll.steps {
        if wanted.next_if_eq(&t).is_some() {
            visit(t, e, &theta)?;
        }
        if t == unroll.steps || wanted.peek().is_none() {
            break;
        }
        e.forward_step(&theta, &gamma, t, unroll.eta, &mut next, None)?;
        std::mem::swap(&mut theta, &mut next);
        step_done();
    }
    Ok(())
}

/// The metadata key that marks a file of per-example losses written by [`save_losses`].
const LOSSES_KEY: &str = "learnlaw_losses";

/// Writes named per-example loss vectors (f64) to `path`, atomically, with `metadata`.
pub fn save_losses(path: &Path, losses: &[(String, Vec<f64>)], mut metadata: HashMap<String, String>) -> Result<()> {
    metadata.insert(LOSSES_KEY.into(), "per-example training losses l_n(θ_t), one tensor [N] per exported θ".into());
    let tensors: Vec<Tensor> =
        losses.iter().map(|(name, v)| Tensor { name: name.as_str(), shape: vec![v.len()], values: Values::F64(v) }).collect();
    tensor_file::write(path, &tensors, Some(metadata))
}

/// Whether the file at `path` was written by [`save`] or [`save_losses`] (so an export may
/// replace it); false for anything else, including a file that cannot be read.
pub fn written_by_learnlaw(path: &Path) -> bool {
    let Ok(bytes) = tensor_file::read(path) else { return false };
    tensor_file::metadata(path, &bytes).is_ok_and(|m| m.contains_key("learnlaw_format") || m.contains_key(LOSSES_KEY))
}

/// θ as f64 (exact for f32 and f64 engines).
pub fn to_f64<R: Real>(v: &[R]) -> Vec<f64> {
    v.iter().map(|x| x.f64()).collect()
}

/// Converts θ for an engine of precision `R` (f64 → f32 rounds; f64 → f64 is exact).
pub fn to_real<R: Real>(v: &[f64]) -> Vec<R> {
    v.iter().map(|&x| R::of(x)).collect()
}

/// Metadata describing an exported θ: its task, step t of T, and learnlaw's model config.
pub fn export_metadata(task: &str, step: usize, steps: usize, model: Option<&TransformerConfig>) -> HashMap<String, String> {
    let mut m = BTreeMap::from([
        ("learnlaw_task".to_string(), task.to_string()),
        ("learnlaw_step".to_string(), step.to_string()),
        ("learnlaw_steps".to_string(), steps.to_string()),
    ]);
    if let Some(cfg) = model {
        m.insert("learnlaw_model".into(), serde_json::to_string(cfg).unwrap_or_default());
    }
    m.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{PerceptronData, PerceptronRecipe};
    use crate::perceptron::CpuPerceptron;
    use crate::transformer::{init_params, AttentionScale};

    fn cfg() -> TransformerConfig {
        TransformerConfig { vocab_size: 11, hidden: 4, heads: 2, layers: 2, context: 3, ffn: 16, attention_scale: AttentionScale::Hidden }
    }

    fn theta(cfg: &TransformerConfig) -> Vec<f64> {
        init_params(cfg, 3).into_iter().map(f64::from).collect()
    }

    fn write_raw(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
        let t: Vec<Tensor> = tensors.iter().map(|(n, s, v)| Tensor { name: n, shape: s.clone(), values: Values::F32(v) }).collect();
        tensor_file::write(path, &t, None).unwrap();
    }

    #[test]
    fn official_and_learnlaw_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, theta) = (cfg(), theta(&cfg()));
        let model = ThetaModel::Transformer(&cfg);
        for (format, precision) in [(ThetaFormat::Official, Precision::F32), (ThetaFormat::Learnlaw, Precision::F32)] {
            let path = dir.path().join(format!("{}.safetensors", format.name()));
            save(&path, model, &theta, format, precision, HashMap::new()).unwrap();
            assert!(written_by_learnlaw(&path));
            let back = load(&path, model).unwrap();
            assert_eq!((back.values, back.format, back.f64), (theta.clone(), format, false));
        }
        // f64 values that f32 cannot hold stay exact in learnlaw's format.
        let fine: Vec<f64> = theta.iter().map(|v| v + 1e-12).collect();
        let path = dir.path().join("f64.safetensors");
        save(&path, model, &fine, ThetaFormat::Learnlaw, Precision::F64, HashMap::new()).unwrap();
        let back = load(&path, model).unwrap();
        assert_eq!((back.values, back.f64), (fine, true));
    }

    #[test]
    fn a_base_transformer_state_dict_without_the_prefix_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, theta) = (cfg(), theta(&cfg()));
        let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = cfg
            .params()
            .map(|p| {
                let v: Vec<f32> = p.to_official(&theta).into_iter().map(|x| x as f32).collect();
                (p.official[OFFICIAL_PREFIX.len()..].to_string(), p.official_shape(), v)
            })
            .collect();
        let path = dir.path().join("base.safetensors");
        write_raw(&path, &tensors.iter().map(|(n, s, v)| (n.as_str(), s.clone(), v.clone())).collect::<Vec<_>>());
        assert_eq!(load(&path, ThetaModel::Transformer(&cfg)).unwrap().values, theta);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg();
        let model = ThetaModel::Transformer(&cfg);
        let path = dir.path().join("t.safetensors");
        let err = |path: &Path, model: ThetaModel| load(path, model).unwrap_err().to_string();

        save(&path, model, &theta(&cfg), ThetaFormat::Official, Precision::F32, HashMap::new()).unwrap();
        // Another model: the shapes say which one the file holds.
        let wider = TransformerConfig { hidden: 8, ffn: 32, ..cfg.clone() };
        let e = err(&path, ThetaModel::Transformer(&wider));
        assert!(
            e.contains("base_model.word_embed.weight") && e.contains("[11, 8]") && e.contains("the file holds") && e.contains("hidden 4"),
            "{e}"
        );
        assert!(e.contains("t.safetensors"), "names the file: {e}");
        let deeper = TransformerConfig { layers: 3, ..cfg.clone() };
        let e = err(&path, ThetaModel::Transformer(&deeper));
        assert!(e.contains("missing 10") && e.contains("base_model.blocks.2.attn.w_q.weight") && e.contains("2 layers"), "{e}");
        let e = err(&path, ThetaModel::Perceptron { dim: 4 });
        assert!(e.contains("missing 1") && e.contains("linear.weight") && e.contains("unknown keys"), "{e}");

        // A NaN, an unknown key, a wrong dtype.
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> =
            cfg.params().map(|p| (p.official.clone(), p.official_shape(), vec![0.5; p.range.len()])).collect();
        tensors[3].2[1] = f32::NAN;
        fn raw(t: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<(&str, Vec<usize>, Vec<f32>)> {
            t.iter().map(|(n, s, v)| (n.as_str(), s.clone(), v.clone())).collect()
        }
        write_raw(&path, &raw(&tensors));
        let e = err(&path, model);
        assert!(e.contains("base_model.ln_end.weight") && e.contains("non-finite value NaN at flat index 1"), "{e}");
        tensors[3].2[1] = 1.0;
        tensors.push(("base_model.extra".into(), vec![1], vec![0.0]));
        write_raw(&path, &raw(&tensors));
        let e = err(&path, model);
        assert!(e.contains("unknown keys (base_model.extra)") && !e.contains("missing"), "{e}");

        let ints = safetensors::tensor::TensorView::new(Dtype::I32, vec![4], &[0u8; 16]).unwrap();
        safetensors::serialize_to_file([("linear.weight", ints)], None, &path).unwrap();
        let e = err(&path, ThetaModel::Perceptron { dim: 4 });
        assert!(e.contains("shape") && e.contains("[1, 4]"), "{e}");
        let ints = safetensors::tensor::TensorView::new(Dtype::I32, vec![1, 4], &[0u8; 16]).unwrap();
        safetensors::serialize_to_file([("linear.weight", ints)], None, &path).unwrap();
        let e = err(&path, ThetaModel::Perceptron { dim: 4 });
        assert!(e.contains("unsupported dtype I32"), "{e}");

        // learnlaw's flat θ: its length, and nothing beside it.
        write_raw(&path, &[("theta", vec![5], vec![0.0; 5])]);
        let e = err(&path, ThetaModel::Perceptron { dim: 4 });
        assert!(e.contains("[4] (the parameters of the perceptron on D = 4 inputs)"), "{e}");
        write_raw(&path, &[("theta0", vec![4], vec![0.0; 4]), ("x_train", vec![1], vec![0.0])]);
        let e = err(&path, ThetaModel::Perceptron { dim: 4 });
        assert!(e.contains("other tensors too (x_train)"), "{e}");
        write_raw(&path, &[("theta0", vec![4], vec![0.25; 4])]);
        assert_eq!(load(&path, ThetaModel::Perceptron { dim: 4 }).unwrap().values, vec![0.25; 4]);

        // Saving checks θ too.
        let e = save(&path, model, &[0.0; 3], ThetaFormat::Learnlaw, Precision::F32, HashMap::new()).unwrap_err().to_string();
        assert!(e.contains("[3]") || e.contains("3"), "{e}");
        let headdim = TransformerConfig { attention_scale: AttentionScale::HeadDim, ..cfg.clone() };
        let e = save(&path, ThetaModel::Transformer(&headdim), &theta(&cfg), ThetaFormat::Official, Precision::F32, HashMap::new());
        assert!(e.unwrap_err().to_string().contains("1/√hidden"));
    }

    #[test]
    fn replay_reaches_the_steps_asked_for() {
        let data = PerceptronData::generate(&PerceptronRecipe { dim: 5, n_train: 12, n_dev: 4, n_test: 4, ..Default::default() }).unwrap();
        let mut e = CpuPerceptron::<f64>::new(&data).unwrap();
        let unroll = Unroll { steps: 6, eta: 0.3 };
        let theta0: Vec<f64> = (0..5).map(|i| 0.1 * i as f64 - 0.2).collect();
        let gamma = vec![1.0 / 12.0; 6 * 12];
        // By hand: θ_t after t forward steps.
        let (g, mut th) = (e.upload(&gamma).unwrap(), e.upload(&theta0).unwrap());
        let mut next = e.zeros(5).unwrap();
        let mut by_hand = vec![theta0.clone()];
        for t in 0..6 {
            e.forward_step(&th, &g, t, unroll.eta, &mut next, None).unwrap();
            std::mem::swap(&mut th, &mut next);
            by_hand.push(e.download(&th).unwrap());
        }
        let mut seen = Vec::new();
        let mut steps = 0;
        replay(
            &mut e,
            &theta0,
            &gamma,
            unroll,
            &[0, 2, 6],
            |t, e, th| {
                seen.push((t, e.download(th)?));
                Ok(())
            },
            &mut || steps += 1,
        )
        .unwrap();
        assert_eq!(seen, vec![(0, by_hand[0].clone()), (2, by_hand[2].clone()), (6, by_hand[6].clone())]);
        assert_eq!(steps, 6);
        // It stops at the last step asked for.
        let mut steps = 0;
        replay(&mut e, &theta0, &gamma, unroll, &[0], |_, _, _| Ok(()), &mut || steps += 1).unwrap();
        assert_eq!(steps, 0);
        for bad in [&[2, 2][..], &[3, 1], &[7]] {
            assert!(
                matches!(replay(&mut e, &theta0, &gamma, unroll, bad, |_, _, _| Ok(()), &mut || {}), Err(Error::Config { .. })),
                "{bad:?}"
            );
        }
    }
}
