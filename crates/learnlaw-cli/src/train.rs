//! `learnlaw train`: one training run with a given policy — an online rule that sets γ_t from step
//! t's contributions (`learnlaw_core::online`), the constant policy, or a searched policy from a run
//! directory — written as a run directory like a search's (config.toml, policy.safetensors with
//! the γ used, summary.json, then curves.csv and the evaluation), so `eval` and `report` read it
//! unchanged.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use learnlaw_core::eval::retrain;
use learnlaw_core::online::{self, OnlineConfig, OnlineKind};
use learnlaw_core::perceptron::CpuPerceptron;
use learnlaw_core::policy::Policy;
use learnlaw_core::run::{self, RunConfig, RunDir, TrainedPolicy};
use learnlaw_core::search::{OuterOptimizer, SearchConfig};
use learnlaw_core::transformer::CpuTransformer;
use learnlaw_core::{Engine, Real};

use crate::progress::Progress;
use crate::task::{with_engine, ModelArgs, Task, TaskKind};
use crate::Backend;

#[derive(Args)]
pub struct TrainArgs {
    /// Data file (as for `search`).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_enum, default_value_t = TaskKind::Perceptron)]
    task: TaskKind,
    #[command(flatten)]
    model: ModelArgs,
    /// Run directory to write.
    #[arg(long)]
    out: PathBuf,
    /// The policy: `online:lookahead`, `online:law`, `online:greats` (γ_t from step t's
    /// contributions CT = ∇l_n·∇L_dev), `constant`, or a run directory (its searched policy; the
    /// best one by held-out J when it had a held-out part).
    #[arg(long)]
    policy: String,
    /// Inner steps T (default: the task's, or the source run's with --policy RUN_DIR).
    #[arg(long)]
    steps: Option<usize>,
    /// Inner learning rate η (default: the task's, or the source run's with --policy RUN_DIR).
    #[arg(long)]
    eta: Option<f64>,
    /// online:lookahead: the temperature τ of γ ∝ exp(CT/(τ·rms CT)) (large: the constant policy;
    /// default 0.5).
    #[arg(long)]
    temperature: Option<f64>,
    /// online:law: the L2 strength λ on the weights of the examples with CT > 0 (large: uniform on
    /// them; default 10).
    #[arg(long)]
    strength: Option<f64>,
    /// online:greats: examples selected per step (default: 1024, or N if smaller).
    #[arg(long)]
    batch: Option<usize>,
    /// online:greats: selection rounds (1, the default: the top --batch by CT, no interaction term).
    #[arg(long)]
    rounds: Option<usize>,
    /// Online rules: mix α of the constant policy, γ ← (1 − α)·γ + α/N (default 0).
    #[arg(long)]
    mix: Option<f64>,
    /// Online rules: hold out this fraction of the desired set (its last ⌈F·K⌉ examples) from the
    /// rule and use the constant policy at the steps where the rule's first-order gain on it is
    /// below the constant policy's.
    #[arg(long, value_name = "F")]
    gate_holdout: Option<f64>,
    /// Seed of θ_0 when the data file has no `theta0`.
    #[arg(long, default_value_t = 10)]
    init_seed: u64,
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    backend: Backend,
}

/// Where the policy comes from.
enum Source {
    Constant,
    Online(OnlineConfig),
    Run(PathBuf, Policy),
}

impl TrainArgs {
    /// The policy's source; `n` is the data's number of training examples.
    fn source(&self, n: usize) -> Result<Source> {
        let options = [
            ("--temperature", self.temperature.is_some()),
            ("--strength", self.strength.is_some()),
            ("--batch", self.batch.is_some()),
            ("--rounds", self.rounds.is_some()),
            ("--mix", self.mix.is_some()),
            ("--gate-holdout", self.gate_holdout.is_some()),
        ];
        let Some(kind) = self.policy.strip_prefix("online:") else {
            if let Some((flag, _)) = options.iter().find(|(_, set)| *set) {
                bail!("{flag} applies to online policies (--policy online:<rule>) only");
            }
            return self.fixed_source();
        };
        let d = OnlineConfig::new(OnlineKind::parse(kind)?);
        Ok(Source::Online(OnlineConfig {
            temperature: self.temperature.unwrap_or(d.temperature),
            strength: self.strength.unwrap_or(d.strength),
            batch: self.batch.unwrap_or(d.batch.min(n)),
            rounds: self.rounds.unwrap_or(d.rounds),
            mix: self.mix.unwrap_or(d.mix),
            ..d
        }))
    }

    fn fixed_source(&self) -> Result<Source> {
        if self.policy == "constant" {
            return Ok(Source::Constant);
        }
        let dir = RunDir::new(&self.policy);
        if !dir.config_path().is_file() {
            bail!(
                "--policy {:?}: expected `constant`, `online:<{}>` or a run directory (no config.toml there)",
                self.policy,
                OnlineKind::ALL.map(|k| k.name()).join("|")
            );
        }
        dir.open()?;
        let run = dir.read_checked()?;
        let (policy, _) = run.saved.with_context(|| format!("{}: no policy.safetensors (the search has not saved yet)", self.policy))?;
        let policy = match run.best {
            Some((best, _)) if run.config.search.holdout.is_some() => best,
            _ => policy,
        };
        let abs = std::fs::canonicalize(&self.policy).with_context(|| format!("resolving {}", self.policy))?;
        Ok(Source::Run(abs, policy))
    }
}

