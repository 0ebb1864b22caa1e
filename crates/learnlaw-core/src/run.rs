//! A run directory: the resolved configuration, the policy (saved as the search goes, so a
//! stopped or killed search resumes where it was saved), the curves and the summary.
//!
//! ```text
//! RUN_DIR/config.toml          what was run (task, backend, data file + fingerprint, settings)
//! RUN_DIR/policy.safetensors   γ [T, N] after the last saved epoch + the J history (metadata);
//!                              saved after an epoch when SAVE_INTERVAL has passed since the last
//!                              save, when the caller stops the search, and at the end; with the
//!                              Adam optimiser also its moments (`adam_m`, `adam_v` [T, N] f64,
//!                              metadata `adam_steps`), so a resumed search continues exactly
//! RUN_DIR/summary.json         J and CR per epoch, seconds per epoch, AR, Learning-Law statistics
//! RUN_DIR/curves.csv           dev and test loss per step, constant vs optimised policy
//! RUN_DIR/best_policy.safetensors  with a held-out part of the desired set (`holdout`): the
//!                              policy of lowest held-out J so far (metadata: its epoch and J);
//!                              `evaluate` then evaluates it (early stopping)
//! RUN_DIR/.lock                the OS lock of the process that owns the directory (its pid and
//!                              command line inside, for the message of one that finds it taken)
//! ```
//!
//! A run directory is owned by one process at a time (`RunDir::create`, `RunDir::open`: an OS file
//! lock, released however the process ends), every file is checked against config.toml before it
//! is used (`RunDir::read_checked`), files learnlaw did not write are never replaced, and every
//! output is written atomically, summary.json last (`files`).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::analysis::EvalCurves;
use crate::engine::Engine;
use crate::eval::{self, Curves, LawStats};
use crate::files::{self, write_atomic, Staged};
use crate::policy::Policy;
use crate::search::{compression_ratio, AdamState, Search, SearchConfig};
use crate::tensor_file::{self, Tensor, Values};
use crate::transformer::TransformerConfig;
use crate::unroll::Workspace;
use crate::{memory, Error, Real, Result};

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
    /// Seed of θ_0 when the data file has no `theta0` (and no `theta0` file is given).
    pub init_seed: u64,
    /// θ_0 from a file (`--theta0`, official or learnlaw format, see `theta`): it takes the place
    /// of the seed and of a perceptron data file's `theta0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub theta0: Option<Theta0File>,
    /// The Transformer task's model (None for the perceptron, whose model is fixed by the data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<TransformerConfig>,
    pub search: SearchConfig,
    /// A run of `learnlaw train` (no search): where its policy came from. Its `search` section then
    /// holds T and η, with one "epoch" whose policy is the one trained with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained: Option<TrainedPolicy>,
}

/// The policy of a `learnlaw train` run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainedPolicy {
    /// `constant`, `online` or `run` (a searched policy from another run directory).
    pub source: String,
    /// The online rule (source `online`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<crate::online::OnlineConfig>,
    /// The fraction of the desired set held out to gate the online rule (the last ⌈F·K⌉ examples).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_holdout: Option<f64>,
    /// The run directory the policy was read from (source `run`), absolute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<PathBuf>,
}

/// A θ_0 file of a run: where it is and what it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Theta0File {
    /// The file (safetensors), absolute.
    pub path: PathBuf,
    /// FNV-1a 64 of its bytes, so a changed file is not silently resumed or evaluated from.
    pub fingerprint: String,
}

impl Theta0File {
    /// The file at `path` (made absolute) and its fingerprint.
    pub fn new(path: &Path) -> Result<Self> {
        let abs = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        Ok(Theta0File { fingerprint: fingerprint(&abs)?, path: abs })
    }

    /// Errors unless the file at `path` holds what this one held (its fingerprint).
    pub fn check_same(&self, path: &Path) -> Result<()> {
        let now = fingerprint(path)?;
        if now != self.fingerprint {
            let problem = format!(
                "is not the θ_0 the search started from ({}, fingerprint {}; this file's is {now})",
                self.path.display(),
                self.fingerprint
            );
            return Err(Error::bad_input(path.display().to_string(), problem));
        }
        Ok(())
    }
}

/// A setting that differs between a run's config.toml and a new search's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Difference {
    /// The setting's key in config.toml, e.g. `search.outer_lr`.
    pub key: String,
    /// Its value in the run (`old`) and in the new configuration ("not set" where absent).
    pub old: String,
    pub new: String,
}

impl Difference {
    /// Why a resumed search may change this setting, if it may; every other setting decides the
    /// result, so a resume must keep it.
    pub fn allowed_on_resume(&self) -> Option<&'static str> {
        match self.key.as_str() {
            "search.checkpoint_every" => Some("it only trades memory against recomputation: the result is the same"),
            "backend" => {
                Some("the saved policy is a valid start on any backend; results agree to the backends' tolerance, not bit for bit")
            }
            "data" | "theta0.path" => Some("the file moved; its contents (fingerprint) are the same"),
            _ => None,
        }
    }

    /// The setting as a user sets it: the command-line option, or what in the data decides it.
    pub fn setting(&self) -> String {
        match self.key.as_str() {
            "data_fingerprint" => "the data file's contents (fingerprint)".into(),
            "theta0.path" => "--theta0".into(),
            "theta0.fingerprint" => "the --theta0 file's contents (fingerprint)".into(),
            "model.vocab_size" => "the data's vocabulary size".into(),
            "model.context" => "the data's context length".into(),
            "search.reg_l2" => "--reg L2".into(),
            key => format!("--{}", key.rsplit('.').next().unwrap_or(key).replace('_', "-")),
        }
    }
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Without a θ_0 file, θ_0 comes from the seed (or a perceptron data file's theta0).
        let value = |v: &str| match (self.key.starts_with("theta0."), v) {
            (true, "not set") => "none (θ_0 from --init-seed or the data)".to_string(),
            _ => v.to_string(),
        };
        write!(f, "{}: {} in the run, {} now", self.setting(), value(&self.old), value(&self.new))
    }
}

