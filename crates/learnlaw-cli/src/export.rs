//! `learnlaw export`: a run's θ_0, its trained θ_T and θ_t at chosen steps as safetensors, in the
//! official PyTorch module's format or learnlaw's own (`learnlaw_core::theta`).
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use learnlaw_core::perceptron::CpuPerceptron;
use learnlaw_core::run::{CheckedRun, RunDir};
use learnlaw_core::theta::{self, Precision, ThetaFormat};
use learnlaw_core::transformer::CpuTransformer;
use learnlaw_core::unroll::Unroll;
use learnlaw_core::{Engine, Real};

use crate::progress::Progress;
use crate::task::{with_engine, Task, TaskKind};
use crate::{run_theta0, Backend};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The official PyTorch module's state dict, f32 (Transformer: `transformer_model.Transformer`,
    /// keys `base_model.…`; perceptron: `PerceptronModel`, `linear.weight` [1, D]).
    Official,
    /// learnlaw's flat θ, one tensor `theta` [P] (f64 for a cpu-f64 run, else f32).
    Learnlaw,
}

#[derive(Args)]
pub struct ExportArgs {
    run_dir: PathBuf,
    /// Folder for the files (default RUN_DIR/export): theta_0.safetensors, theta_final.safetensors
    /// (θ_T), theta_<t>.safetensors for each --steps t, and train_losses.safetensors (each θ's
    /// per-example training losses, as learnlaw computes them, for checking a PyTorch model).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also θ_t at these inner steps (comma-separated, each from 0 to T).
    #[arg(long, value_delimiter = ',', value_name = "T1,T2,...")]
    steps: Vec<usize>,
    #[arg(long, value_enum, default_value_t = Format::Official)]
    format: Format,
    /// Backend of the retraining that reaches θ_t (default: cpu, or cpu-f64 for a cpu-f64 run).
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// Where the run's θ_0 file (its `--theta0`) is now, if it moved.
    #[arg(long, value_name = "FILE")]
    theta0: Option<PathBuf>,
}

/// The file stem of θ_t: theta_0, theta_<t>, and theta_final for θ_T.
fn stem(t: usize, steps: usize) -> String {
    if t == steps && t > 0 {
        "theta_final".into()
    } else {
        format!("theta_{t}")
    }
}

