"""learnlaw: near-optimal learning policies (the Learning Law) from Python.

Three parts, all running learnlaw's Rust engines (CPU, wgpu, CUDA) with the GIL released:

- the command line's jobs with its options as keyword arguments, a progress callback and a run
  directory back: ``search``, ``evaluate``, ``train``, ``reproduce``, ``export`` (``cli`` runs any
  ``learnlaw`` command by its arguments);
- ``open_run``: a run directory as numpy arrays (the policy γ, the J history, the loss curves, θ_t);
- ``Perceptron`` and ``Transformer``: a task's engine operations on numpy arrays (per-example
  losses, per-example gradient dots, Hessian-vector products, the γ-weighted step, ∂J/∂γ of an
  unrolled run).

Errors are ``LearnlawError`` subclasses carrying the library's message; ``InputError`` (bad shapes,
NaN/Inf, labels or token ids out of range, unknown options, corrupt files) is also a ``ValueError``.
"""

import json
import os

import numpy as np


class LearnlawError(Exception):
    """An error of the learnlaw library."""


class InputError(LearnlawError, ValueError):
    """Unusable input: a wrong shape, NaN/Inf, a value out of range, an unknown option, a corrupt file."""


class NumericalError(LearnlawError, ArithmeticError):
    """The numerics broke down (e.g. the inner training diverged)."""


class UnavailableError(LearnlawError, RuntimeError):
    """The backend is not available on this machine (no GPU, driver or adapter)."""


class DeviceError(LearnlawError, RuntimeError):
    """A device that was found failed while working."""


class BusyError(LearnlawError, RuntimeError):
    """The run directory is in use by another learnlaw process."""


class OutOfMemoryError(LearnlawError, MemoryError):
    """The job would need more memory than is available (refused before allocating)."""


from . import _native  # noqa: E402  (after the exception classes, which it raises)

__all__ = [
    "cli", "search", "evaluate", "train", "reproduce", "export", "open_run", "Run",
    "Engine", "Perceptron", "Transformer",
    "LearnlawError", "InputError", "NumericalError", "UnavailableError", "DeviceError", "BusyError",
    "OutOfMemoryError",
]  # fmt: skip


def cli(*args, progress=None):
    """Runs ``learnlaw ARGS...`` (e.g. ``cli("search", "--data", "d.safetensors", "--out", "run")``).

    ``progress(event)`` is called after every epoch of a search and every step of a retraining with
    a dict: ``job``, ``unit`` ("epochs" or "steps"), ``done``, ``total``, and for a search ``j_first``
    (J of the constant policy), ``j`` and ``ar_dev`` (of the policy the epoch started from). Returning False (or Ctrl-C, or an exception in it) stops a search after its
    current epoch with the policy saved; the same call resumes it. Returns True when the command
    finished, False when a search stopped.
    """
    return _native.run([os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args], progress)