impl RunConfig {
    /// The settings in which `new` differs from this configuration, in config.toml's order of keys.
    pub fn differences(&self, new: &RunConfig) -> Result<Vec<Difference>> {
        let (old, new) = (flat_settings(self)?, flat_settings(new)?);
        let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        let value = |m: &BTreeMap<String, String>, k: &String| m.get(k).cloned().unwrap_or_else(|| "not set".into());
        Ok(keys
            .into_iter()
            .filter(|k| old.get(*k) != new.get(*k))
            .map(|k| Difference { key: k.clone(), old: value(&old, k), new: value(&new, k) })
            .collect())
    }
}

/// A configuration as `key.path = value` pairs (unset options absent).
fn flat_settings(cfg: &RunConfig) -> Result<BTreeMap<String, String>> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    walk(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out);
                }
            }
            toml::Value::String(s) => {
                out.insert(prefix.into(), s.clone());
            }
            other => {
                out.insert(prefix.into(), other.to_string());
            }
        }
    }
    let value = toml::Value::try_from(cfg).map_err(|e| Error::format("config.toml", e))?;
    let mut out = BTreeMap::new();
    walk("", &value, &mut out);
    Ok(out)
}

/// The J history of a search; `j[e]` = J(γ_e), e = 0 the constant policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub j: Vec<f64>,
    /// Compression ratio of each policy on the desired set (|V| = 2).
    pub cr: Vec<f64>,
    /// Wall-clock seconds of each completed outer epoch.
    pub seconds: Vec<f64>,
    /// With a held-out desired part: J of γ_e on it (like `j`, epoch 0 = the constant policy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heldout_j: Vec<f64>,
    /// AR of γ_e on the search's desired set against the constant policy γ_0 (like `j`): free,
    /// since every epoch's forward pass yields γ_e's desired-loss curve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ar_dev: Vec<Option<f64>>,
    /// L_dev(θ_T) of γ_e (like `j`); entry 0 is the target AR_dev measures against.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub final_dev: Vec<f64>,
    /// The first step at which the constant policy reaches its own final L_dev: AR_dev's numerator
    /// (`eval::acceleration_ratio_against`; histories saved before it count T).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constant_dev_steps: Option<usize>,
}

impl History {
    /// Outer epochs completed (the last entry of `j` may be the final policy's, which has no epoch).
    pub fn epochs_done(&self) -> usize {
        self.seconds.len()
    }
    /// 0 before the first epoch (an empty float sum is −0).
    pub fn seconds_per_epoch(&self) -> f64 {
        if self.seconds.is_empty() {
            return 0.0;
        }
        self.seconds.iter().sum::<f64>() / self.seconds.len() as f64
    }
    /// The epoch of lowest held-out J (the first of equals), if there is a held-out part.
    pub fn best_epoch(&self) -> Option<usize> {
        best_index(&self.heldout_j)
    }
    /// The epoch of lowest J on the search's desired set (the first of equals).
    pub fn lowest_j_epoch(&self) -> Option<usize> {
        best_index(&self.j)
    }

    /// Records J, CR and AR_dev of the policy whose unroll `fwd` is.
    fn record(&mut self, fwd: &crate::unroll::Forward, classes: usize) {
        // A history saved before AR tracking existed has no target: leave it untracked.
        let tracked = self.final_dev.len() == self.j.len();
        self.j.push(fwd.j);
        self.cr.push(compression_ratio(&fwd.dev, classes));
        if tracked {
            let last = fwd.dev.last().copied().unwrap_or(f64::NAN);
            if self.final_dev.is_empty() {
                // γ_0 is the constant policy: its curve sets the target and the steps to it.
                self.constant_dev_steps = eval::steps_to(&fwd.dev, last);
            }
            let target = self.final_dev.first().copied().unwrap_or(last);
            self.final_dev.push(last);
            let constant_steps = self.constant_dev_steps.unwrap_or(fwd.dev.len().saturating_sub(1));
            self.ar_dev.push(eval::speedup(constant_steps, &fwd.dev, target));
        }
    }

    /// For each AR target, the first outer epoch whose policy reaches it on the desired set.
    pub fn epochs_to_ar_dev(&self, targets: &[f64]) -> Vec<EpochsTo> {
        targets.iter().map(|&ar| EpochsTo { ar, epoch: self.ar_dev.iter().position(|a| a.is_some_and(|a| a >= ar)) }).collect()
    }
}

/// The first outer epoch whose policy reaches an acceleration ratio (None: none did).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochsTo {
    pub ar: f64,
    pub epoch: Option<usize>,
}

