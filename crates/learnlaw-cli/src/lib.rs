//! The `learnlaw` command as a library: generate data, search for a near-optimal learning policy,
//! evaluate it and report. A thin layer over `learnlaw-core` (math, CPU engines, search, run
//! directories), `learnlaw-wgpu` and `learnlaw-cuda` (GPU engines). The binary calls [`main`]; a
//! program that embeds the command (the Python package) calls [`run_args`], watching progress
//! through [`progress::with_observer`], and builds engines for its own arrays with
//! [`task::host_engine`].
// The clap arguments' doc comments are the `--help` text, written for a terminal (`[P]`,
// `theta_<t>`), not as rustdoc markdown.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
mod backends;
pub mod export;
pub mod progress;
mod report;
pub mod task;
mod train;

use std::ffi::OsString;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use learnlaw_core::data::{PerceptronData, PerceptronRecipe};
use learnlaw_core::perceptron::CpuPerceptron;
use learnlaw_core::run::{self, Evaluation, RunConfig, RunDir, Theta0File};
use learnlaw_core::search::{OuterOptimizer, SearchConfig};
use learnlaw_core::text::TokenData;
use learnlaw_core::transformer::CpuTransformer;
use learnlaw_core::Engine;
use progress::Progress;
use task::{with_engine, ModelArgs, Task, TaskKind, TextArgs};

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
    /// Search for a near-optimal policy (resumes if RUN_DIR holds the same search; a resume may
    /// change --checkpoint-every and --backend, and refuses any other difference, naming it).
    Search(SearchArgs),
    /// Train once with a given policy — an online rule (`--policy online:lookahead|law|greats`:
    /// γ_t from step t's contributions, no search), `constant`, or a searched RUN_DIR — and write a
    /// run directory like a search's (then evaluated), for `eval` and `report`.
    Train(train::TrainArgs),
    /// Retrain with the run's policy and the constant policy; report AR, AUC and the Learning Law.
    /// AR = the steps the constant policy needs to reach its own final loss over those the policy
    /// needs (1 for equal curves; "not reached" when the policy never gets there).
    Eval(EvalArgs),
    /// Figures (SVG, PNG) and report.md for an evaluated run: J and CR per epoch, loss curves with
    /// scaling-law fits, SIM, zero-weight shares, weights of well-learned examples, the policy.
    Report(report::ReportArgs),
    /// Data, search and evaluation with the paper's settings in one go.
    #[command(subcommand)]
    Reproduce(ReproduceCommand),
    /// Which --backend values work on this machine, and on what device (or why not).
    Backends,
    /// Write a run's θ_0 and its trained θ_T (the evaluated policy's, retrained on the CPU), and
    /// θ_t at chosen steps, as safetensors files loadable by PyTorch's `load_state_dict` on the
    /// official module (or as learnlaw's flat θ), with each θ's per-example training losses.
    Export(export::ExportArgs),
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
    /// Token sequences for the Transformer task (safetensors) and their BPE tokenizer (OUT with
    /// the extension .tokenizer.json): generated TinyStories-like stories, or a corpus.
    Text {
        #[arg(long)]
        out: PathBuf,
        /// The paper's sizes (16384 / 512 / 512 sequences, context 64, vocabulary 5000).
        #[arg(long)]
        paper: bool,
        #[command(flatten)]
        text: TextArgs,
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
pub enum Backend {
    /// The CPU backend in f32 (fast, multithreaded).
    Cpu,
    /// The CPU backend in f64 (reference precision; slower).
    CpuF64,
    /// The CPU backend with the perceptron's X stored as bf16 (f32 arithmetic, exactly as on X
    /// rounded to bf16): half the bytes per pass over X.
    CpuBf16,
    /// The WGSL kernels through wgpu (Vulkan/Metal/DX12, or lavapipe on a CPU), f32.
    Wgpu,
    /// The WGSL kernels with the inputs X stored as f16 (f32 accumulation); needs an adapter with
    /// SHADER_F16.
    WgpuF16,
    /// The CUDA kernels (cudarc, NVRTC at first use) on an NVIDIA GPU, f32; needs the driver and
    /// libnvrtc.so.13 on the library path.
    Cuda,
    /// The CUDA kernels with X stored as bf16 (f32 accumulation): half the bytes per pass.
    CudaBf16,
    /// The CUDA kernels with X stored as f16 (f32 accumulation; |x| ≤ 65504).
    CudaF16,
}

impl Backend {
    /// The storage of X on a GPU backend's device.
    fn x_storage(self) -> learnlaw_core::Storage {
        use learnlaw_core::Storage;
        match self {
            Backend::WgpuF16 | Backend::CudaF16 => Storage::F16,
            Backend::CpuBf16 | Backend::CudaBf16 => Storage::Bf16,
            Backend::Cpu | Backend::CpuF64 | Backend::Wgpu | Backend::Cuda => Storage::F32,
        }
    }
}

#[derive(Args, Clone)]
struct SearchSettings {
    /// Inner training steps T (default: perceptron 2000, the paper's; transformer 200).
    #[arg(long)]
    steps: Option<usize>,
    /// Inner learning rate η (default: perceptron 0.1, the paper's; transformer 0.5).
    #[arg(long)]
    eta: Option<f64>,
    /// Outer epochs E (default: perceptron 500, the paper's; transformer 4).
    #[arg(long)]
    epochs: Option<usize>,
    /// Outer learning rate, decayed linearly to 0 over the epochs. SGD: on J = (1/T) Σ L_dev (the
    /// official code's; the paper's ε equals lr/T), default 0.001 for the perceptron and 0.4 for
    /// the transformer (the official scripts'). exp-grad: on the normalised gradient g/max|g|,
    /// default 1. adam: in units of 1/N per entry, default 0.1.
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
    /// Share the policy's weights across blocks of B consecutive inner steps (a T/B-times smaller
    /// search space; default: one weight per example per step, the paper's).
    #[arg(long, value_name = "B")]
    block_steps: Option<usize>,
    /// Keep θ every k inner steps and recompute in between (default: keep all when they fit).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Seed of θ_0 when the data file has no `theta0` (the official scripts' --seed).
    #[arg(long, default_value_t = 10)]
    init_seed: u64,
    /// θ_0 from this file instead of --init-seed (and of a perceptron data file's `theta0`): the
    /// official PyTorch module's state dict as safetensors (what `learnlaw export` writes; for the
    /// Transformer keys `base_model.…`, for the perceptron `linear.weight` [1, D]) or learnlaw's
    /// flat `theta` [P]. f64 values stay f64 on cpu-f64. Recorded (path and fingerprint) in
    /// config.toml: a resume and `eval` start from the same θ_0.
    #[arg(long, value_name = "FILE")]
    theta0: Option<PathBuf>,
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
    fn search_config(&self, task: TaskKind) -> Result<SearchConfig> {
        let (steps, eta, epochs) = task.default_unroll();
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
            steps: self.steps.unwrap_or(steps),
            eta: self.eta.unwrap_or(eta),
            epochs: self.epochs.unwrap_or(epochs),
            outer_lr: self.outer_lr.unwrap_or(task.default_outer_lr(optimizer)),
            optimizer,
            checkpoint_every: self.checkpoint_every,
            holdout: self.holdout,
            reg_l2,
            block_steps: self.block_steps,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Args)]
struct SearchArgs {
    /// Data file: perceptron (safetensors: x_train, y_train, x_dev, y_dev, x_test, y_test,
    /// optional theta0) or transformer (safetensors: train, dev, test token ids [n, context+1]).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_enum, default_value_t = TaskKind::Perceptron)]
    task: TaskKind,
    #[command(flatten)]
    model: ModelArgs,
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
    /// Where the run's θ_0 file (its `--theta0`) is now, if it moved: its contents must be the
    /// ones the search started from (default: the path in config.toml).
    #[arg(long, value_name = "FILE")]
    theta0: Option<PathBuf>,
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
    /// The Transformer LM experiment (paper §5) on TinyStories-like stories with the paper's
    /// training noise; by default scaled to finish in minutes on a laptop CPU (hidden 64, 2
    /// layers, 4 heads, context 32, N = 512, T = 200, 4 outer epochs); `--paper` for the paper's
    /// sizes (hidden 128, 8 heads, context 64, N = 16384, T = 4000, 20 epochs at outer lr 0.4).
    Transformer {
        #[arg(long, default_value = "runs/transformer")]
        out: PathBuf,
        /// Use this token data file instead of generating RUN_DIR/data.safetensors.
        #[arg(long)]
        data: Option<PathBuf>,
        /// The paper's sizes: data (16384 / 512 / 512 sequences, context 64, vocabulary 5000),
        /// model (hidden 128, 8 heads, 2 layers) and search (T = 4000, η = 0.1, 20 epochs at
        /// outer lr 0.4); explicit --steps/--eta/--epochs still apply.
        #[arg(long)]
        paper: bool,
        /// The paper's model and data recipe (hidden 128, 8 heads, context 64, vocabulary 5000)
        /// with N and T scaled to a short GPU window: N = 1024 / 256 / 256 sequences, T = 250,
        /// η = 0.5, 4 outer epochs (on an H200: 25 s per outer epoch, 2.2 minutes with the
        /// evaluation, AR 1.48× on the test set; over 12 epochs the outer lr 0.4 overshoots after
        /// the sixth); explicit options still apply.
        #[arg(long, conflicts_with = "paper")]
        gpu_window: bool,
        #[command(flatten)]
        text: TextArgs,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        settings: SearchSettings,
    },
}

/// Creates the folder a file is to be written into.
fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display())),
        _ => Ok(()),
    }
}

