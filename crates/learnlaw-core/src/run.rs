//! A run directory: the resolved configuration, the policy (saved after every outer epoch, so a
//! killed search resumes where it stopped), the curves and the summary.
//!
//! ```text
//! RUN_DIR/config.toml          what was run (task, backend, data file + fingerprint, settings)
//! RUN_DIR/policy.safetensors   γ [T, N] after the last completed epoch + the J history (metadata)
//! RUN_DIR/summary.json         J and CR per epoch, seconds per epoch, AR, Learning-Law statistics
//! RUN_DIR/curves.csv           dev and test loss per step, constant vs optimised policy
//! ```
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::eval::{self, Curves, LawStats};
use crate::policy::Policy;
use crate::search::{compression_ratio, Search, SearchConfig};
use crate::tensor_file::write_atomic;
use crate::{Error, Real, Result};

/// Everything that determines a search's result; a resumed search must match it exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub task: String,
    pub backend: String,
    /// The data file (safetensors), absolute.
    pub data: PathBuf,
    /// FNV-1a 64 of the data file's bytes, so a changed file is not silently resumed over.
    pub data_fingerprint: String,
    /// Seed of θ_0 when the data file has no `theta0`.
    pub init_seed: u64,
    pub search: SearchConfig,
}

/// The J history of a search; j[e] = J(γ_e), e = 0 the constant policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub j: Vec<f64>,
    /// Compression ratio of each policy on the desired set (|V| = 2).
    pub cr: Vec<f64>,
    /// Wall-clock seconds of each completed outer epoch.
    pub seconds: Vec<f64>,
}

impl History {
    /// Outer epochs completed (the last entry of `j` may be the final policy's, which has no epoch).
    pub fn epochs_done(&self) -> usize {
        self.seconds.len()
    }
    pub fn seconds_per_epoch(&self) -> f64 {
        self.seconds.iter().sum::<f64>() / self.seconds.len().max(1) as f64
    }
}

/// The numbers of one evaluated policy against the constant policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Acceleration ratio on the test set (None: the constant policy's final loss is never reached).
    pub ar: Option<f64>,
    /// Acceleration ratio on the desired (dev) set.
    pub ar_dev: Option<f64>,
    /// Area under the test curve, (1/T) Σ_{t=0..T} L_test(θ_t), constant vs policy.
    pub auc_test_constant: f64,
    pub auc_test_policy: f64,
    pub auc_dev_constant: f64,
    pub auc_dev_policy: f64,
    pub final_test_constant: f64,
    pub final_test_policy: f64,
    pub law_constant: LawStats,
    pub law_policy: LawStats,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub task: String,
    pub backend: String,
    pub steps: usize,
    pub epochs: usize,
    pub epochs_done: usize,
    /// J per outer epoch, epoch 0 = the constant policy.
    pub j: Vec<f64>,
    pub cr: Vec<f64>,
    pub seconds_per_epoch: f64,
    /// Test-set acceleration ratio (copied from `evaluation` for the quick look).
    pub ar: Option<f64>,
    pub evaluation: Option<Evaluation>,
}

pub struct RunDir {
    pub root: PathBuf,
}