/// The AR targets `summary.json` reports epochs-to for (5.5: the paper's perceptron number).
pub const AR_TARGETS: [f64; 5] = [1.5, 2.0, 3.0, 5.0, 5.5];

fn best_index(v: &[f64]) -> Option<usize> {
    v.iter()
        .enumerate()
        .fold(None, |best: Option<(usize, f64)>, (i, &j)| match best {
            Some((_, b)) if b <= j => best,
            _ => Some((i, j)),
        })
        .map(|(i, _)| i)
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
    /// The first step at which the constant policy reaches its own final test / dev loss: T when
    /// its curve falls to the end, less when it is flat or rises (AR's numerator).
    #[serde(default)]
    pub constant_steps_test: Option<usize>,
    #[serde(default)]
    pub constant_steps_dev: Option<usize>,
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
    /// Desired-set (whole dev set) and test-set acceleration ratios (copied from `evaluation`).
    #[serde(default)]
    pub ar_dev: Option<f64>,
    #[serde(default)]
    pub ar_test: Option<f64>,
    /// J on the held-out part of the desired set per epoch (empty without `holdout`).
    #[serde(default)]
    pub heldout_j: Vec<f64>,
    /// The epoch of lowest held-out J: the policy in best_policy.safetensors.
    #[serde(default)]
    pub best_epoch: Option<usize>,
    /// The epoch of the policy `evaluation` describes (the best one with `holdout`, else the last).
    #[serde(default)]
    pub evaluated_epoch: Option<usize>,
    /// The search's completed epochs when `evaluation` was made: fewer than the policy file's
    /// means the evaluation is stale (the search went on after it).
    #[serde(default)]
    pub evaluation_epochs_done: Option<usize>,
    /// AR of each epoch's policy on the search's desired set (like `j`).
    #[serde(default)]
    pub ar_dev_by_epoch: Vec<Option<f64>>,
    /// The first outer epoch reaching each AR on the search's desired set.
    #[serde(default)]
    pub epochs_to_ar_dev: Vec<EpochsTo>,
    pub evaluation: Option<Evaluation>,
}

/// A run directory: paths to its files, and once `create` or `open` succeeded, its OS lock.
pub struct RunDir {
    pub root: PathBuf,
    /// RUN_DIR/.lock, locked: this process owns the directory until the `RunDir` is dropped (the
    /// OS releases the lock however the process ends).
    lock: OnceLock<File>,
}

const HISTORY_KEY: &str = "history";
const ADAM_STEPS_KEY: &str = "adam_steps";
const BEST_EPOCH_KEY: &str = "epoch";
const LOCK_FILE: &str = ".lock";
/// What `reproduce` writes into a run directory before its search starts (and so before config.toml).
const GENERATED_DATA: [&str; 2] = ["data.safetensors", "tokenizer.json"];

/// The files of a run, read and checked against its config.toml by `RunDir::read_checked`.
#[derive(Debug)]
pub struct CheckedRun {
    pub config: RunConfig,
    /// N, the training examples of the run's data (None when the data file is gone).
    pub examples: Option<usize>,
    /// policy.safetensors and its history (None before the search first saved).
    pub saved: Option<(Policy, History)>,
    /// best_policy.safetensors and its epoch (a search with a held-out part).
    pub best: Option<(Policy, usize)>,
    /// summary.json (None before the search finished or was evaluated).
    pub summary: Option<Summary>,
}

