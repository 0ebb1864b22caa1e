//! `learnlaw._native`: the Python package's compiled half. The package (`python/learnlaw`) wraps
//! it in Python-friendly calls; this module holds only what needs Rust:
//! - `run`: a `learnlaw` command by its arguments on rayon's pool, the GIL released, progress to a
//!   callback;
//! - `read_run`, `replay_run`: a run directory as numpy arrays (γ, history, curves, θ_t);
//! - `Engine`: a task's engine operations on numpy arrays, for every backend present.
//!
//! Errors become the package's exception classes (`learnlaw.InputError`, …) by the kind of the
//! library's error, carrying its message.
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use clap::ValueEnum;
use learnlaw_cli::progress::{self, Event};
use learnlaw_cli::task::{host_engine, Task};
use learnlaw_cli::{Backend, Outcome};
use learnlaw_core::analysis::EvalCurves;
use learnlaw_core::data::{Examples, PerceptronData};
use learnlaw_core::host_engine::HostEngine;
use learnlaw_core::run::{History, RunDir};
use learnlaw_core::text::TokenData;
use learnlaw_core::transformer::{AttentionScale, TransformerConfig};
use learnlaw_core::{Error, Set};
use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict};

/// The package's exception class for an error: by the kind of the first library error in its
/// chain (`learnlaw.LearnlawError` when there is none); the message is the whole chain.
fn to_py(py: Python<'_>, err: &anyhow::Error) -> PyErr {
    let class = match err.chain().find_map(|c| c.downcast_ref::<Error>()) {
        _ if err.chain().any(|c| c.is::<clap::Error>()) => "InputError",
        Some(Error::Shape { .. } | Error::BadInput { .. } | Error::Config { .. } | Error::Format { .. }) => "InputError",
        Some(Error::Numerical(_)) => "NumericalError",
        Some(Error::Unavailable { .. }) => "UnavailableError",
        Some(Error::Device { .. }) => "DeviceError",
        Some(Error::Busy { .. }) => "BusyError",
        Some(Error::Memory { .. }) => "OutOfMemoryError",
        Some(Error::Io { .. }) | None => "LearnlawError",
    };
    let message = format!("{err:#}");
    match py.import("learnlaw").and_then(|m| m.getattr(class)) {
        Ok(class) => match class.call1((message.clone(),)) {
            Ok(instance) => PyErr::from_value(instance),
            Err(e) => e,
        },
        Err(_) => PyRuntimeError::new_err(message),
    }
}

trait OrPy<T> {
    fn or_py(self, py: Python<'_>) -> PyResult<T>;
}

impl<T, E: Into<anyhow::Error>> OrPy<T> for Result<T, E> {
    fn or_py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, &e.into()))
    }
}

/// An input error raised from here (a shape the library never sees, an unknown name).
fn input_error(py: Python<'_>, message: String) -> PyErr {
    to_py(py, &Error::BadInput { what: "argument".into(), problem: message }.into())
}

fn parse_backend(py: Python<'_>, name: &str) -> PyResult<Backend> {
    Backend::from_str(name, true).map_err(|_| {
        let names: Vec<String> =
            Backend::value_variants().iter().filter_map(|b| b.to_possible_value()).map(|v| v.get_name().to_string()).collect();
        input_error(py, format!("backend {name:?}: expected one of {}", names.join(", ")))
    })
}

fn event_dict<'py>(py: Python<'py>, e: &Event) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("job", &e.job)?;
    d.set_item("unit", e.unit)?;
    d.set_item("done", e.done)?;
    d.set_item("total", e.total)?;
    d.set_item("j_first", e.j_first)?;
    d.set_item("j", e.j)?;
    d.set_item("ar_dev", e.ar_dev)?;
    Ok(d)
}