const HISTORY_KEY: &str = "history";

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn policy_path(&self) -> PathBuf {
        self.root.join("policy.safetensors")
    }
    pub fn summary_path(&self) -> PathBuf {
        self.root.join("summary.json")
    }
    pub fn curves_path(&self) -> PathBuf {
        self.root.join("curves.csv")
    }

    pub fn read_config(&self) -> Result<RunConfig> {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        toml::from_str(&text).map_err(|e| Error::format(&path, e))
    }

    fn write_config(&self, cfg: &RunConfig) -> Result<()> {
        let text = toml::to_string_pretty(cfg).map_err(|e| Error::format(self.config_path(), e))?;
        write_atomic(&self.config_path(), text.as_bytes())
    }

    /// The saved policy and its history, if a search has started here.
    pub fn read_policy(&self) -> Result<Option<(Policy, History)>> {
        let path = self.policy_path();
        if !path.exists() {
            return Ok(None);
        }
        let (policy, meta) = Policy::load(&path)?;
        let history = meta.get(HISTORY_KEY).ok_or_else(|| Error::format(&path, "no search history in the metadata"))?;
        let history: History = serde_json::from_str(history).map_err(|e| Error::format(&path, e))?;
        Ok(Some((policy, history)))
    }

    fn write_policy(&self, policy: &Policy, history: &History) -> Result<()> {
        let json = serde_json::to_string(history).map_err(|e| Error::format(self.policy_path(), e))?;
        policy.save(&self.policy_path(), HashMap::from([(HISTORY_KEY.to_string(), json)]))
    }

    pub fn read_summary(&self) -> Result<Summary> {
        let path = self.summary_path();
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::format(&path, e))
    }

    pub fn write_summary(&self, summary: &Summary) -> Result<()> {
        let text = serde_json::to_string_pretty(summary).map_err(|e| Error::format(self.summary_path(), e))?;
        write_atomic(&self.summary_path(), text.as_bytes())
    }

    fn write_curves(&self, constant: &Curves, policy: &Curves) -> Result<()> {
        let mut out = String::from("step,dev_constant,test_constant,dev_policy,test_policy\n");
        for t in 0..constant.dev.len() {
            out += &format!("{t},{},{},{},{}\n", constant.dev[t], constant.test[t], policy.dev[t], policy.test[t]);
        }
        write_atomic(&self.curves_path(), out.as_bytes())
    }
}

/// FNV-1a 64 of a file's bytes, as hex.
pub fn fingerprint(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let h = bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    Ok(format!("{h:016x}"))
}

fn to_real<R: Real>(v: &[f32]) -> Vec<R> {
    v.iter().map(|&x| R::of(x as f64)).collect()
}
fn to_f32<R: Real>(v: &[R]) -> Vec<f32> {
    v.iter().map(|x| x.f64() as f32).collect()
}

/// What happened at the end of one outer epoch (for progress display).
pub struct EpochEvent<'a> {
    pub epoch: usize,
    pub epochs: usize,
    pub history: &'a History,
}

/// Runs (or resumes) the policy search of `cfg` in `dir`, saving the policy after every epoch.
/// Returns the history: J for the constant policy, every epoch's policy and, once all epochs are
/// done, the final one. `on_epoch` runs after each saved epoch; `Break` stops the search there
/// (as a kill would), and the same call later resumes it.
pub fn search<E: Engine>(
    e: &mut E,
    dir: &RunDir,
    cfg: &RunConfig,
    theta0: &[f32],
    mut on_epoch: impl FnMut(&EpochEvent) -> ControlFlow<()>,
) -> Result<History> {
    cfg.search.validate()?;
    std::fs::create_dir_all(&dir.root).map_err(|err| Error::io(&dir.root, err))?;
    let n = e.num_train();
    let (policy, mut history) = match dir.read_policy()? {
        Some(saved) => {
            let old = dir.read_config()?;
            if old != *cfg {
                return Err(Error::config(
                    "output directory",
                    dir.root.display(),
                    format!("holds a different search ({} vs {}); use another directory or remove it", describe(&old), describe(cfg)),
                ));
            }
            saved
        }
        None => {
            dir.write_config(cfg)?;
            (Policy::constant(cfg.search.steps, n), History::default())
        }
    };
    if policy.steps != cfg.search.steps || policy.examples != n {
        return Err(Error::shape(
            "saved policy",
            format!("[{}, {n}]", cfg.search.steps),
            format!("[{}, {}]", policy.steps, policy.examples),
        ));
    }
    let epochs = cfg.search.epochs;
    let done = history.epochs_done();
    if done >= epochs && history.j.len() > epochs {
        return Ok(history);
    }
    let mut search = Search::new(e, &cfg.search, &to_real(theta0), &to_real(&policy.gamma), done)?;
    while search.epoch() < epochs {
        let start = Instant::now();
        let fwd = search.step(e)?;
        history.j.push(fwd.j);
        history.cr.push(compression_ratio(&fwd.dev, 2));
        history.seconds.push(start.elapsed().as_secs_f64());
        let gamma = to_f32(&search.policy(e)?);
        dir.write_policy(&Policy { steps: cfg.search.steps, examples: n, gamma }, &history)?;
        if on_epoch(&EpochEvent { epoch: search.epoch(), epochs, history: &history }).is_break() {
            return Ok(history);
        }
    }
    let fwd = search.evaluate(e)?;
    history.j.push(fwd.j);
    history.cr.push(compression_ratio(&fwd.dev, 2));
    let gamma = to_f32(&search.policy(e)?);
    dir.write_policy(&Policy { steps: cfg.search.steps, examples: n, gamma }, &history)?;
    let mut summary = dir.read_summary().unwrap_or_default();
    summary.task = cfg.task.clone();
    summary.backend = cfg.backend.clone();
    summary.steps = cfg.search.steps;
    summary.epochs = epochs;
    summary.epochs_done = history.epochs_done();
    summary.j = history.j.clone();
    summary.cr = history.cr.clone();
    summary.seconds_per_epoch = history.seconds_per_epoch();
    dir.write_summary(&summary)?;
    Ok(history)
}