/// Set while a search runs: the first Ctrl-C then stops it after the current outer epoch, with
/// the policy saved (the same command resumes it); otherwise, or at a second Ctrl-C, it exits.
static SEARCHING: AtomicBool = AtomicBool::new(false);
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);
/// The exit status of a process ended by Ctrl-C (128 + SIGINT).
const INTERRUPTED: u8 = 130;

fn handle_ctrl_c() {
    let installed = ctrlc::set_handler(|| {
        if SEARCHING.load(Ordering::SeqCst) && !STOP_REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!("\nstopping after this outer epoch, with the policy saved (Ctrl-C again to quit at once)");
        } else {
            std::process::exit(INTERRUPTED.into());
        }
    });
    if let Err(e) = installed {
        eprintln!("warning: no Ctrl-C handler ({e}): an interrupted search loses the epochs since its last save");
    }
}

/// Lets every option take a negative number (`--eta -1`), so that it reaches the option's range
/// check instead of being read as an unknown option.
fn negative_numbers(cmd: clap::Command) -> clap::Command {
    let cmd = cmd.mut_args(|a| if a.get_action().takes_values() { a.allow_negative_numbers(true) } else { a });
    let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    names.iter().fold(cmd, |cmd, name| cmd.mut_subcommand(name, negative_numbers))
}