/// Runs `learnlaw ARGS…` on a worker of rayon's pool (so the CPU engines' parallel loops start from
/// inside it, as under the `learnlaw` binary), the GIL released. This thread waits, checking for
/// Ctrl-C every 0.1 s; after each progress update the job takes the GIL to call `progress(event:
/// dict)`. A Ctrl-C, an exception in `progress`, or `progress` returning False stops a search after
/// its current epoch with its policy saved (other jobs run to their end), and the exception is
/// raised then. Returns True when the command finished, False when a search stopped (the same call
/// resumes it).
#[pyfunction]
#[pyo3(signature = (args, progress=None))]
fn run(py: Python<'_>, args: Vec<String>, progress: Option<Py<PyAny>>) -> PyResult<bool> {
    let stop = Arc::new(AtomicBool::new(false));
    let (pending_tx, pending_rx) = mpsc::channel::<PyErr>();
    let (done_tx, done) = mpsc::channel::<anyhow::Result<Outcome>>();
    let stop_job = stop.clone();
    rayon::spawn(move || {
        let observer = move |event: &Event| -> ControlFlow<()> {
            if stop_job.load(Ordering::SeqCst) {
                return ControlFlow::Break(());
            }
            let Some(callback) = &progress else { return ControlFlow::Continue(()) };
            Python::attach(|py| {
                let answer = event_dict(py, event).and_then(|d| callback.call1(py, (d,)));
                match answer {
                    Ok(a) if a.bind(py).is(PyBool::new(py, false)) => ControlFlow::Break(()),
                    Ok(_) => ControlFlow::Continue(()),
                    Err(e) => {
                        let _ = pending_tx.send(e);
                        ControlFlow::Break(())
                    }
                }
            })
        };
        // A panic must not unwind into rayon (which would abort the process): it becomes an error.
        let job = std::panic::AssertUnwindSafe(|| progress::with_observer(Box::new(observer), || learnlaw_cli::run_args(args)));
        let outcome =
            std::panic::catch_unwind(job).unwrap_or_else(|_| Err(anyhow::anyhow!("learnlaw panicked (a bug): see the message above")));
        let _ = done_tx.send(outcome);
    });
    let (mut interrupted, mut done) = (None, done);
    let outcome = loop {
        // The receiver moves into the GIL-free wait and back (it is `Send`, not `Sync`).
        let received;
        (received, done) = py.detach(move || (done.recv_timeout(Duration::from_millis(100)), done));
        match received {
            Ok(outcome) => break outcome,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = py.check_signals() {
                    stop.store(true, Ordering::SeqCst);
                    interrupted.get_or_insert(e);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break Err(anyhow::anyhow!("the job's thread ended without a result")),
        }
    };
    if let Some(e) = interrupted.or_else(|| pending_rx.try_recv().ok()) {
        return Err(e);
    }
    Ok(outcome.or_py(py)? == Outcome::Done)
}

fn history_dict<'py>(py: Python<'py>, h: &History) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("j", h.j.clone().into_pyarray(py))?;
    d.set_item("cr", h.cr.clone().into_pyarray(py))?;
    d.set_item("seconds", h.seconds.clone().into_pyarray(py))?;
    d.set_item("heldout_j", h.heldout_j.clone().into_pyarray(py))?;
    d.set_item("ar_dev", h.ar_dev.clone())?;
    d.set_item("final_dev", h.final_dev.clone().into_pyarray(py))?;
    Ok(d)
}

fn gamma_array<'py>(py: Python<'py>, gamma: Vec<f32>, steps: usize, examples: usize) -> PyResult<Bound<'py, PyArray2<f32>>> {
    gamma.into_pyarray(py).reshape([steps, examples])
}