pub fn run(args: &TrainArgs) -> Result<()> {
    let mut task = Task::for_search(args.task, &args.data, Some(&args.model))?;
    let n = match &task {
        Task::Perceptron { data, .. } => data.train.len(),
        Task::Transformer { data, .. } => data.n_train(),
    };
    let source = args.source(n)?;
    let (t_default, eta_default, _) = args.task.default_unroll();
    let (mut steps, mut eta) = (args.steps.unwrap_or(t_default), args.eta.unwrap_or(eta_default));
    if let Source::Run(path, policy) = &source {
        let cfg = RunDir::new(path).read_config()?;
        steps = args.steps.unwrap_or(policy.steps);
        eta = args.eta.unwrap_or(cfg.search.eta);
        if policy.steps != steps {
            bail!("--policy {}: its γ has T = {} steps, not --steps {steps}", path.display(), policy.steps);
        }
    }
    let data_abs = std::fs::canonicalize(&args.data).with_context(|| format!("resolving {}", args.data.display()))?;
    let trained = match &source {
        Source::Constant => TrainedPolicy { source: "constant".into(), online: None, gate_holdout: None, from: None },
        Source::Online(cfg) => {
            TrainedPolicy { source: "online".into(), online: Some(cfg.clone()), gate_holdout: args.gate_holdout, from: None }
        }
        Source::Run(path, _) => TrainedPolicy { source: "run".into(), online: None, gate_holdout: None, from: Some(path.clone()) },
    };
    let cfg = RunConfig {
        task: args.task.name().into(),
        backend: args.backend.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default(),
        data: data_abs,
        data_fingerprint: run::fingerprint(&args.data)?,
        init_seed: args.init_seed,
        model: task.model().cloned(),
        search: SearchConfig {
            steps,
            eta,
            epochs: 1,
            outer_lr: 0.0,
            optimizer: OuterOptimizer::Sgd,
            checkpoint_every: None,
            holdout: None,
            reg_l2: None,
            block_steps: None,
        },
        trained: Some(trained),
        theta0: None,
    };
    cfg.search.validate()?;
    if let Some(f) = args.gate_holdout {
        let (held, all) = task.hold_out(f)?;
        println!("gating the online rule on {held} held-out of the {all} dev examples");
    }
    let theta0 = task.theta0(args.init_seed, None)?;
    let dir = RunDir::new(&args.out);
    let unroll = cfg.search.unroll();
    let label = match &source {
        Source::Constant => "the constant policy".to_string(),
        Source::Online(c) => format!("online {}", c.label()),
        Source::Run(p, _) => format!("the policy of {}", p.display()),
    };
    let bar = Progress::new(format!("training with {label}"), "steps", 2 * steps as u64)?;
    let history = with_engine!(args.backend, &task, |e, held| {
        run::take_for_train(&dir, &cfg)?;
        let n = e.num_train();
        let real = |v: &[f32]| v.iter().map(|&x| Real::of(x as f64)).collect::<Vec<_>>();
        let theta0: Vec<_> = theta0.iter().map(|&x| Real::of(x)).collect();
        let constant = Policy::constant(steps, n);
        // The constant policy's desired-loss curve: epoch 0 of the run's history (AR dev's target).
        let (c, _) = retrain(&mut e, &theta0, &real(&constant.gamma), unroll, false)?;
        bar.inc(steps as u64);
        let start = std::time::Instant::now();
        let (policy, dev) = match &source {
            Source::Constant => (constant, c.dev.clone()),
            Source::Run(path, p) => {
                if p.examples != n {
                    bail!("--policy {}: its γ has N = {} examples, the data {n}", path.display(), p.examples);
                }
                let (curves, _) = retrain(&mut e, &theta0, &real(&p.gamma), unroll, false)?;
                bar.inc(steps as u64);
                (p.clone(), curves.dev)
            }
            Source::Online(oc) => {
                let mut gated = 0usize;
                let r = online::train_online(&mut e, held.as_mut(), &theta0, unroll, oc, &mut |t, info| {
                    bar.inc(1);
                    gated += info.gated as usize;
                    if t % 50 == 0 {
                        bar.set_message(format!("L_dev {:.5}", info.dev_loss));
                    }
                })?;
                if args.gate_holdout.is_some() {
                    println!("the held-out gate chose the constant policy at {} of {steps} steps", r.gated_steps);
                }
                // With a gate the run's desired set was the search part: retrain on the whole one.
                let dev = if held.is_some() { retrain(&mut e, &theta0, &real(&r.gamma), unroll, false)?.0.dev } else { r.dev };
                (Policy { steps, examples: n, gamma: r.gamma }, dev)
            }
        };
        let seconds = start.elapsed().as_secs_f64();
        run::write_trained(&dir, &cfg, &policy, &c.dev, &dev, seconds, e.num_classes())?
    });
    bar.finish_and_clear();
    println!(
        "trained with {label}: J {:.6} (constant {:.6}, {:+.2}%), CR {:.3} (constant {:.3}){}, {:.2} s; policy in {}",
        history.j[1],
        history.j[0],
        100.0 * (history.j[1] - history.j[0]) / history.j[0],
        history.cr[1],
        history.cr[0],
        if args.gate_holdout.is_some() { " on the part of the desired set the rule saw" } else { "" },
        history.seconds_per_epoch(),
        dir.policy_path().display()
    );
    drop(dir);
    crate::evaluate(&RunDir::new(&args.out), Some(args.backend), None)?;
    Ok(())
}