impl CheckedRun {
    /// The policy an evaluation (and an export) retrains with, and its epoch: the best one by
    /// held-out J when the search had a held-out part, else the last saved.
    pub fn evaluated_policy(&self, dir: &RunDir) -> Result<(Policy, usize)> {
        let (policy, history) = self
            .saved
            .as_ref()
            .ok_or_else(|| Error::bad_input(dir.root.display().to_string(), "no policy.safetensors: run a search first"))?;
        Ok(match &self.best {
            Some((best, epoch)) if self.config.search.holdout.is_some() => (best.clone(), *epoch),
            _ => (policy.clone(), history.epochs_done()),
        })
    }
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into(), lock: OnceLock::new() }
    }
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn policy_path(&self) -> PathBuf {
        self.root.join("policy.safetensors")
    }
    pub fn best_policy_path(&self) -> PathBuf {
        self.root.join("best_policy.safetensors")
    }
    pub fn summary_path(&self) -> PathBuf {
        self.root.join("summary.json")
    }
    pub fn curves_path(&self) -> PathBuf {
        self.root.join("curves.csv")
    }
    pub fn report_path(&self) -> PathBuf {
        self.root.join("report")
    }

    /// Takes the directory for a search, creating it. Refuses a file in its place, a folder with
    /// files learnlaw did not write (an existing folder without config.toml may hold only the
    /// data `reproduce` generates), and a directory another process owns. Nothing to do when this
    /// handle owns it already.
    pub fn create(&self) -> Result<()> {
        if self.lock.get().is_some() {
            return Ok(());
        }
        if self.root.exists() && !self.root.is_dir() {
            return Err(Error::bad_input(self.root.display().to_string(), "is a file, not a folder: name a new or existing run folder"));
        }
        std::fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, e))?;
        self.lock()?;
        self.check_ours()
    }

    /// Takes an existing run directory (to evaluate or report on it): its config.toml must exist.
    pub fn open(&self) -> Result<()> {
        if self.lock.get().is_some() {
            return Ok(());
        }
        if !self.config_path().is_file() {
            return Err(Error::bad_input(self.root.display().to_string(), "not a run directory (no config.toml)"));
        }
        self.lock()
    }

    /// Takes the OS lock on RUN_DIR/.lock (or says who holds it), then removes the temporaries
    /// that killed writers left.
    fn lock(&self) -> Result<()> {
        let path = self.root.join(LOCK_FILE);
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = if holder.trim().is_empty() { "pid unknown".to_string() } else { holder.trim().to_string() };
                return Err(Error::Busy { dir: self.root.clone(), holder });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        // Only informs a process that finds the lock taken, so a full disk does not stop us here.
        let holder = format!("pid {}: {}", std::process::id(), std::env::args().collect::<Vec<_>>().join(" "));
        let _ = file.set_len(0).and_then(|()| (&file).write_all(holder.as_bytes()));
        files::remove_stale_temporaries(&self.root)?;
        files::remove_stale_temporaries(&self.report_path())?;
        let _ = self.lock.set(file);
        Ok(())
    }

    /// Refuses a folder whose files learnlaw would replace but did not write.
    fn check_ours(&self) -> Result<()> {
        if !self.config_path().exists() {
            let entries = std::fs::read_dir(&self.root).map_err(|e| Error::io(&self.root, e))?;
            for entry in entries {
                let name = entry.map_err(|e| Error::io(&self.root, e))?.file_name().to_string_lossy().into_owned();
                if !(name == LOCK_FILE || GENERATED_DATA.contains(&name.as_str()) || files::is_temporary(&name)) {
                    return Err(Error::bad_input(
                        self.root.display().to_string(),
                        format!("is not empty and not a learnlaw run (it holds {name}): use a new or empty folder"),
                    ));
                }
            }
            return Ok(());
        }
        let not_ours = |path: PathBuf, e: Error| {
            let problem = match e {
                Error::Format { problem, .. } => problem,
                e => e.to_string(),
            };
            Error::bad_input(
                path.display().to_string(),
                format!("was not written by learnlaw ({problem}); refusing to replace it: use another folder"),
            )
        };
        self.read_config().map_err(|e| not_ours(self.config_path(), e))?;
        if self.summary_path().exists() {
            self.read_summary().map_err(|e| not_ours(self.summary_path(), e))?;
        }
        if self.curves_path().exists() {
            EvalCurves::read(&self.curves_path()).map_err(|e| not_ours(self.curves_path(), e))?;
        }
        Ok(())
    }

    /// Reads the run's files and checks each against config.toml before any is used: the data
    /// file (its fingerprint; N, its training examples), both policies (γ [T, N]), the history
    /// (epochs), summary.json (task, T, epochs) and curves.csv (T + 1 rows). Search (to resume),
    /// eval and report all read a run through this. A data file that is gone is no error here (a
    /// report needs only the run's own files; search and eval fail to load it).
    pub fn read_checked(&self) -> Result<CheckedRun> {
        let config = self.read_config()?;
        let examples = check_data(&config)?;
        check_theta0(&config)?;
        let (steps, epochs) = (config.search.steps, config.search.epochs);
        let check_shape = |path: PathBuf, p: &Policy| {
            let n = examples.unwrap_or(p.examples);
            if (p.steps, p.examples) == (steps, n) {
                return Ok(());
            }
            Err(Error::shape(
                format!("γ in {} (another search's?)", path.display()),
                format!("[{steps}, {n}] (T of config.toml, N of the data)"),
                format!("[{}, {}]", p.steps, p.examples),
            ))
        };
        let saved = self.read_policy()?;
        if let Some((policy, history)) = &saved {
            check_shape(self.policy_path(), policy)?;
            let (done, js) = (history.epochs_done(), history.j.len());
            if done > epochs || !(js == done || (done == epochs && js == epochs + 1)) {
                let problem = format!("its history ({done} epochs, {js} values of J) does not fit {epochs} epochs of config.toml");
                return Err(Error::format(self.policy_path(), problem));
            }
        }
        let done = saved.as_ref().map_or(0, |(_, h)| h.epochs_done());
        let best = self.read_best_policy()?;
        if let Some((policy, epoch)) = &best {
            check_shape(self.best_policy_path(), policy)?;
            if *epoch > done {
                return Err(Error::format(self.best_policy_path(), format!("best epoch {epoch} is beyond the {done} epochs searched")));
            }
        }
        let summary = if self.summary_path().exists() { Some(self.read_summary()?) } else { None };
        if let Some(s) = &summary {
            let evaluated = s.evaluation_epochs_done.unwrap_or(0);
            if saved.is_none()
                || (s.task.as_str(), s.steps, s.epochs) != (config.task.as_str(), steps, epochs)
                || s.epochs_done.max(evaluated) > done
            {
                let problem = format!(
                    "it describes {} with T = {}, {} of {} epochs, but config.toml and the policy say {} with T = {steps}, {done} of {epochs}",
                    s.task, s.steps, s.epochs_done, s.epochs, config.task
                );
                return Err(Error::format(self.summary_path(), problem));
            }
        }
        if self.curves_path().exists() {
            let curves = EvalCurves::read(&self.curves_path())?;
            if curves.steps() != steps {
                let what = self.curves_path().display().to_string();
                return Err(Error::shape(what, format!("{steps} steps (T of config.toml)"), format!("{} steps", curves.steps())));
            }
        }
        Ok(CheckedRun { config, examples, saved, best, summary })
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

    /// A new search in this directory: the results of an earlier one (whose policy is gone) must
    /// not mix with it, so they go, and the configuration is written.
    fn start_fresh(&self, cfg: &RunConfig) -> Result<()> {
        if self.best_policy_path().exists() {
            self.read_best_policy()?;
        }
        for path in [self.best_policy_path(), self.summary_path(), self.curves_path()] {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&path, e)),
                _ => {}
            }
        }
        self.write_config(cfg)
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

    fn write_policy(&self, policy: &Policy, history: &History, adam: Option<&AdamState>) -> Result<()> {
        let json = serde_json::to_string(history).map_err(|e| Error::format(self.policy_path(), e))?;
        let mut meta = HashMap::from([(HISTORY_KEY.to_string(), json)]);
        let mut extra = Vec::new();
        if let Some(a) = adam {
            meta.insert(ADAM_STEPS_KEY.to_string(), a.steps.to_string());
            let shape = vec![policy.steps, policy.examples];
            extra.push(Tensor { name: "adam_m", shape: shape.clone(), values: Values::F64(&a.m) });
            extra.push(Tensor { name: "adam_v", shape, values: Values::F64(&a.v) });
        }
        policy.save_with(&self.policy_path(), meta, extra)
    }

    /// The Adam state saved with the policy, if any.
    pub fn read_adam_state(&self) -> Result<Option<AdamState>> {
        let path = self.policy_path();
        if !path.exists() {
            return Ok(None);
        }
        let bytes = tensor_file::read(&path)?;
        let Some(steps) = tensor_file::metadata(&path, &bytes)?.get(ADAM_STEPS_KEY).cloned() else { return Ok(None) };
        let steps = steps.parse().map_err(|e| Error::format(&path, format!("adam_steps {steps:?}: {e}")))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::format(&path, e))?;
        let moment = |name: &str| -> Result<Vec<f64>> {
            let t = st.tensor(name).map_err(|_| Error::format(&path, format!("adam_steps is set but tensor `{name}` is missing")))?;
            tensor_file::to_f64(name, &t)
        };
        Ok(Some(AdamState { m: moment("adam_m")?, v: moment("adam_v")?, steps }))
    }

    /// The best policy by held-out J and its epoch, if the search had a held-out part.
    pub fn read_best_policy(&self) -> Result<Option<(Policy, usize)>> {
        let path = self.best_policy_path();
        if !path.exists() {
            return Ok(None);
        }
        let (policy, meta) = Policy::load(&path)?;
        let epoch =
            meta.get(BEST_EPOCH_KEY).and_then(|e| e.parse().ok()).ok_or_else(|| Error::format(&path, "no best epoch in the metadata"))?;
        Ok(Some((policy, epoch)))
    }

    fn write_best_policy(&self, policy: &Policy, epoch: usize, heldout_j: f64) -> Result<()> {
        let meta = HashMap::from([(BEST_EPOCH_KEY.to_string(), epoch.to_string()), ("heldout_j".to_string(), heldout_j.to_string())]);
        policy.save(&self.best_policy_path(), meta)
    }

    pub fn read_summary(&self) -> Result<Summary> {
        let path = self.summary_path();
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::format(&path, e))
    }

    pub fn write_summary(&self, summary: &Summary) -> Result<()> {
        write_atomic(&self.summary_path(), &self.summary_json(summary)?)
    }

    fn summary_json(&self, summary: &Summary) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(summary).map_err(|e| Error::format(self.summary_path(), e))
    }
}