/// A run directory, checked as `learnlaw eval` checks it: a dict with `config` and `summary` (as
/// JSON text), `gamma` \[T, N\] f32 and `history` (None before the search first saved),
/// `best_gamma` and `best_epoch` (a search with a held-out part), `evaluated_epoch` and `curves`
/// (after an evaluation: step-indexed arrays `dev_constant`, `test_constant`, `dev_policy`,
/// `test_policy`).
#[pyfunction]
fn read_run<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let dir = RunDir::new(&path);
    dir.open().or_py(py)?;
    let run = dir.read_checked().or_py(py)?;
    let d = PyDict::new(py);
    d.set_item("config", serde_json::to_string(&run.config).or_py(py)?)?;
    d.set_item("summary", run.summary.as_ref().map(serde_json::to_string).transpose().or_py(py)?)?;
    match run.saved {
        Some((policy, history)) => {
            d.set_item("gamma", gamma_array(py, policy.gamma, policy.steps, policy.examples)?)?;
            d.set_item("history", history_dict(py, &history)?)?;
        }
        None => {
            d.set_item("gamma", py.None())?;
            d.set_item("history", py.None())?;
        }
    }
    match run.best {
        Some((policy, epoch)) => {
            d.set_item("best_gamma", gamma_array(py, policy.gamma, policy.steps, policy.examples)?)?;
            d.set_item("best_epoch", epoch)?;
        }
        None => {
            d.set_item("best_gamma", py.None())?;
            d.set_item("best_epoch", py.None())?;
        }
    }
    d.set_item("evaluated_epoch", run.summary.as_ref().and_then(|s| s.evaluated_epoch))?;
    if dir.curves_path().exists() {
        let curves = EvalCurves::read(&dir.curves_path()).or_py(py)?;
        let c = PyDict::new(py);
        c.set_item("dev_constant", curves.constant.dev.into_pyarray(py))?;
        c.set_item("test_constant", curves.constant.test.into_pyarray(py))?;
        c.set_item("dev_policy", curves.policy.dev.into_pyarray(py))?;
        c.set_item("test_policy", curves.policy.test.into_pyarray(py))?;
        d.set_item("curves", c)?;
    } else {
        d.set_item("curves", py.None())?;
    }
    Ok(d)
}

/// (t, θ_t, l_n(θ_t)).
type ThetaAt<'py> = (usize, Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<f64>>);

/// θ_t and the per-example training losses l_n(θ_t) at each of `steps` (each 0…T), retraining the
/// run from its θ_0 under its evaluated policy (the GIL released): a list of (t, θ_t, losses).
#[pyfunction]
#[pyo3(signature = (path, steps, backend=None, theta0=None))]
fn replay_run<'py>(
    py: Python<'py>,
    path: PathBuf,
    steps: Vec<usize>,
    backend: Option<String>,
    theta0: Option<PathBuf>,
) -> PyResult<Vec<ThetaAt<'py>>> {
    let backend = backend.map(|b| parse_backend(py, &b)).transpose()?;
    let replay = py.detach(|| -> anyhow::Result<_> {
        let dir = RunDir::new(&path);
        dir.open()?;
        let run = dir.read_checked()?;
        let (policy, _) = run.evaluated_policy(&dir)?;
        let at = learnlaw_cli::export::replay_steps(steps, run.config.search.steps)?;
        learnlaw_cli::export::replay_run(&run, &policy.gamma, &at, backend, theta0.as_deref())
    });
    let thetas = replay.or_py(py)?.thetas;
    Ok(thetas.into_iter().map(|(t, theta, losses)| (t, theta.into_pyarray(py), losses.into_pyarray(py))).collect())
}

/// (J, the desired-loss curve, ∂J/∂γ).
type UnrollGradient<'py> = (f64, Bound<'py, PyArray1<f64>>, Bound<'py, PyArray2<f64>>);

/// A job for an engine's thread.
type Job = Box<dyn FnOnce(&mut dyn HostEngine) + Send>;

/// A task's engine on one backend, with its operations on numpy arrays (f64 in and out; the
/// engine computes in its own precision). Each engine lives on a thread of its own (a CUDA engine
/// stays on the thread that made it); calls release the GIL while it works.
#[pyclass(module = "learnlaw._native")]
struct Engine {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    #[pyo3(get)]
    name: String,
    #[pyo3(get)]
    num_params: usize,
    #[pyo3(get)]
    num_train: usize,
    task: std::sync::Arc<Task>,
}