pub fn run(args: &ExportArgs) -> Result<()> {
    let dir = RunDir::new(&args.run_dir);
    dir.open()?;
    let run = dir.read_checked()?;
    let cfg = &run.config;
    let (policy, epoch) = run.evaluated_policy(&dir)?;
    let format = match args.format {
        Format::Official => ThetaFormat::Official,
        Format::Learnlaw => ThetaFormat::Learnlaw,
    };
    if let (ThetaFormat::Official, Some(model)) = (format, &cfg.model) {
        model.check_official().context("the official PyTorch module cannot express this run's model")?;
    }
    let steps = cfg.search.steps;
    let at = replay_steps(args.steps.iter().copied().chain([0, steps]), steps)?;

    let out = args.out.clone().unwrap_or_else(|| dir.root.join("export"));
    if out.exists() && !out.is_dir() {
        bail!("{} is a file, not a folder: name a folder for the exported files", out.display());
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let losses_path = out.join("train_losses.safetensors");
    let paths: Vec<PathBuf> = at.iter().map(|&t| out.join(format!("{}.safetensors", stem(t, steps)))).collect();
    for path in paths.iter().chain([&losses_path]) {
        if path.exists() && !theta::written_by_learnlaw(path) {
            bail!("{} exists and was not written by learnlaw: refusing to replace it; use another --out", path.display());
        }
    }

    let Replay { task, backend, thetas } = replay_run(&run, &policy.gamma, &at, args.backend, args.theta0.as_deref())?;
    let precision = match (format, backend) {
        (ThetaFormat::Learnlaw, Backend::CpuF64) => Precision::F64,
        _ => Precision::F32,
    };
    let model = task.theta_model();
    let mut losses = Vec::new();
    for ((t, theta, train_losses), path) in thetas.into_iter().zip(&paths) {
        let mut meta = theta::export_metadata(&cfg.task, t, steps, cfg.model.as_ref());
        meta.insert("learnlaw_policy_epoch".into(), epoch.to_string());
        theta::save(path, model, &theta, format, precision, meta).with_context(|| format!("writing {}", path.display()))?;
        losses.push((stem(t, steps), train_losses));
    }
    let mut meta = theta::export_metadata(&cfg.task, steps, steps, cfg.model.as_ref());
    meta.remove("learnlaw_step");
    theta::save_losses(&losses_path, &losses, meta).with_context(|| format!("writing {}", losses_path.display()))?;
    let names: Vec<String> = paths.iter().map(|p| display_name(p)).collect();
    println!(
        "wrote θ_t for t = {} ({} format, policy of epoch {epoch}) into {}: {} and {}",
        at.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "),
        format.name(),
        out.display(),
        names.join(", "),
        display_name(&losses_path)
    );
    if format == ThetaFormat::Official {
        if let Some(model) = &cfg.model {
            println!("official module config: {}", model.official_config());
        }
    }
    Ok(())
}

fn display_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// The inner steps to keep θ_t at, sorted and without repeats; one past the run's T inner steps is
/// an input error.
pub fn replay_steps(steps: impl IntoIterator<Item = usize>, total: usize) -> learnlaw_core::Result<Vec<usize>> {
    let mut at: Vec<usize> = steps.into_iter().collect();
    if let Some(&t) = at.iter().find(|&&t| t > total) {
        return Err(learnlaw_core::Error::bad_input("--steps", format!("{t}: the run has T = {total} inner steps (θ_0 … θ_{total})")));
    }
    at.sort_unstable();
    at.dedup();
    Ok(at)
}

/// A run retrained under a policy: θ_t and l_n(θ_t) at the chosen steps.
pub struct Replay {
    /// The run's task (its data and model).
    pub task: Task,
    /// The backend the retraining ran on.
    pub backend: Backend,
    /// (t, θ_t, l_n(θ_t)) at each chosen step, in increasing t.
    pub thetas: Vec<(usize, Vec<f64>, Vec<f64>)>,
}

/// Retrains a run from its θ_0 (its θ_0 file, or `theta0` where it moved) under `gamma` \[T, N\]
/// on `backend` (default cpu, or cpu-f64 for a cpu-f64 run), keeping θ_t at the steps `at`
/// (sorted, each ≤ T).
pub fn replay_run(run: &CheckedRun, gamma: &[f32], at: &[usize], backend: Option<Backend>, theta0: Option<&Path>) -> Result<Replay> {
    let cfg = &run.config;
    let kind = TaskKind::parse(&cfg.task)?;
    let task = Task::load(kind, &cfg.data, cfg.model.as_ref())?;
    let theta0 = run_theta0(&task, cfg, theta0)?;
    let backend = backend.unwrap_or(if cfg.backend == "cpu-f64" { Backend::CpuF64 } else { Backend::Cpu });
    let bar = Progress::new("retraining with the run's policy", "steps", *at.last().unwrap_or(&0) as u64)?;
    let unroll = cfg.search.unroll();
    let thetas = with_engine!(backend, &task, |e, _held| replay(&mut e, &theta0, gamma, unroll, at, &mut || bar.inc(1))?);
    bar.finish_and_clear();
    Ok(Replay { task, backend, thetas })
}

/// θ_t (f64) and the per-example training losses l_n(θ_t) at each step of `at`, retraining from
/// θ_0 under `gamma` on `e`.
#[allow(clippy::type_complexity)]
fn replay<E: Engine>(
    e: &mut E,
    theta0: &[f64],
    gamma: &[f32],
    unroll: Unroll,
    at: &[usize],
    step_done: &mut dyn FnMut(),
) -> Result<Vec<(usize, Vec<f64>, Vec<f64>)>> {
    let theta0: Vec<E::Real> = theta::to_real(theta0);
    let gamma: Vec<E::Real> = gamma.iter().map(|&g| E::Real::of(g as f64)).collect();
    let n = e.num_train();
    let mut out = Vec::new();
    let visit = |t: usize, e: &mut E, th: &E::Vec| {
        let mut losses = e.zeros(n)?;
        e.train_losses(th, &mut losses)?;
        out.push((t, theta::to_f64(&e.download(th)?), theta::to_f64(&e.download(&losses)?)));
        Ok(())
    };
    theta::replay(e, &theta0, &gamma, unroll, at, visit, step_done)?;
    Ok(out)
}