/// Checks the run's data file against config.toml's fingerprint and returns N, its training
/// examples (rows of `x_train`, or of `train` for the Transformer's token data); None if it is gone.
fn check_data(cfg: &RunConfig) -> Result<Option<usize>> {
    let bytes = match std::fs::read(&cfg.data) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        read => read.map_err(|e| Error::io(&cfg.data, e))?,
    };
    if fingerprint_of(&bytes) != cfg.data_fingerprint {
        let problem = "changed since the search ran (fingerprint mismatch): restore it, or search again in a new folder";
        return Err(Error::bad_input(cfg.data.display().to_string(), problem));
    }
    let name = if cfg.task == "transformer" { "train" } else { "x_train" };
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::format(&cfg.data, e))?;
    let t = st.tensor(name).map_err(|_| Error::format(&cfg.data, format!("no tensor `{name}` for the {} task", cfg.task)))?;
    Ok(Some(t.shape().first().copied().unwrap_or(0)))
}

/// Checks the run's θ_0 file, if it has one and it is still there, against its fingerprint.
fn check_theta0(cfg: &RunConfig) -> Result<()> {
    match &cfg.theta0 {
        Some(t) if t.path.exists() => t.check_same(&t.path).map_err(|_| {
            let problem = "changed since the search ran (fingerprint mismatch): restore it, or search again in a new folder";
            Error::bad_input(format!("θ_0 file {}", t.path.display()), problem)
        }),
        _ => Ok(()),
    }
}

/// curves.csv's text: dev and test loss per step, constant and optimised policy.
fn curves_csv(constant: &Curves, policy: &Curves) -> String {
    let mut out = String::from("step,dev_constant,test_constant,dev_policy,test_policy\n");
    for t in 0..constant.dev.len() {
        out += &format!("{t},{},{},{},{}\n", constant.dev[t], constant.test[t], policy.dev[t], policy.test[t]);
    }
    out
}

