//! The tasks the CLI runs (perceptron, Transformer LM): their data files, model settings, θ_0 and
//! the engine for each backend.
use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use learnlaw_core::data::{init_theta, PerceptronData};
use learnlaw_core::host_engine::{HostEngine, OnHost};
use learnlaw_core::perceptron::CpuPerceptron;
use learnlaw_core::search::OuterOptimizer;
use learnlaw_core::text::{TextRecipe, TokenData};
use learnlaw_core::theta::{self, ThetaModel};
use learnlaw_core::transformer::{init_params, AttentionScale, CpuTransformer, TransformerConfig};

use crate::Backend;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TaskKind {
    /// Linear classification (paper §4); data from `learnlaw data perceptron`.
    Perceptron,
    /// A small Transformer language model (paper §5); data from `learnlaw data text`.
    Transformer,
}

impl TaskKind {
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Perceptron => "perceptron",
            TaskKind::Transformer => "transformer",
        }
    }
    pub fn parse(name: &str) -> Result<Self> {
        TaskKind::from_str(name, true).map_err(|e| anyhow::anyhow!("task {name:?}: {e}"))
    }
    fn other(self) -> Self {
        match self {
            TaskKind::Perceptron => TaskKind::Transformer,
            TaskKind::Transformer => TaskKind::Perceptron,
        }
    }
    /// Whether `path` holds this task's data.
    fn reads(self, path: &Path) -> bool {
        match self {
            TaskKind::Perceptron => PerceptronData::load(path).is_ok(),
            TaskKind::Transformer => TokenData::load(path).is_ok(),
        }
    }
    /// Loads this task's data with `load`; a file of the other task's data is the usual mistake of
    /// a wrong --task, so that is what the error then says.
    fn load_data<D>(self, path: &Path, load: impl FnOnce(&Path) -> learnlaw_core::Result<D>) -> Result<D> {
        load(path).map_err(|e| {
            let err = anyhow::Error::new(e).context(format!("loading {} data from {}", self.name(), path.display()));
            let other = self.other();
            if !other.reads(path) {
                return err;
            }
            err.context(format!(
                "{} holds {} data, not {} data: use --task {} (or `reproduce {}`)",
                path.display(),
                other.name(),
                self.name(),
                other.name(),
                other.name()
            ))
        })
    }
    /// Inner steps T, inner learning rate η and outer epochs when not given: the paper's for the
    /// perceptron; for the Transformer, a scaled run that takes minutes on a 2-core CPU.
    pub fn default_unroll(self) -> (usize, f64, usize) {
        match self {
            TaskKind::Perceptron => (2000, 0.1, 500),
            TaskKind::Transformer => (200, 0.5, 4),
        }
    }
    /// The outer learning rate when not given: for SGD the official scripts' per task (0.001 for
    /// the perceptron, 0.4 for the Transformer); the other optimisers' steps are scale-free.
    pub fn default_outer_lr(self, optimizer: OuterOptimizer) -> f64 {
        match (self, optimizer) {
            (TaskKind::Transformer, OuterOptimizer::Sgd) => 0.4,
            _ => optimizer.default_lr(),
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Scale {
    /// 1/√hidden, as the official code (and so the paper's numbers).
    Hidden,
    /// 1/√head_dim, the usual Transformer choice.
    HeadDim,
}

/// The Transformer's sizes (its vocabulary and context come from the data).
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Transformer hidden width.
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// Transformer attention heads.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Transformer FFN width (default 4 × hidden).
    #[arg(long)]
    pub ffn: Option<usize>,
    /// How attention scores are scaled.
    #[arg(long, value_enum, default_value_t = Scale::Hidden)]
    pub attention_scale: Scale,
}

impl ModelArgs {
    pub fn config(&self, data: &TokenData) -> TransformerConfig {
        TransformerConfig {
            vocab_size: data.vocab_size,
            hidden: self.hidden,
            heads: self.heads,
            layers: self.layers,
            context: data.seq_len - 1,
            ffn: self.ffn.unwrap_or(4 * self.hidden),
            attention_scale: match self.attention_scale {
                Scale::Hidden => AttentionScale::Hidden,
                Scale::HeadDim => AttentionScale::HeadDim,
            },
        }
    }
}

/// The text data recipe (the paper's training noise included); unset sizes take the defaults.
#[derive(Args, Clone, Debug)]
pub struct TextArgs {
    /// Training sequences N (default 512).
    #[arg(long)]
    pub train: Option<usize>,
    /// Desired-set (dev) sequences K (default 128).
    #[arg(long)]
    pub dev: Option<usize>,
    /// Test sequences (default 256; 0 makes a file for a search alone: `eval` needs a test set).
    #[arg(long)]
    pub test: Option<usize>,
    /// Context length: tokens per sequence are this + 1 (default 32).
    #[arg(long)]
    pub context: Option<usize>,
    /// BPE vocabulary size, UNK and PAD included (default 512).
    #[arg(long)]
    pub vocab: Option<usize>,
    /// Seed of the generated stories and of the noise.
    #[arg(long, default_value_t = 20)]
    pub data_seed: u64,
    /// Fraction of training sequences perturbed (the paper: 0.5).
    #[arg(long, default_value_t = 0.5)]
    pub noise_fraction: f64,
    /// Operations per perturbed sequence (the paper: 20).
    #[arg(long, default_value_t = 20)]
    pub noise_ops: usize,
    /// Use this corpus (plain text, one story per line, or JSONL with a `text` field) instead of
    /// generated stories: its last dev + test stories become the dev and test sets.
    #[arg(long)]
    pub corpus: Option<std::path::PathBuf>,
}

impl TextArgs {
    /// The recipe, on top of `base` (the scaled default or the paper's sizes).
    pub fn recipe(&self, paper: bool) -> TextRecipe {
        let base = if paper { TextRecipe::paper() } else { TextRecipe { n_train: 512, n_dev: 128, n_test: 256, ..TextRecipe::default() } };
        TextRecipe {
            n_train: self.train.unwrap_or(base.n_train),
            n_dev: self.dev.unwrap_or(base.n_dev),
            n_test: self.test.unwrap_or(base.n_test),
            seq_len: self.context.map_or(base.seq_len, |c| c + 1),
            vocab_size: self.vocab.unwrap_or(base.vocab_size),
            seed: self.data_seed,
            noise_fraction: self.noise_fraction,
            noise_ops: self.noise_ops,
        }
    }

    /// Token data and its tokenizer, from the corpus or from generated stories.
    pub fn build(&self, paper: bool) -> Result<(TokenData, learnlaw_core::text::Bpe)> {
        let recipe = self.recipe(paper);
        match &self.corpus {
            None => Ok(TokenData::generate(&recipe)?),
            Some(path) => {
                let texts = learnlaw_core::text::read_corpus(path).with_context(|| format!("reading {}", path.display()))?;
                let held = recipe.n_dev + recipe.n_test;
                if texts.len() <= held {
                    bail!("{} has {} stories; dev + test alone need {held}", path.display(), texts.len());
                }
                let (train, rest) = texts.split_at(texts.len() - held);
                let (dev, test) = rest.split_at(recipe.n_dev);
                Ok(TokenData::from_texts(train, dev, test, &recipe)?)
            }
        }
    }
}

/// A task's data, split for the search (with the held-out part of the desired set, if any).
pub enum Task {
    Perceptron { data: PerceptronData, held: Option<PerceptronData> },
    Transformer { model: TransformerConfig, data: TokenData, held: Option<TokenData> },
}

impl Task {
    /// The task of a new search: a Transformer's model takes its vocabulary and context from the data.
    pub fn for_search(kind: TaskKind, path: &Path, model: Option<&ModelArgs>) -> Result<Task> {
        match (kind, model) {
            (TaskKind::Perceptron, _) => Task::load(kind, path, None),
            (TaskKind::Transformer, None) => bail!("a Transformer search needs its model settings"),
            (TaskKind::Transformer, Some(model)) => {
                let data = kind.load_data(path, TokenData::load)?;
                let model = model.config(&data);
                model.validate()?;
                Ok(Task::Transformer { model, data, held: None })
            }
        }
    }

    pub fn model(&self) -> Option<&TransformerConfig> {
        match self {
            Task::Perceptron { .. } => None,
            Task::Transformer { model, .. } => Some(model),
        }
    }

    pub fn load(kind: TaskKind, path: &Path, model: Option<&TransformerConfig>) -> Result<Task> {
        Ok(match kind {
            TaskKind::Perceptron => Task::Perceptron { data: kind.load_data(path, PerceptronData::load)?, held: None },
            TaskKind::Transformer => {
                let data = kind.load_data(path, TokenData::load)?;
                let model = model.cloned().context("a Transformer run needs its model settings")?;
                model.validate()?;
                Task::Transformer { model, data, held: None }
            }
        })
    }

    /// Holds out the last ⌈F·K⌉ desired examples from the search; returns (held-out, all) sizes.
    pub fn hold_out(&mut self, fraction: f64) -> Result<(usize, usize)> {
        Ok(match self {
            Task::Perceptron { data, held } => {
                let all = data.dev.len();
                let (s, h) = data.split_dev(fraction)?;
                *data = s;
                let n = h.dev.len();
                *held = Some(h);
                (n, all)
            }
            Task::Transformer { data, held, .. } => {
                let all = data.n_dev();
                let (s, h) = data.split_dev(fraction)?;
                *data = s;
                let n = h.n_dev();
                *held = Some(h);
                (n, all)
            }
        })
    }

    /// The model whose θ the task trains (for reading and writing θ files).
    pub fn theta_model(&self) -> ThetaModel<'_> {
        match self {
            Task::Perceptron { data, .. } => ThetaModel::Perceptron { dim: data.dim },
            Task::Transformer { model, .. } => ThetaModel::Transformer(model),
        }
    }

    /// θ_0: read from `file` (official or learnlaw format; f64 values stay f64), else a
    /// perceptron data file's `theta0`, else PyTorch's default initialisation seeded with `seed`.
    pub fn theta0(&self, seed: u64, file: Option<&Path>) -> Result<Vec<f64>> {
        if let Some(path) = file {
            let t = theta::load(path, self.theta_model()).with_context(|| format!("reading θ_0 from {}", path.display()))?;
            return Ok(t.values);
        }
        let widen = |v: Vec<f32>| v.into_iter().map(f64::from).collect();
        Ok(match self {
            Task::Perceptron { data, .. } => widen(data.theta0.clone().unwrap_or_else(|| init_theta(data.dim, seed))),
            Task::Transformer { model, .. } => widen(init_params(model, seed)),
        })
    }

    /// Test examples (0 in a search-only token file).
    pub fn num_test(&self) -> usize {
        match self {
            Task::Perceptron { data, .. } => data.test.len(),
            Task::Transformer { data, .. } => data.n_test(),
        }
    }
}