fn describe(cfg: &RunConfig) -> String {
    let s = &cfg.search;
    format!("{} on {} with T={} η={} E={} lr={}", cfg.task, cfg.data.display(), s.steps, s.eta, s.epochs, s.outer_lr)
}

/// Retrains with the saved policy and with the constant policy, writes curves.csv and the
/// evaluation into summary.json, and returns it.
pub fn evaluate<E: Engine>(e: &mut E, dir: &RunDir, theta0: &[f32]) -> Result<Evaluation> {
    let cfg = dir.read_config()?;
    let (policy, history) =
        dir.read_policy()?.ok_or_else(|| Error::bad_input(dir.root.display().to_string(), "no policy.safetensors: run a search first"))?;
    if policy.examples != e.num_train() {
        return Err(Error::shape("policy examples", e.num_train(), policy.examples));
    }
    let unroll = cfg.search.unroll();
    let theta0 = to_real(theta0);
    let constant = Policy::constant(policy.steps, policy.examples);
    let (c, law_c) = eval::retrain(e, &theta0, &to_real(&constant.gamma), unroll, true)?;
    let (p, law_p) = eval::retrain(e, &theta0, &to_real(&policy.gamma), unroll, true)?;
    let area = |v: &[f64]| v.iter().sum::<f64>() / unroll.steps as f64;
    let last = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN);
    let evaluation = Evaluation {
        ar: eval::acceleration_ratio(&p.test, last(&c.test)),
        ar_dev: eval::acceleration_ratio(&p.dev, last(&c.dev)),
        auc_test_constant: area(&c.test),
        auc_test_policy: area(&p.test),
        auc_dev_constant: area(&c.dev),
        auc_dev_policy: area(&p.dev),
        final_test_constant: last(&c.test),
        final_test_policy: last(&p.test),
        law_constant: law_c.unwrap_or_default(),
        law_policy: law_p.unwrap_or_default(),
    };
    dir.write_curves(&c, &p)?;
    let mut summary = dir.read_summary().unwrap_or_else(|_| Summary {
        task: cfg.task.clone(),
        backend: cfg.backend.clone(),
        steps: cfg.search.steps,
        epochs: cfg.search.epochs,
        epochs_done: history.epochs_done(),
        j: history.j.clone(),
        cr: history.cr.clone(),
        seconds_per_epoch: history.seconds_per_epoch(),
        ..Summary::default()
    });
    summary.ar = evaluation.ar;
    summary.evaluation = Some(evaluation.clone());
    dir.write_summary(&summary)?;
    Ok(evaluation)
}