/// FNV-1a 64 of a file's bytes, as hex.
pub fn fingerprint(path: &Path) -> Result<String> {
    Ok(fingerprint_of(&std::fs::read(path).map_err(|e| Error::io(path, e))?))
}

fn fingerprint_of(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    format!("{h:016x}")
}

/// Values of θ_0 or γ (f32, or f64 kept exact for an f64 engine) for an engine of precision `R`.
fn to_real<R: Real, T: Copy + Into<f64>>(v: &[T]) -> Vec<R> {
    v.iter().map(|&x| R::of(x.into())).collect()
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

/// How often a running search saves its policy. Writing γ every epoch costs 38 ms at the paper's
/// size (33 MB; development box), as much as a whole GPU epoch's 4000 steps at a few µs each; a
/// kill loses at most this much work, a stop nothing.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(10);

/// Runs (or resumes) the policy search of `cfg` in `dir`, saving the policy as it goes (see
/// `SAVE_INTERVAL`). Returns the history: J for the constant policy, every epoch's policy and,
/// once all epochs are done, the final one. `on_epoch` runs after each epoch; `Break` saves and
/// stops the search there, and the same call later resumes it.
pub fn search<E: Engine, T: Copy + Into<f64>>(
    e: &mut E,
    dir: &RunDir,
    cfg: &RunConfig,
    theta0: &[T],
    on_epoch: impl FnMut(&EpochEvent) -> ControlFlow<()>,
) -> Result<History> {
    search_with_holdout(e, None, dir, cfg, theta0, on_epoch)
}

/// J on a held-out desired set: an engine whose dev set is the held-out part, and its buffers.
struct HeldOut<'a, E: Engine> {
    e: &'a mut E,
    ws: Workspace<E>,
    theta0: E::Vec,
}

impl<'a, E: Engine> HeldOut<'a, E> {
    fn new<T: Copy + Into<f64>>(e: &'a mut E, cfg: &SearchConfig, theta0: &[T]) -> Result<Self> {
        // A forward pass only needs its running θ; √T checkpoints keep the unused buffers small.
        let every = (cfg.steps as f64).sqrt().ceil() as usize;
        let ws = Workspace::new(e, cfg.unroll(), every)?;
        let theta0 = e.upload(&to_real(theta0))?;
        Ok(HeldOut { e, ws, theta0 })
    }
    fn j(&mut self, gamma: &[E::Real]) -> Result<f64> {
        let gamma = self.e.upload(gamma)?;
        Ok(self.ws.forward(self.e, &self.theta0, &gamma)?.j)
    }
}

/// Checks that a search of `cfg` on `e` fits in memory, then takes `dir` for it (`RunDir::create`):
/// a refused search leaves nothing behind. `search` does this first; a caller may do it earlier.
pub fn take_for_search<E: Engine>(e: &E, dir: &RunDir, cfg: &RunConfig) -> Result<()> {
    cfg.search.validate()?;
    let n = e.num_train();
    let needed = cfg.search.memory_needed(e.num_params(), n, std::mem::size_of::<E::Real>());
    let advice = format!("lower the inner steps (--steps, now {}) or the training examples of the data (N = {n})", cfg.search.steps);
    memory::ensure_fits("this search", needed, &advice)?;
    dir.create()
}