/// The `learnlaw` binary: parses the process's arguments, runs the command, prints any error.
pub fn main() -> ExitCode {
    handle_ctrl_c();
    // This thread joins the global thread pool as worker 0: the CPU engines' parallel loops then
    // start from a worker instead of waking the pool from outside at every step (20% of a
    // perceptron epoch on the 2-core EPYC).
    if let Err(e) = rayon::ThreadPoolBuilder::new().use_current_thread().build_global() {
        eprintln!("warning: the thread pool could not take this thread ({e}); steps start it from outside");
    }
    let cli = Cli::from_arg_matches(&negative_numbers(Cli::command()).get_matches()).unwrap_or_else(|e| e.exit());
    match run(cli.command) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Stopped) => ExitCode::from(INTERRUPTED),
        Err(err) => {
            // The message and its causes, without the backtrace anyhow's Debug adds whenever
            // RUST_BACKTRACE is set: that is for panics, not for a user's mistake.
            eprintln!("Error: {err}");
            let causes: Vec<String> = err.chain().skip(1).map(|c| c.to_string()).collect();
            if !causes.is_empty() {
                eprintln!("\nCaused by:");
                for (i, cause) in causes.iter().enumerate() {
                    eprintln!("    {}{cause}", if causes.len() > 1 { format!("{i}: ") } else { String::new() });
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// A search stopped after an outer epoch (Ctrl-C, or the observer said stop), with its policy
    /// saved: the same command resumes it.
    Stopped,
}

/// Runs one command given by its arguments, as the binary would (`args` without the program
/// name, e.g. `["search", "--data", "d.safetensors", "--out", "run"]`), for a program that embeds
/// it: no Ctrl-C handler is installed, and an argument error is returned (a `clap::Error`, with
/// clap's message) instead of ending the process; `--help` prints the help.
pub fn run_args<I, T>(args: I) -> Result<Outcome>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv = std::iter::once(OsString::from("learnlaw")).chain(args.into_iter().map(Into::into));
    let matches = match negative_numbers(Cli::command()).try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) => {
            print!("{}", e.render());
            return Ok(Outcome::Done);
        }
        Err(e) => return Err(e.into()),
    };
    run(Cli::from_arg_matches(&matches)?.command)
}