def _flags(options):
    """Keyword arguments as command-line options: ``outer_lr=0.01`` → ``--outer-lr 0.01``, True →
    a bare flag, False/None → omitted, a list → its items after the flag (``reg=("L2", 0.05)``)."""
    out = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            out += [flag, *map(str, value)]
        else:
            out += [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    return out


def search(out, data, task="perceptron", progress=None, **options):
    """``learnlaw search``: searches (or resumes) a policy for ``data`` into the run directory ``out``.

    Options are the command's (``steps``, ``eta``, ``epochs``, ``outer_lr``, ``optimizer``, ``backend``,
    ``holdout``, ``reg``, ``theta0``, and for the Transformer ``hidden``, ``heads``, ``layers``...;
    ``learnlaw search --help`` lists them). Returns the ``Run``.
    """
    cli("search", "--data", data, "--out", out, "--task", task, *_flags(options), progress=progress)
    return open_run(out)


def evaluate(run_dir, progress=None, **options):
    """``learnlaw eval``: retrains with the run's policy and the constant one; returns the ``Run``
    with its ``summary`` (AR, AUC, the Learning Law's SIM) and ``curves``."""
    cli("eval", run_dir, *_flags(options), progress=progress)
    return open_run(run_dir)


def train(out, data, policy, progress=None, **options):
    """``learnlaw train``: trains once with ``policy`` ("online:lookahead", "online:law",
    "online:greats", "constant", or a searched run directory) and evaluates; returns the ``Run``."""
    cli("train", "--data", data, "--out", out, "--policy", policy, *_flags(options), progress=progress)
    return open_run(out)


def reproduce(task, out=None, progress=None, **options):
    """``learnlaw reproduce perceptron|transformer``: data, search and evaluation with the paper's
    settings (the options override them); returns the ``Run``."""
    out = out if out is not None else os.path.join("runs", task)
    cli("reproduce", task, "--out", out, *_flags(options), progress=progress)
    return open_run(out)


def export(run_dir, out=None, steps=(), progress=None, **options):
    """``learnlaw export``: θ_0, the trained θ_T and θ_t at ``steps`` as safetensors state dicts of the
    official PyTorch module (``format="learnlaw"`` for the flat θ); returns the folder."""
    extra = ["--steps", ",".join(map(str, steps))] if len(steps) else []
    cli("export", run_dir, *_flags({"out": out, **options}), *extra, progress=progress)
    return out if out is not None else os.path.join(run_dir, "export")


def open_run(path):
    """A run directory as numpy arrays (checked as ``learnlaw eval`` checks it)."""
    return Run(path)


class Run:
    """A run directory: ``config`` and ``summary`` (dicts; ``summary`` is None before the search ends),
    ``gamma`` (the policy, float32 [T, N]; None before the first save), ``history`` (per outer epoch:
    ``j``, ``cr``, ``seconds``, ``ar_dev``, ``heldout_j``, ``final_dev``), ``best_gamma`` and
    ``best_epoch`` (with a held-out part), ``curves`` (after an evaluation: ``dev_constant``,
    ``test_constant``, ``dev_policy``, ``test_policy``, one value per step 0..T)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        raw = _native.read_run(self.path)
        self.config = json.loads(raw["config"])
        self.summary = json.loads(raw["summary"]) if raw["summary"] is not None else None
        self.gamma = raw["gamma"]
        self.history = raw["history"]
        self.best_gamma = raw["best_gamma"]
        self.best_epoch = raw["best_epoch"]
        self.evaluated_epoch = raw["evaluated_epoch"]
        self.curves = raw["curves"]

    @property
    def epochs_done(self):
        """Outer epochs saved (0 before the first save)."""
        return 0 if self.history is None else len(self.history["seconds"])

    @property
    def finished(self):
        """True when the search ran all its epochs."""
        return self.epochs_done >= self.config["search"]["epochs"]

    def thetas(self, steps, backend=None, theta0=None):
        """{t: (θ_t, per-example training losses l_n(θ_t))} at each inner step t of ``steps``
        (0..T), retraining from θ_0 under the evaluated policy (learnlaw's flat θ order; ``export``
        writes the official state dict)."""
        steps = [int(t) for t in steps]
        replay = _native.replay_run(self.path, steps, backend, None if theta0 is None else os.fspath(theta0))
        return {t: (theta, losses) for t, theta, losses in replay}

    def theta0(self):
        """θ_0, the θ the search started from (flat, float64)."""
        return self.thetas([0])[0][0]

    def theta_final(self):
        """θ_T, trained under the evaluated policy (flat, float64)."""
        steps = self.config["search"]["steps"]
        return self.thetas([steps])[steps][0]

    def __repr__(self):
        shape = None if self.gamma is None else tuple(self.gamma.shape)
        return f"Run({self.path!r}, task={self.config['task']!r}, epochs_done={self.epochs_done}, gamma={shape})"


def _f64(a):
    return np.ascontiguousarray(a, dtype=np.float64)


class Engine:
    """A task's engine on one backend; vectors are float64 numpy arrays (the engine computes in its
    own precision: f32 except on ``cpu-f64``). Build one with ``Perceptron`` or ``Transformer``.
    θ is learnlaw's flat θ (a run's ``theta0()``; ``export`` converts it to the official layout)."""

    def __init__(self, native):
        self._e = native

    name = property(lambda self: self._e.name, doc="The engine's name, e.g. cpu-f32.")
    num_params = property(lambda self: self._e.num_params, doc="P, the length of θ.")
    num_train = property(lambda self: self._e.num_train, doc="N, the training examples.")

    def theta0(self, seed=10):
        """θ_0 of a search with ``--init-seed seed`` (PyTorch's default initialisation)."""
        return self._e.theta0(seed)

    def losses(self, theta):
        """Per-example training losses l_n(θ), [N]."""
        return self._e.losses(_f64(theta))

    def dots(self, theta, v):
        """Per-example gradient dots ∇l_n(θ)·v, [N] (with v = ∇L_dev(θ): the contributions)."""
        return self._e.dots(_f64(theta), _f64(v))

    def loss_grad(self, theta, set="dev"):
        """(mean loss, gradient) on the desired ("dev") or the "test" set."""
        return self._e.loss_grad(_f64(theta), set)

    def hvp(self, theta, gamma, v):
        """H·v with H the Hessian of Σ_n γ_n l_n at θ (γ [N])."""
        return self._e.hvp(_f64(theta), _f64(gamma), _f64(v))

    def step(self, theta, gamma, eta):
        """One γ-weighted gradient step θ − η ∇_θ Σ_n γ_n l_n(θ) (γ [N])."""
        return self._e.step(_f64(theta), _f64(gamma), float(eta))

    def unroll_gradient(self, theta0, gamma, eta):
        """(J, desired-loss curve [T + 1], ∂J/∂γ [T, N]) of T steps from θ_0 under γ [T, N]."""
        return self._e.unroll_gradient(_f64(theta0), _f64(gamma), float(eta))

    def close(self):
        """Frees the engine (its device memory) now rather than when collected."""
        self._e.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return repr(self._e)


def _array(name, a, dtype, ndim):
    a = np.asarray(a)
    if a.ndim != ndim:
        raise InputError(f"{name}: expected a {ndim}-dimensional array, got shape {a.shape}")
    if np.issubdtype(dtype, np.integer):
        if not np.issubdtype(a.dtype, np.integer):
            raise InputError(f"{name}: expected integer token ids, got dtype {a.dtype}")
        if a.size and a.min() < 0:
            raise InputError(f"{name}: token id {a.min()} is negative")
    return np.ascontiguousarray(a, dtype=dtype)


def Perceptron(x_train, y_train, x_dev, y_dev, x_test=None, y_test=None, backend="cpu"):
    """The perceptron task's ``Engine``: inputs x [n, D], labels y [n] in {0, 1} for the training,
    desired and (optional; default the desired) test sets, on ``backend`` (cpu, cpu-f64, wgpu,
    wgpu-f16, cuda, cuda-bf16, cuda-f16). θ is [D] (no bias, like the official module)."""
    xs = [None if x is None else _array(n, x, np.float32, 2) for n, x in (("x_train", x_train), ("x_dev", x_dev), ("x_test", x_test))]
    ys = [None if y is None else _array(n, y, np.float32, 1) for n, y in (("y_train", y_train), ("y_dev", y_dev), ("y_test", y_test))]
    return Engine(_native.Engine.perceptron(xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], backend))


def Transformer(train, dev, vocab_size, test=None, hidden=64, heads=4, layers=2, ffn=None, attention_scale="hidden", backend="cpu"):
    """The Transformer LM task's ``Engine``: token rows [n, context + 1] (inputs ``[:, :-1]``, labels
    ``[:, 1:]``, PAD = 1 masked) of the training, desired and (optional) test sets, and the model's
    sizes, on ``backend`` (cpu, cpu-f64, wgpu, cuda, cuda-bf16)."""
    rows = [None if t is None else _array(n, t, np.uint32, 2) for n, t in (("train", train), ("dev", dev), ("test", test))]
    native = _native.Engine.transformer(rows[0], rows[1], int(vocab_size), rows[2], hidden, heads, layers, ffn, attention_scale, backend)
    return Engine(native)