/// Like `search`; with `heldout` (an engine of the same train set whose dev set is the held-out
/// part of the desired set, see `PerceptronData::split_dev`), also records each policy's J on the
/// held-out part and keeps the best one in best_policy.safetensors (early stopping). `e`'s dev set
/// is then the search part.
pub fn search_with_holdout<E: Engine, T: Copy + Into<f64>>(
    e: &mut E,
    heldout: Option<&mut E>,
    dir: &RunDir,
    cfg: &RunConfig,
    theta0: &[T],
    mut on_epoch: impl FnMut(&EpochEvent) -> ControlFlow<()>,
) -> Result<History> {
    if heldout.is_some() != cfg.search.holdout.is_some() {
        return Err(Error::config(
            "holdout",
            format!("{:?}", cfg.search.holdout),
            "a held-out engine is needed exactly when holdout is set",
        ));
    }
    take_for_search(e, dir, cfg)?;
    let n = e.num_train();
    let (policy, mut history, summary) = if dir.policy_path().exists() {
        let old = dir.read_config()?;
        let differences = old.differences(cfg)?;
        let blocking: Vec<String> = differences.iter().filter(|d| d.allowed_on_resume().is_none()).map(|d| d.to_string()).collect();
        if !blocking.is_empty() {
            let problem =
                format!("holds a different search ({}); use another directory, or the run's settings to resume it", blocking.join("; "));
            return Err(Error::config("output directory", dir.root.display(), problem));
        }
        // The allowed changes first: the files are then checked against the data as it is now.
        if !differences.is_empty() {
            dir.write_config(cfg)?;
        }
        let run = dir.read_checked()?;
        let (policy, history) = run.saved.ok_or_else(|| Error::format(dir.policy_path(), "disappeared while being read"))?;
        (policy, history, run.summary)
    } else {
        dir.start_fresh(cfg)?;
        (Policy::constant(cfg.search.steps, n), History::default(), None)
    };
    if policy.examples != n {
        return Err(Error::shape("saved policy examples (the engine's training set)", n, policy.examples));
    }
    let epochs = cfg.search.epochs;
    let done = history.epochs_done();
    if done >= epochs && history.j.len() > epochs {
        return Ok(history);
    }
    let mut search = Search::new(e, &cfg.search, &to_real(theta0), &to_real(&policy.gamma), done)?;
    if let Some(state) = dir.read_adam_state()? {
        search.resume_adam(state)?;
    }
    let mut heldout = heldout.map(|h| HeldOut::new(h, &cfg.search, theta0)).transpose()?;
    if let Some(h) = &heldout {
        if h.e.num_train() != n {
            return Err(Error::shape("held-out engine examples", n, h.e.num_train()));
        }
    }
    history.heldout_j.truncate(history.epochs_done());
    // Held-out J of the current policy γ_e; saves it as the best when it beats all before.
    let track_best = |search: &Search<E>, e: &mut E, history: &mut History, h: &mut HeldOut<E>| -> Result<()> {
        let epoch = history.heldout_j.len();
        let gamma = search.policy(e)?;
        let j = h.j(&gamma)?;
        if history.heldout_j.iter().all(|&b| j < b) {
            dir.write_best_policy(&Policy { steps: cfg.search.steps, examples: n, gamma: to_f32(&gamma) }, epoch, j)?;
        }
        history.heldout_j.push(j);
        Ok(())
    };
    let classes = e.num_classes();
    // Saves γ with the history, never a policy off the simplex: after a failed epoch (`only_valid`)
    // γ may hold what the failing update left, and is then not saved; otherwise such a γ means
    // the update's numbers were too large for the precision, an error.
    let save_policy = |search: &Search<E>, e: &mut E, history: &History, only_valid: bool| -> Result<()> {
        let policy = Policy { steps: cfg.search.steps, examples: n, gamma: to_f32(&search.policy(e)?) };
        match policy.validate() {
            Err(_) if only_valid => return Ok(()),
            Err(err) => {
                let j = history.j.last().copied().unwrap_or(f64::NAN);
                return Err(Error::Numerical(format!(
                    "the outer update left the policy off the simplex ({err}) at J = {j:e}: the policy gradient is too large \
                     for the precision; lower the outer learning rate or the inner learning rate η = {:?}",
                    cfg.search.eta
                )));
            }
            Ok(()) => {}
        }
        dir.write_policy(&policy, history, search.adam_state())
    };
    let save = |search: &Search<E>, e: &mut E, history: &History| save_policy(search, e, history, false);
    let (mut saved_at, mut saved_epochs) = (Instant::now(), done);
    while search.epoch() < epochs {
        if let Some(h) = heldout.as_mut() {
            track_best(&search, e, &mut history, h)?;
        }
        let start = Instant::now();
        let fwd = match search.step(e) {
            Ok(fwd) => fwd,
            Err(err) => {
                // Keep the epochs since the last save, when the failure left γ as the last epoch
                // made it (it failed in the unroll, or its update was refused before changing γ).
                if history.epochs_done() > saved_epochs {
                    save_policy(&search, e, &history, true)?;
                }
                return Err(err);
            }
        };
        history.record(&fwd, classes);
        history.seconds.push(start.elapsed().as_secs_f64());
        let stop = on_epoch(&EpochEvent { epoch: search.epoch(), epochs, history: &history }).is_break();
        if stop || saved_at.elapsed() >= SAVE_INTERVAL {
            save(&search, e, &history)?;
            (saved_at, saved_epochs) = (Instant::now(), history.epochs_done());
        }
        if stop {
            return Ok(history);
        }
    }
    if let Some(h) = heldout.as_mut() {
        track_best(&search, e, &mut history, h)?;
    }
    let fwd = search.evaluate(e)?;
    history.record(&fwd, classes);
    save(&search, e, &history)?;
    // After the policy: a summary never describes a search whose final policy is not saved.
    let mut summary = summary.unwrap_or_default();
    summary.set_search(cfg, &history);
    dir.write_summary(&summary)?;
    Ok(history)
}

impl Summary {
    /// The search's part of the summary, from the run's config and the policy file's history.
    fn set_search(&mut self, cfg: &RunConfig, history: &History) {
        self.task = cfg.task.clone();
        self.backend = cfg.backend.clone();
        self.steps = cfg.search.steps;
        self.epochs = cfg.search.epochs;
        self.epochs_done = history.epochs_done();
        self.j = history.j.clone();
        self.cr = history.cr.clone();
        self.seconds_per_epoch = history.seconds_per_epoch();
        self.heldout_j = history.heldout_j.clone();
        self.best_epoch = history.best_epoch();
        self.ar_dev_by_epoch = history.ar_dev.clone();
        self.epochs_to_ar_dev = history.epochs_to_ar_dev(&AR_TARGETS);
    }
}

/// Takes `dir` for a `learnlaw train` run of `cfg` (`RunDir::create`), refusing a folder that
/// holds another run (a search, or a train run of other settings); the same run is replaced.
pub fn take_for_train(dir: &RunDir, cfg: &RunConfig) -> Result<()> {
    dir.create()?;
    if dir.config_path().exists() {
        let differences = dir.read_config()?.differences(cfg)?;
        if !differences.is_empty() {
            let list: Vec<String> = differences.iter().map(|d| d.to_string()).collect();
            return Err(Error::config(
                "output directory",
                dir.root.display(),
                format!("holds another run ({}); use another folder", list.join("; ")),
            ));
        }
    }
    Ok(())
}