impl Engine {
    fn start(py: Python<'_>, task: Task, backend: &str) -> PyResult<Engine> {
        let backend = parse_backend(py, backend)?;
        let task = std::sync::Arc::new(task);
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::channel::<anyhow::Result<(String, usize, usize)>>();
        let for_thread = task.clone();
        let thread = std::thread::Builder::new()
            .name(format!("learnlaw-engine-{}", backend.to_possible_value().map_or("?".into(), |v| v.get_name().to_string())))
            .spawn(move || {
                let mut engine = match host_engine(backend, &for_thread) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok((engine.engine_name(), engine.params(), engine.examples())));
                for job in queue {
                    job(engine.as_mut());
                }
            })
            .or_py(py)?;
        let started = py.detach(move || ready.recv().map_err(|_| anyhow::anyhow!("the engine thread ended before the engine was built")));
        let (name, num_params, num_train) = started.and_then(|r| r).or_py(py)?;
        Ok(Engine { jobs: Some(jobs), thread: Some(thread), name, num_params, num_train, task })
    }

    /// Runs `op` on the engine's thread with the GIL released.
    fn call<T: Send + 'static>(
        &self,
        py: Python<'_>,
        op: impl FnOnce(&mut dyn HostEngine) -> learnlaw_core::Result<T> + Send + 'static,
    ) -> PyResult<T> {
        let (tx, rx) = mpsc::channel();
        let jobs = self.jobs.as_ref().ok_or_else(|| PyRuntimeError::new_err("the engine is closed"))?;
        jobs.send(Box::new(move |e: &mut dyn HostEngine| {
            let _ = tx.send(op(e));
        }))
        .map_err(|_| PyRuntimeError::new_err("the engine's thread has ended"))?;
        let result = py.detach(move || rx.recv().map_err(|_| anyhow::anyhow!("the engine's thread ended during the call (a panic)")));
        result.and_then(|r| r.map_err(anyhow::Error::from)).or_py(py)
    }
}

fn vector(py: Python<'_>, a: &PyReadonlyArray1<'_, f64>) -> PyResult<Vec<f64>> {
    Ok(a.as_slice().or_py(py)?.to_vec())
}

fn matrix<T: numpy::Element + Copy>(py: Python<'_>, what: &str, a: &PyReadonlyArray2<'_, T>) -> PyResult<(Vec<T>, usize, usize)> {
    let shape = a.shape();
    let values = a.as_slice().map_err(|_| input_error(py, format!("{what}: a C-contiguous array")))?;
    Ok((values.to_vec(), shape[0], shape[1]))
}

fn set_of(py: Python<'_>, set: &str) -> PyResult<Set> {
    match set {
        "dev" => Ok(Set::Dev),
        "test" => Ok(Set::Test),
        other => Err(input_error(py, format!("set {other:?}: expected \"dev\" or \"test\""))),
    }
}

