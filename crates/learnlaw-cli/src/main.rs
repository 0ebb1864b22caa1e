//! `learnlaw`: generate data, search for a near-optimal learning policy, evaluate it.
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use learnlaw_core::data::{init_theta, PerceptronData, PerceptronRecipe};
use learnlaw_core::perceptron::CpuPerceptron;
use learnlaw_core::run::{self, Evaluation, RunConfig, RunDir};
use learnlaw_core::search::{OuterOptimizer, SearchConfig};
use learnlaw_core::Engine;

#[derive(Parser)]
#[command(name = "learnlaw", version, about = "Near-optimal learning policies (the Learning Law) by differentiating through training")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a data set.
    #[command(subcommand)]
    Data(DataCommand),
    /// Search for a near-optimal policy (resumes if RUN_DIR holds the same search).
    Search(SearchArgs),
    /// Retrain with the run's policy and the constant policy; report AR, AUC and the Learning Law.
    Eval(EvalArgs),
    /// Data, search and evaluation with the paper's settings in one go.
    #[command(subcommand)]
    Reproduce(ReproduceCommand),
}

#[derive(Subcommand)]
enum DataCommand {
    /// The paper's teacher–student perceptron data (App. D), as safetensors.
    Perceptron {
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        recipe: RecipeArgs,
    },
}

#[derive(Args, Clone)]
struct RecipeArgs {
    /// Input dimension D.
    #[arg(long, default_value_t = 128)]
    dim: usize,
    /// Training examples N.
    #[arg(long, default_value_t = 4096)]
    train: usize,
    /// Desired-set (dev) examples K.
    #[arg(long, default_value_t = 512)]
    dev: usize,
    /// Test examples.
    #[arg(long, default_value_t = 512)]
    test: usize,
    /// Data seed (the official scripts' --seed-data).
    #[arg(long, default_value_t = 20)]
    data_seed: u64,
    /// Probability of flipping each training label (0: the paper's recipe as printed).
    #[arg(long, default_value_t = 0.0)]
    label_noise: f64,
}