fn run(command: Command) -> Result<Outcome> {
    match command {
        Command::Data(DataCommand::Perceptron { out, recipe }) => {
            let data = PerceptronData::generate(&recipe.recipe())?;
            create_parent(&out)?;
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
        Command::Data(DataCommand::Text { out, paper, text }) => {
            let (data, bpe) = text.build(paper)?;
            create_parent(&out)?;
            data.save(&out)?;
            let tokenizer = out.with_extension("tokenizer.json");
            bpe.save(&tokenizer)?;
            println!(
                "wrote {} (vocabulary {}, context {}, train {}, dev {}, test {}) and {}",
                out.display(),
                data.vocab_size,
                data.seq_len - 1,
                data.n_train(),
                data.n_dev(),
                data.n_test(),
                tokenizer.display()
            );
        }
        Command::Search(args) => {
            let dir = RunDir::new(&args.out);
            if search(args.task, &args.data, &dir, &args.settings, Some(&args.model), false)? == Outcome::Stopped {
                return Ok(Outcome::Stopped);
            }
        }
        Command::Train(args) => train::run(&args)?,
        Command::Eval(args) => {
            evaluate(&RunDir::new(&args.run_dir), args.backend, args.theta0.as_deref())?;
        }
        Command::Report(args) => {
            report::run(&args)?;
        }
        Command::Backends => backends::run()?,
        Command::Export(args) => export::run(&args)?,
        Command::Reproduce(ReproduceCommand::Perceptron { out, data, recipe, settings }) => {
            settings.search_config(TaskKind::Perceptron)?;
            // One owner for the data, the search and the evaluation.
            let dir = RunDir::new(&out);
            let data = match data {
                Some(path) => path,
                None => {
                    let generated = PerceptronData::generate(&recipe.recipe())?;
                    generated_data(
                        &dir,
                        "the paper's perceptron data",
                        &generated,
                        |d, p| Ok(d.save(p)?),
                        |p| Ok(PerceptronData::load(p)?),
                    )?
                }
            };
            if search(TaskKind::Perceptron, &data, &dir, &settings, None, true)? == Outcome::Stopped {
                return Ok(Outcome::Stopped);
            }
            evaluate(&dir, Some(settings.backend), None)?;
        }
        Command::Reproduce(ReproduceCommand::Transformer { out, data, paper, gpu_window, mut text, mut model, mut settings }) => {
            if gpu_window {
                text.train = text.train.or(Some(1024));
                text.dev = text.dev.or(Some(256));
                text.test = text.test.or(Some(256));
                settings.steps = settings.steps.or(Some(250));
                settings.eta = settings.eta.or(Some(0.5));
                settings.epochs = settings.epochs.or(Some(4));
            }
            let paper = paper || gpu_window;
            if paper {
                model = ModelArgs { hidden: 128, heads: 8, ..model };
                settings.steps = settings.steps.or(Some(4000));
                settings.eta = settings.eta.or(Some(0.1));
                settings.epochs = settings.epochs.or(Some(20));
            }
            settings.search_config(TaskKind::Transformer)?;
            let dir = RunDir::new(&out);
            let data = match data {
                Some(path) => path,
                None => {
                    let (generated, bpe) = text.build(paper)?;
                    let save = |d: &TokenData, p: &Path| -> Result<()> {
                        d.save(p)?;
                        Ok(bpe.save(&out.join("tokenizer.json"))?)
                    };
                    generated_data(&dir, "TinyStories-like token data", &generated, save, |p| Ok(TokenData::load(p)?))?
                }
            };
            if search(TaskKind::Transformer, &data, &dir, &settings, Some(&model), true)? == Outcome::Stopped {
                return Ok(Outcome::Stopped);
            }
            evaluate(&dir, Some(settings.backend), None)?;
        }
    }
    Ok(Outcome::Done)
}

/// RUN_DIR/data.safetensors, saved from `generated` the first time; a resumed run must not
/// silently ignore changed data options, so later calls check the file still holds `generated`.
fn generated_data<D: PartialEq>(
    dir: &RunDir,
    what: &str,
    generated: &D,
    save: impl FnOnce(&D, &Path) -> Result<()>,
    load: impl FnOnce(&Path) -> Result<D>,
) -> Result<PathBuf> {
    dir.create()?;
    let path = dir.root.join("data.safetensors");
    if !path.exists() {
        save(generated, &path)?;
        println!("generated {what} into {}", path.display());
    } else if load(&path).with_context(|| format!("loading {}", path.display()))? != *generated {
        bail!("{} holds data from other data options; use another --out", path.display());
    }
    Ok(path)
}

/// Runs (or resumes) a search; with `then_evaluate` (`reproduce`), data without a test set is
/// refused before the search, since the evaluation after it would need one.
fn search(
    kind: TaskKind,
    data_path: &Path,
    dir: &RunDir,
    settings: &SearchSettings,
    model: Option<&ModelArgs>,
    then_evaluate: bool,
) -> Result<Outcome> {
    let mut task = Task::for_search(kind, data_path, model)?;
    if then_evaluate && task.num_test() == 0 {
        bail!("{} has no test set (0 rows): it can be searched (`learnlaw search`), not evaluated", data_path.display());
    }
    let data_abs = std::fs::canonicalize(data_path).with_context(|| format!("resolving {}", data_path.display()))?;
    let theta0_file = match &settings.theta0 {
        Some(path) => Some(Theta0File::new(path).with_context(|| format!("reading θ_0 file {}", path.display()))?),
        None => None,
    };
    let cfg = RunConfig {
        task: kind.name().into(),
        backend: settings.backend.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default(),
        data: data_abs,
        data_fingerprint: run::fingerprint(data_path)?,
        init_seed: settings.init_seed,
        theta0: theta0_file,
        model: task.model().cloned(),
        search: settings.search_config(kind)?,
        trained: None,
    };
    let theta0 = task.theta0(settings.init_seed, settings.theta0.as_deref())?;
    if let Some(path) = settings.theta0.as_ref().filter(|_| matches!(&task, Task::Perceptron { data, .. } if data.theta0.is_some())) {
        println!("θ_0 from {} (not the data file's theta0)", path.display());
    }
    if let Some(f) = cfg.search.holdout {
        let (held, all) = task.hold_out(f)?;
        println!("holding out {held} of the {all} dev examples");
    }
    let history = with_engine!(settings.backend, &task, |e, heldout| {
        // Before the progress bar: a refused search (memory, a busy or foreign folder) says why alone.
        run::take_for_search(&e, dir, &cfg)?;
        print_resume_notes(dir, &cfg)?;
        let bar = Progress::new(format!("{} search on {}", kind.name(), e.name()), "epochs", cfg.search.epochs as u64)?;
        SEARCHING.store(true, Ordering::SeqCst);
        let history = run::search_with_holdout(&mut e, heldout.as_mut(), dir, &cfg, &theta0, |ev| {
            let wants = bar.epoch(ev.epoch, ev.history);
            if STOP_REQUESTED.load(Ordering::SeqCst) || wants.is_break() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        SEARCHING.store(false, Ordering::SeqCst);
        bar.finish();
        history
    });
    if history.j.len() <= cfg.search.epochs {
        println!(
            "stopped after outer epoch {} of {}; the policy is saved in {}: run the same command to resume",
            history.epochs_done(),
            cfg.search.epochs,
            dir.policy_path().display()
        );
        return Ok(Outcome::Stopped);
    }
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
    } else if let Some(note) = j_rise_note(&history) {
        println!("{note}");
    }
    Ok(Outcome::Done)
}

/// A note when the final policy's J is over 0.1% above an earlier epoch's (an outer learning rate
/// too large late in the search) and nothing kept the better policy.
fn j_rise_note(history: &run::History) -> Option<String> {
    let last = *history.j.last()?;
    let low = history.lowest_j_epoch()?;
    let j = history.j[low];
    (last > j * (1.0 + 1e-3)).then(|| {
        format!(
            "note: J was lowest at epoch {low} ({j:.6}) and the final policy's is {:.2}% above it: a smaller --outer-lr is \
             steadier, and --holdout F keeps the policy of lowest held-out J",
            100.0 * (last - j) / j
        )
    })
}

/// Says which settings a resumed search changes, and why that is allowed (with any other
/// difference the search refuses, naming them all).
fn print_resume_notes(dir: &RunDir, cfg: &RunConfig) -> Result<()> {
    if !dir.policy_path().exists() {
        return Ok(());
    }
    let differences = dir.read_config()?.differences(cfg)?;
    let reasons: Option<Vec<&str>> = differences.iter().map(|d| d.allowed_on_resume()).collect();
    for (d, why) in differences.iter().zip(reasons.unwrap_or_default()) {
        println!("resuming with {d}: {why}");
    }
    Ok(())
}

fn evaluate(dir: &RunDir, backend: Option<Backend>, theta0_file: Option<&Path>) -> Result<Evaluation> {
    dir.open()?;
    let cfg = dir.read_checked()?.config;
    let kind = TaskKind::parse(&cfg.task)?;
    let task = Task::load(kind, &cfg.data, cfg.model.as_ref())?;
    if task.num_test() == 0 {
        bail!("{} has no test set (0 rows): a search-only token file cannot be evaluated", cfg.data.display());
    }
    let backend = match backend {
        Some(b) => b,
        None => Backend::from_str(&cfg.backend, true).map_err(|e| anyhow::anyhow!("run config backend: {e}"))?,
    };
    let theta0 = run_theta0(&task, &cfg, theta0_file)?;
    let bar = Progress::new("retraining with the constant, then the searched policy", "steps", 2 * cfg.search.steps as u64)?;
    let ev = with_engine!(backend, &task, |e, _held| run::evaluate_with_progress(&mut e, dir, &theta0, &mut || bar.inc(1))?);
    bar.finish_and_clear();
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
    if !summary.epochs_to_ar_dev.is_empty() {
        let reached: Vec<String> = summary
            .epochs_to_ar_dev
            .iter()
            .map(|t| format!("{}× {}", t.ar, t.epoch.map_or("never".to_string(), |e| format!("at epoch {e}"))))
            .collect();
        println!("AR on the search's desired set reached {}", reached.join(", "));
    }
    if let Some(epoch) = summary.evaluated_epoch {
        println!("evaluated the policy of epoch {epoch}{}", if summary.best_epoch.is_some() { " (best by held-out J)" } else { "" });
    }
    Ok(ev)
}

/// The θ_0 a run's search started from: its θ_0 file (config.toml's path, or `given` where it
/// moved, which must hold the same contents), else the seed or the data's `theta0`.
fn run_theta0(task: &Task, cfg: &RunConfig, given: Option<&Path>) -> Result<Vec<f64>> {
    let file = match (given, &cfg.theta0) {
        (Some(path), Some(recorded)) => {
            recorded.check_same(path)?;
            Some(path.to_path_buf())
        }
        (Some(path), None) => bail!(
            "the run's search started from the θ_0 of --init-seed {} (or the data's theta0), not from a file: \
             --theta0 {} can only say where the run's own θ_0 file moved",
            cfg.init_seed,
            path.display()
        ),
        (None, Some(recorded)) if !recorded.path.exists() => {
            bail!("the run's θ_0 file {} is gone: restore it, or pass --theta0 with where it is now", recorded.path.display())
        }
        (None, Some(recorded)) => Some(recorded.path.clone()),
        (None, None) => None,
    };
    task.theta0(cfg.init_seed, file.as_deref())
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
    // AR counts the steps to the constant policy's final loss, which a flat or rising curve
    // reaches before T: say so, rather than let a ratio of small step counts pass as a speed-up.
    for (set, reached) in [("test", ev.constant_steps_test), ("desired", ev.constant_steps_dev)] {
        if let Some(t) = reached.filter(|&t| t < steps) {
            let why = if t == 1 { "flat: training makes no progress; check --eta and the data" } else { "it stalls or rises after that" };
            println!(
                "note: the constant policy's {set} loss reaches its final value at step {t} of {steps} ({why}); AR counts the steps to it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_final_j_above_an_earlier_epochs_is_noted() {
        let history = |j: &[f64]| run::History { j: j.to_vec(), ..Default::default() };
        assert_eq!(j_rise_note(&history(&[])), None);
        assert_eq!(j_rise_note(&history(&[2.3, 2.2, 2.1])), None);
        assert_eq!(j_rise_note(&history(&[2.3, 2.13, 2.1305])), None, "within 0.1%");
        let note = j_rise_note(&history(&[2.3, 2.13, 2.33])).expect("a 9% rise");
        assert!(note.contains("epoch 1 (2.130000)") && note.contains("9.39%"), "{note}");
    }
}