#[pymethods]
impl Engine {
    /// The perceptron task's engine: inputs x \[n, D\] and labels y \[n\] (0 or 1) of the training,
    /// desired (dev) and test sets (the test set defaults to the desired set).
    #[staticmethod]
    #[pyo3(signature = (x_train, y_train, x_dev, y_dev, x_test=None, y_test=None, backend="cpu"))]
    #[allow(clippy::too_many_arguments)]
    fn perceptron(
        py: Python<'_>,
        x_train: PyReadonlyArray2<'_, f32>,
        y_train: PyReadonlyArray1<'_, f32>,
        x_dev: PyReadonlyArray2<'_, f32>,
        y_dev: PyReadonlyArray1<'_, f32>,
        x_test: Option<PyReadonlyArray2<'_, f32>>,
        y_test: Option<PyReadonlyArray1<'_, f32>>,
        backend: &str,
    ) -> PyResult<Engine> {
        let examples = |x: &PyReadonlyArray2<'_, f32>, y: &PyReadonlyArray1<'_, f32>, what: &str| -> PyResult<(Examples, usize)> {
            let (x, _, dim) = matrix(py, &format!("x_{what}"), x)?;
            Ok((Examples { x, y: y.as_slice().or_py(py)?.to_vec() }, dim))
        };
        let (train, dim) = examples(&x_train, &y_train, "train")?;
        let (dev, dev_dim) = examples(&x_dev, &y_dev, "dev")?;
        let test = match (&x_test, &y_test) {
            (Some(x), Some(y)) => examples(x, y, "test")?,
            (None, None) => (dev.clone(), dev_dim),
            _ => return Err(input_error(py, "x_test and y_test come together".into())),
        };
        for (what, d) in [("x_dev", dev_dim), ("x_test", test.1)] {
            if d != dim {
                return Err(to_py(py, &Error::shape(what, format!("{dim} columns (as x_train)"), d).into()));
            }
        }
        let data = PerceptronData { dim, train, dev, test: test.0, theta0: None };
        data.validate().or_py(py)?;
        Engine::start(py, Task::Perceptron { data, held: None }, backend)
    }

    /// The Transformer LM task's engine: token rows \[n, context + 1\] (inputs `[:, :-1]`, labels
    /// `[:, 1:]`, PAD = 1 masked) of the training, desired and test sets (test defaults to the
    /// desired set), and the model's sizes (the official module's: `ffn` = 4·hidden and
    /// `attention_scale` "hidden").
    #[staticmethod]
    #[pyo3(signature = (train, dev, vocab_size, test=None, hidden=64, heads=4, layers=2, ffn=None, attention_scale="hidden", backend="cpu"))]
    #[allow(clippy::too_many_arguments)]
    fn transformer(
        py: Python<'_>,
        train: PyReadonlyArray2<'_, u32>,
        dev: PyReadonlyArray2<'_, u32>,
        vocab_size: usize,
        test: Option<PyReadonlyArray2<'_, u32>>,
        hidden: usize,
        heads: usize,
        layers: usize,
        ffn: Option<usize>,
        attention_scale: &str,
        backend: &str,
    ) -> PyResult<Engine> {
        let (train, _, seq_len) = matrix(py, "train", &train)?;
        let (dev, _, dev_len) = matrix(py, "dev", &dev)?;
        let test = match test {
            Some(t) => matrix(py, "test", &t)?,
            None => (dev.clone(), 0, dev_len),
        };
        for (what, len) in [("dev", dev_len), ("test", test.2)] {
            if len != seq_len {
                return Err(to_py(py, &Error::shape(what, format!("rows of {seq_len} tokens (as train)"), len).into()));
            }
        }
        let data = TokenData { vocab_size, seq_len, train, dev, test: test.0, noisy: Vec::new() };
        data.validate().or_py(py)?;
        let attention_scale = match attention_scale {
            "hidden" => AttentionScale::Hidden,
            "head-dim" | "head_dim" => AttentionScale::HeadDim,
            other => return Err(input_error(py, format!("attention_scale {other:?}: expected \"hidden\" or \"head-dim\""))),
        };
        let model =
            TransformerConfig { vocab_size, hidden, heads, layers, context: seq_len - 1, ffn: ffn.unwrap_or(4 * hidden), attention_scale };
        model.validate().or_py(py)?;
        Engine::start(py, Task::Transformer { model, data, held: None }, backend)
    }