impl RecipeArgs {
    fn recipe(&self) -> PerceptronRecipe {
        PerceptronRecipe {
            dim: self.dim,
            n_train: self.train,
            n_dev: self.dev,
            n_test: self.test,
            seed: self.data_seed,
            train_label_noise: self.label_noise,
            ..PerceptronRecipe::default()
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Backend {
    /// The CPU backend in f32 (fast, multithreaded).
    Cpu,
    /// The CPU backend in f64 (reference precision; slower).
    CpuF64,
    /// The WGSL kernels through wgpu (Vulkan/Metal/DX12, or lavapipe on a CPU), f32.
    Wgpu,
    /// The WGSL kernels with the inputs X stored as f16 (f32 accumulation); needs an adapter with
    /// SHADER_F16.
    WgpuF16,
    /// The CUDA kernels (cudarc, NVRTC at first use) on an NVIDIA GPU, f32; needs the driver and
    /// libnvrtc.so.13 on the library path.
    Cuda,
}

#[derive(Args, Clone)]
struct SearchSettings {
    /// Inner training steps T.
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    /// Inner learning rate η.
    #[arg(long, default_value_t = 0.1)]
    eta: f64,
    /// Outer epochs E.
    #[arg(long, default_value_t = 500)]
    epochs: usize,
    /// Outer learning rate, decayed linearly to 0 over the epochs. SGD: on J = (1/T) Σ L_dev (the
    /// official code's; the paper's ε equals lr/T), default 0.001. exp-grad: on the normalised
    /// gradient g/max|g|, default 1. adam: in units of 1/N per entry, default 0.1.
    #[arg(long)]
    outer_lr: Option<f64>,
    /// The outer optimiser (sgd: the paper's).
    #[arg(long, value_enum, default_value_t = Optimizer::Sgd)]
    optimizer: Optimizer,
    /// Hold out this fraction of the desired set (its last ⌈F·K⌉ examples) from the search and
    /// keep the policy of lowest held-out J in best_policy.safetensors (early stopping).
    #[arg(long)]
    holdout: Option<f64>,
    /// Pull toward the constant policy: adds STRENGTH·‖γ − 1/N‖² to the objective.
    #[arg(long, value_names = ["KIND", "STRENGTH"], num_args = 2)]
    reg: Option<Vec<String>>,
    /// Keep θ every k inner steps and recompute in between (default: keep all when they fit).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Seed of θ_0 when the data file has no `theta0` (the official scripts' --seed).
    #[arg(long, default_value_t = 10)]
    init_seed: u64,
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    backend: Backend,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Optimizer {
    /// SGD then projection onto the simplex (the paper's).
    Sgd,
    /// Exponentiated gradient (mirror descent on the simplex).
    ExpGrad,
    /// Adam then projection onto the simplex.
    Adam,
}

impl SearchSettings {
    fn search_config(&self) -> Result<SearchConfig> {
        let optimizer = match self.optimizer {
            Optimizer::Sgd => OuterOptimizer::Sgd,
            Optimizer::ExpGrad => OuterOptimizer::ExpGrad,
            Optimizer::Adam => OuterOptimizer::Adam,
        };
        let reg_l2 = match self.reg.as_deref() {
            None => None,
            Some([kind, strength]) if kind.eq_ignore_ascii_case("l2") => {
                Some(strength.parse::<f64>().with_context(|| format!("--reg L2 strength {strength:?}"))?)
            }
            Some(other) => bail!("--reg {other:?}: expected `--reg L2 STRENGTH`"),
        };
        let cfg = SearchConfig {
            steps: self.steps,
            eta: self.eta,
            epochs: self.epochs,
            outer_lr: self.outer_lr.unwrap_or(optimizer.default_lr()),
            optimizer,
            checkpoint_every: self.checkpoint_every,
            holdout: self.holdout,
            reg_l2,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Args)]
struct SearchArgs {
    /// Data file (safetensors: x_train, y_train, x_dev, y_dev, x_test, y_test, optional theta0).
    #[arg(long)]
    data: PathBuf,
    /// Run directory.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    settings: SearchSettings,
}

#[derive(Args)]
struct EvalArgs {
    run_dir: PathBuf,
    /// Backend for the retraining (default: the one the search used).
    #[arg(long, value_enum)]
    backend: Option<Backend>,
}

#[derive(Subcommand)]
enum ReproduceCommand {
    /// The perceptron experiment (paper §4): T = 2000, η = 0.1, 500 epochs at outer lr 0.001.
    Perceptron {
        #[arg(long, default_value = "runs/perceptron")]
        out: PathBuf,
        /// Use this data file instead of generating the paper's recipe into RUN_DIR/data.safetensors.
        #[arg(long)]
        data: Option<PathBuf>,
        #[command(flatten)]
        recipe: RecipeArgs,
        #[command(flatten)]
        settings: SearchSettings,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Data(DataCommand::Perceptron { out, recipe }) => {
            let data = PerceptronData::generate(&recipe.recipe())?;
            data.save(&out)?;
            println!(
                "wrote {} (D={}, train {}, dev {}, test {})",
                out.display(),
                data.dim,
                data.train.len(),
                data.dev.len(),
                data.test.len()
            );
        }
        Command::Search(args) => {
            search(&args.data, &args.out, &args.settings)?;
        }
        Command::Eval(args) => {
            evaluate(&args.run_dir, args.backend)?;
        }
        Command::Reproduce(ReproduceCommand::Perceptron { out, data, recipe, settings }) => {
            let data = match data {
                Some(path) => path,
                None => {
                    let path = out.join("data.safetensors");
                    let generated = PerceptronData::generate(&recipe.recipe())?;
                    if !path.exists() {
                        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
                        generated.save(&path)?;
                        println!("generated the paper's perceptron data into {}", path.display());
                    } else if load_data(&path)? != generated {
                        // A resumed run must not silently ignore changed data options.
                        bail!("{} holds data from other data options; use another --out", path.display());
                    }
                    path
                }
            };
            search(&data, &out, &settings)?;
            evaluate(&out, Some(settings.backend))?;
        }
    }
    Ok(())
}

fn load_data(path: &Path) -> Result<PerceptronData> {
    PerceptronData::load(path).with_context(|| format!("loading data from {}", path.display()))
}

fn theta0(data: &PerceptronData, seed: u64) -> Vec<f32> {
    data.theta0.clone().unwrap_or_else(|| init_theta(data.dim, seed))
}

/// Runs `$body` with `$e` bound to the chosen backend's engine for `$data` (and, in the second
/// form, `$h` to `Some` engine of the same backend for `$held`, an `Option<&PerceptronData>`).
macro_rules! with_engine {
    ($backend:expr, $data:expr, |$e:ident| $body:expr) => {
        with_engine!($backend, $data, None::<&PerceptronData>, |$e, _held| $body)
    };
    ($backend:expr, $data:expr, $held:expr, |$e:ident, $h:ident| $body:expr) => {
        match $backend {
            Backend::Cpu => with_engine!(@arm $data, $held, |d| CpuPerceptron::<f32>::new(d), |$e, $h| $body),
            Backend::CpuF64 => with_engine!(@arm $data, $held, |d| CpuPerceptron::<f64>::new(d), |$e, $h| $body),
            Backend::Wgpu => with_engine!(@arm $data, $held, |d| learnlaw_wgpu::WgpuPerceptron::new(d), |$e, $h| $body),
            Backend::WgpuF16 => {
                let opts = learnlaw_wgpu::Options { storage: learnlaw_wgpu::Storage::F16, ..Default::default() };
                with_engine!(@arm $data, $held, |d| learnlaw_wgpu::WgpuPerceptron::with_options(d, &opts), |$e, $h| $body)
            }
            Backend::Cuda => with_engine!(@arm $data, $held, |d| learnlaw_cuda::CudaPerceptron::new(d), |$e, $h| $body),
        }
    };
    (@arm $data:expr, $held:expr, |$d:ident| $make:expr, |$e:ident, $h:ident| $body:expr) => {{
        let make = |$d: &PerceptronData| $make;
        let mut $e = make($data)?;
        #[allow(unused_mut)]
        let mut $h = match $held {
            Some(d) => Some(make(d)?),
            None => None,
        };
        $body
    }};
}

fn search(data_path: &Path, out: &Path, settings: &SearchSettings) -> Result<()> {
    let data = load_data(data_path)?;
    let data_abs = std::fs::canonicalize(data_path).with_context(|| format!("resolving {}", data_path.display()))?;
    let cfg = RunConfig {
        task: "perceptron".into(),
        backend: settings.backend.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default(),
        data: data_abs,
        data_fingerprint: run::fingerprint(data_path)?,
        init_seed: settings.init_seed,
        search: settings.search_config()?,
    };
    let dir = RunDir::new(out);
    let theta0 = theta0(&data, settings.init_seed);
    let (search_data, heldout_data) = match cfg.search.holdout {
        Some(f) => {
            let (s, h) = data.split_dev(f)?;
            println!("holding out {} of the {} dev examples", h.dev.len(), data.dev.len());
            (s, Some(h))
        }
        None => (data, None),
    };
    let bar = ProgressBar::new(cfg.search.epochs as u64);
    bar.set_style(ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} epochs {msg} ({elapsed} < {eta})")?.progress_chars("=> "));
    let history = with_engine!(settings.backend, &search_data, heldout_data.as_ref(), |e, heldout| {
        bar.set_prefix(format!("search on {}", e.name()));
        run::search_with_holdout(&mut e, heldout.as_mut(), &dir, &cfg, &theta0, |ev| {
            bar.set_position(ev.epoch as u64);
            if let (Some(first), Some(j)) = (ev.history.j.first(), ev.history.j.last()) {
                bar.set_message(format!("J {first:.5} → {j:.5}"));
            }
            ControlFlow::Continue(())
        })?
    });
    bar.finish();
    let (first, last) = (history.j[0], history.j[history.j.len() - 1]);
    println!(
        "search done: J {first:.6} → {last:.6} ({:+.2}%), CR {:.3} → {:.3}, {:.3} s per outer epoch; policy in {}",
        100.0 * (last - first) / first,
        history.cr[0],
        history.cr[history.cr.len() - 1],
        history.seconds_per_epoch(),
        dir.policy_path().display()
    );
    if let Some(best) = history.best_epoch() {
        println!(
            "held-out J {:.6} → {:.6} (best {:.6} at epoch {best}, in {})",
            history.heldout_j[0],
            history.heldout_j[history.heldout_j.len() - 1],
            history.heldout_j[best],
            dir.best_policy_path().display()
        );
    }
    Ok(())
}

fn evaluate(run_dir: &Path, backend: Option<Backend>) -> Result<Evaluation> {
    let dir = RunDir::new(run_dir);
    let cfg = dir.read_config().with_context(|| format!("{} is not a run directory", run_dir.display()))?;
    let data = load_data(&cfg.data)?;
    if run::fingerprint(&cfg.data)? != cfg.data_fingerprint {
        bail!("{} changed since the search ran (fingerprint mismatch)", cfg.data.display());
    }
    let backend = match backend {
        Some(b) => b,
        None => Backend::from_str(&cfg.backend, true).map_err(|e| anyhow::anyhow!("run config backend: {e}"))?,
    };
    let theta0 = theta0(&data, cfg.init_seed);
    let ev = with_engine!(backend, &data, |e| run::evaluate(&mut e, &dir, &theta0)?);
    print_evaluation(&ev, cfg.search.steps);
    let summary = dir.read_summary()?;
    if let Some(best) = summary.best_epoch {
        let hj = &summary.heldout_j;
        println!(
            "held-out J {:.6} (epoch 0) → {:.6} (epoch {}), best {:.6} at epoch {best}",
            hj[0],
            hj[hj.len() - 1],
            hj.len() - 1,
            hj[best]
        );
    }
    if let Some(epoch) = summary.evaluated_epoch {
        println!("evaluated the policy of epoch {epoch}{}", if summary.best_epoch.is_some() { " (best by held-out J)" } else { "" });
    }
    Ok(ev)
}

fn print_evaluation(ev: &Evaluation, steps: usize) {
    let ar = |a: Option<f64>| a.map_or("not reached".to_string(), |a| format!("{a:.2}×"));
    println!("                      constant    policy");
    println!("AUC dev          {:>13.6} {:>9.6}", ev.auc_dev_constant, ev.auc_dev_policy);
    println!("AUC test         {:>13.6} {:>9.6}", ev.auc_test_constant, ev.auc_test_policy);
    println!("final test loss  {:>13.6} {:>9.6}", ev.final_test_constant, ev.final_test_policy);
    println!("mean SIM         {:>13.3} {:>9.3}", ev.law_constant.sim_mean, ev.law_policy.sim_mean);
    println!("γ=0 | CT≤0 share {:>13.3} {:>9.3}", ev.law_constant.zero_share, ev.law_policy.zero_share);
    println!("AR test {}   AR dev {}   (T = {steps})", ar(ev.ar), ar(ev.ar_dev));
}