/// Runs `$body` with `$e` bound to the chosen backend's engine for the task's data and `$h` to
/// `Some` engine of the same kind for its held-out part (if any).
macro_rules! with_engine {
    ($backend:expr, $task:expr, |$e:ident, $h:ident| $body:expr) => {
        match $task {
            Task::Perceptron { data, held } => match $backend {
                Backend::Cpu => with_engine!(@arm data, held, |d| CpuPerceptron::<f32>::new(d), |$e, $h| $body),
                Backend::CpuF64 => with_engine!(@arm data, held, |d| CpuPerceptron::<f64>::new(d), |$e, $h| $body),
                Backend::CpuBf16 => with_engine!(@arm data, held, |d| CpuPerceptron::<f32, learnlaw_core::lanes::bf16>::new(d), |$e, $h| $body),
                Backend::Wgpu | Backend::WgpuF16 => {
                    let opts = learnlaw_wgpu::Options { storage: $backend.x_storage(), ..Default::default() };
                    with_engine!(@arm data, held, |d| learnlaw_wgpu::WgpuPerceptron::with_options(d, &opts), |$e, $h| $body)
                }
                Backend::Cuda | Backend::CudaBf16 | Backend::CudaF16 => {
                    let opts = learnlaw_cuda::Options { storage: $backend.x_storage(), ..Default::default() };
                    with_engine!(@arm data, held, |d| learnlaw_cuda::CudaPerceptron::with_options(d, &opts), |$e, $h| $body)
                }
            },
            Task::Transformer { model, data, held } => match $backend {
                Backend::Cpu => with_engine!(@arm data, held, |d| CpuTransformer::<f32>::new(model, d), |$e, $h| $body),
                Backend::CpuF64 => with_engine!(@arm data, held, |d| CpuTransformer::<f64>::new(model, d), |$e, $h| $body),
                Backend::Wgpu => with_engine!(@arm data, held, |d| learnlaw_wgpu::WgpuTransformer::new(model, d), |$e, $h| $body),
                Backend::Cuda => with_engine!(@arm data, held, |d| learnlaw_cuda::CudaTransformer::new(model, d), |$e, $h| $body),
                Backend::CudaBf16 => {
                    with_engine!(@arm data, held, |d| learnlaw_cuda::CudaTransformer::new(model, d).map(|e| e.with_bf16_gemm()), |$e, $h| $body)
                }
                other => anyhow::bail!(
                    "the Transformer task runs on the cpu, cpu-f64, wgpu, cuda and cuda-bf16 backends, not {}",
                    clap::ValueEnum::to_possible_value(&other).map_or_else(|| format!("{other:?}"), |v| v.get_name().to_string())
                ),
            },
        }
    };
    (@arm $data:expr, $held:expr, |$d:ident| $make:expr, |$e:ident, $h:ident| $body:expr) => {{
        let make = |$d| $make;
        #[allow(unused_mut)]
        let mut $e = make(&*$data)?;
        #[allow(unused_mut)]
        let mut $h = match $held.as_ref() {
            Some(d) => Some(make(d)?),
            None => None,
        };
        $body
    }};
}
pub(crate) use with_engine;

/// The engine of `backend` for the task's data, behind the object-safe host-array interface (for
/// a program that brings its own arrays). Not `Send`: a CUDA engine stays on the thread that made it.
pub fn host_engine(backend: Backend, task: &Task) -> Result<Box<dyn HostEngine>> {
    Ok(with_engine!(backend, task, |e, _held| Box::new(OnHost(e)) as Box<dyn HostEngine>))
}