/// Writes the run of `learnlaw train` into `dir` (taken with `RunDir::create`): config.toml, the
/// policy it trained with as policy.safetensors with a one-epoch history (epoch 0: the constant
/// policy, whose desired-loss curve is `constant_dev`; epoch 1: the policy, `policy_dev`, over
/// θ_0..θ_T) and summary.json, so that `evaluate` and the report read it like a search's. A folder
/// holding another run (a search, or a train run of other settings) is refused.
pub fn write_trained(
    dir: &RunDir,
    cfg: &RunConfig,
    policy: &Policy,
    constant_dev: &[f64],
    policy_dev: &[f64],
    seconds: f64,
    classes: usize,
) -> Result<History> {
    if cfg.trained.is_none() || cfg.search.epochs != 1 {
        return Err(Error::config("trained", format!("{:?}", cfg.trained), "a train run has a policy source and one epoch"));
    }
    policy.validate()?;
    let steps = cfg.search.steps;
    if policy.steps != steps {
        return Err(Error::shape("trained policy steps", steps, policy.steps));
    }
    for (what, curve) in [("constant", constant_dev), ("policy", policy_dev)] {
        if curve.len() != steps + 1 {
            return Err(Error::shape(format!("{what} desired-loss curve"), steps + 1, curve.len()));
        }
    }
    take_for_train(dir, cfg)?;
    dir.start_fresh(cfg)?;
    let mut history = History::default();
    let j = |dev: &[f64]| dev.iter().sum::<f64>() / steps as f64;
    history.record(&crate::unroll::Forward { j: j(constant_dev), dev: constant_dev.to_vec() }, classes);
    history.record(&crate::unroll::Forward { j: j(policy_dev), dev: policy_dev.to_vec() }, classes);
    history.seconds.push(seconds);
    dir.write_policy(policy, &history, None)?;
    let mut summary = Summary::default();
    summary.set_search(cfg, &history);
    dir.write_summary(&summary)?;
    Ok(history)
}

/// Retrains with the saved policy (the best one by held-out J when the search had a held-out part)
/// and with the constant policy on the whole data of the run (all of the desired set), writes
/// curves.csv and the evaluation into summary.json, and returns it.
pub fn evaluate<E: Engine, T: Copy + Into<f64>>(e: &mut E, dir: &RunDir, theta0: &[T]) -> Result<Evaluation> {
    evaluate_with_progress(e, dir, theta0, &mut || {})
}

/// `evaluate`, calling `step_done` after each of the 2·T retraining steps (constant policy first).
/// curves.csv and summary.json are written together, the summary last: a failed write (a full
/// disk) leaves both as they were.
pub fn evaluate_with_progress<E: Engine, T: Copy + Into<f64>>(
    e: &mut E,
    dir: &RunDir,
    theta0: &[T],
    step_done: &mut dyn FnMut(),
) -> Result<Evaluation> {
    dir.open()?;
    let run = dir.read_checked()?;
    let cfg = &run.config;
    let (policy, evaluated_epoch) = run.evaluated_policy(dir)?;
    let history = run.saved.as_ref().map(|(_, h)| h.clone()).unwrap_or_default();
    if policy.examples != e.num_train() {
        return Err(Error::shape("policy examples", e.num_train(), policy.examples));
    }
    let unroll = cfg.search.unroll();
    let theta0 = to_real(theta0);
    let constant = Policy::constant(policy.steps, policy.examples);
    let (c, law_c) = eval::retrain_with_progress(e, &theta0, &to_real(&constant.gamma), unroll, true, step_done)?;
    let (p, law_p) = eval::retrain_with_progress(e, &theta0, &to_real(&policy.gamma), unroll, true, step_done)?;
    let area = |v: &[f64]| v.iter().sum::<f64>() / unroll.steps as f64;
    let last = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN);
    let evaluation = Evaluation {
        ar: eval::acceleration_ratio_against(&p.test, &c.test),
        ar_dev: eval::acceleration_ratio_against(&p.dev, &c.dev),
        auc_test_constant: area(&c.test),
        auc_test_policy: area(&p.test),
        auc_dev_constant: area(&c.dev),
        auc_dev_policy: area(&p.dev),
        final_test_constant: last(&c.test),
        final_test_policy: last(&p.test),
        law_constant: law_c.unwrap_or_default(),
        law_policy: law_p.unwrap_or_default(),
        constant_steps_test: eval::steps_to(&c.test, last(&c.test)),
        constant_steps_dev: eval::steps_to(&c.dev, last(&c.dev)),
    };
    let mut summary = run.summary.unwrap_or_default();
    summary.set_search(cfg, &history);
    summary.ar = evaluation.ar;
    summary.ar_test = evaluation.ar;
    summary.ar_dev = evaluation.ar_dev;
    summary.evaluated_epoch = Some(evaluated_epoch);
    summary.evaluation_epochs_done = Some(history.epochs_done());
    summary.evaluation = Some(evaluation.clone());
    let mut staged = Staged::new();
    staged.write(&dir.curves_path(), curves_csv(&c, &p).as_bytes())?;
    staged.write(&dir.summary_path(), &dir.summary_json(&summary)?)?;
    staged.commit()?;
    Ok(evaluation)
}