    /// θ_0 as a search would start from it: PyTorch's default initialisation seeded with `seed`
    /// (the CLI's --init-seed), in learnlaw's flat order.
    #[pyo3(signature = (seed=10))]
    fn theta0<'py>(&self, py: Python<'py>, seed: u64) -> PyResult<Bound<'py, PyArray1<f64>>> {
        Ok(self.task.theta0(seed, None).or_py(py)?.into_pyarray(py))
    }

    /// Per-example training losses l_n(θ) \[N\].
    fn losses<'py>(&self, py: Python<'py>, theta: PyReadonlyArray1<'_, f64>) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let theta = vector(py, &theta)?;
        Ok(self.call(py, move |e| e.losses(&theta))?.into_pyarray(py))
    }

    /// Per-example gradient dots ∇l_n(θ)·v \[N\], without materialising per-example gradients.
    fn dots<'py>(
        &self,
        py: Python<'py>,
        theta: PyReadonlyArray1<'_, f64>,
        v: PyReadonlyArray1<'_, f64>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let (theta, v) = (vector(py, &theta)?, vector(py, &v)?);
        Ok(self.call(py, move |e| e.dots(&theta, &v))?.into_pyarray(py))
    }

    /// The mean loss on the desired ("dev") or test set and its gradient.
    #[pyo3(signature = (theta, set="dev"))]
    fn loss_grad<'py>(&self, py: Python<'py>, theta: PyReadonlyArray1<'_, f64>, set: &str) -> PyResult<(f64, Bound<'py, PyArray1<f64>>)> {
        let (theta, set) = (vector(py, &theta)?, set_of(py, set)?);
        let (loss, grad) = self.call(py, move |e| e.set_loss_grad(set, &theta))?;
        Ok((loss, grad.into_pyarray(py)))
    }

    /// H·v, H the Hessian of Σ_n γ_n l_n at θ (γ \[N\]).
    fn hvp<'py>(
        &self,
        py: Python<'py>,
        theta: PyReadonlyArray1<'_, f64>,
        gamma: PyReadonlyArray1<'_, f64>,
        v: PyReadonlyArray1<'_, f64>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let (theta, gamma, v) = (vector(py, &theta)?, vector(py, &gamma)?, vector(py, &v)?);
        Ok(self.call(py, move |e| e.hvp(&theta, &gamma, &v))?.into_pyarray(py))
    }

    /// One γ-weighted gradient step: θ − η ∇_θ Σ_n γ_n l_n(θ) (γ \[N\]).
    fn step<'py>(
        &self,
        py: Python<'py>,
        theta: PyReadonlyArray1<'_, f64>,
        gamma: PyReadonlyArray1<'_, f64>,
        eta: f64,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let (theta, gamma) = (vector(py, &theta)?, vector(py, &gamma)?);
        Ok(self.call(py, move |e| e.step(&theta, &gamma, eta))?.into_pyarray(py))
    }

    /// The unrolled run of T steps from θ_0 under γ \[T, N\]: (J, the desired-loss curve
    /// \[T + 1\], ∂J/∂γ \[T, N\]) by the adjoint pass.
    fn unroll_gradient<'py>(
        &self,
        py: Python<'py>,
        theta0: PyReadonlyArray1<'_, f64>,
        gamma: PyReadonlyArray2<'_, f64>,
        eta: f64,
    ) -> PyResult<UnrollGradient<'py>> {
        let theta0 = vector(py, &theta0)?;
        let (gamma, steps, n) = matrix(py, "gamma", &gamma)?;
        let (forward, grad) = self.call(py, move |e| e.unroll_gradient(&theta0, &gamma, eta))?;
        Ok((forward.j, forward.dev.into_pyarray(py), grad.into_pyarray(py).reshape([steps, n])?))
    }

    /// Ends the engine's thread and frees its memory (also done when the object is collected).
    fn close(&mut self, py: Python<'_>) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            py.detach(|| {
                let _ = thread.join();
            });
        }
    }

    fn __repr__(&self) -> String {
        format!("Engine({}, {} parameters, {} training examples)", self.name, self.num_params, self.num_train)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(read_run, m)?)?;
    m.add_function(wrap_pyfunction!(replay_run, m)?)?;
    m.add_class::<Engine>()?;
    Ok(())
}
