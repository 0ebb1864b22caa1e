"""The policy search in PyTorch against `learnlaw search` on the same data file and θ_0: the
perceptron (by two engines) or the Transformer LM (torch.func). Not part of CI.

How to run (torch, safetensors and numpy in a venv outside the repo):

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch safetensors numpy
    cargo build --release -p learnlaw-cli
    # the perceptron at the paper's size
    target/release/learnlaw data perceptron --out /tmp/perceptron.safetensors
    /tmp/torchvenv/bin/python scripts/compare_torch.py --data /tmp/perceptron.safetensors --epochs 3 --threads 1
    # the Transformer at learnlaw's scaled default (the data of `reproduce transformer`)
    target/release/learnlaw data text --out /tmp/text.safetensors
    /tmp/torchvenv/bin/python scripts/compare_torch.py --task transformer --data /tmp/text.safetensors \
        --epochs 2 --threads 1 --backends cpu
    # the Transformer's exactness check, in f64 on a tiny config (seconds)
    target/release/learnlaw data text --out /tmp/tiny.safetensors --train 16 --dev 8 --test 8
    /tmp/torchvenv/bin/python scripts/compare_torch.py --task transformer --data /tmp/tiny.safetensors \
        --steps 5 --epochs 3 --dtype float64 --threads 1

Options: --task perceptron|transformer (default perceptron), --torch-engines closed,func (which
PyTorch engines run; perceptron: default both; transformer: func only), --steps T, --eta,
--outer-lr (defaults: perceptron 2000, 0.1, 0.001, the official scripts'; transformer 200, 0.5,
0.4, learnlaw's scaled default), --epochs (default 3), --device cpu|cuda (perceptron only),
--dtype float32|float64 (default float32), --learnlaw PATH, --backends cpu-f64,cpu, --j-rtol.
Transformer only: --theta0 FILE, --init-seed, --hidden/--heads/--layers, --dots fused|separate.
On a shared machine use --threads 1: torch's OpenMP threads slow down many-fold when other
processes take the cores. --threads N also sets RAYON_NUM_THREADS=N for `learnlaw search`, so both
sides get N threads.

Every PyTorch engine runs the same search (reference §3 of the official code's algorithm):
- forward: full-batch GD θ_{t+1} = θ_t − η ∇Σ_n γ_{t,n} l_n(θ_t), keeping every θ_t;
  J = (1/T) Σ_{t=0..T} L_dev(θ_t), L_dev the mean loss over the dev set;
- backward (adjoint): λ_T = ∇L_dev(θ_T)/T, then for t = T−1..0
  ∂J/∂γ_{t,n} = −η ∇l_n(θ_t)·λ_{t+1} and λ_t = λ_{t+1} + ∇L_dev(θ_t)/T − η H_t λ_{t+1},
  H_t the Hessian of Σ_n γ_{t,n} l_n at θ_t;
- outer: SGD with lr decayed linearly to 0 over the epochs, then the exact Euclidean projection of
  every row onto the simplex. The official code solves a QP per row with cvxpy; this script uses
  the exact sort-based projection (Duchi et al. 2008) in torch instead, so its projection time is
  not the official code's.

Perceptron: l_n(θ) = BCE-with-logits(x_n·θ, y_n), r = σ(Xθ) − y, X the [N, D] training matrix.
The two engines differ only in how they get the derivatives:
- func: torch.func as the official code: grad of the weighted loss, per-example gradients by
  vmap(grad), the HVP by jvp of grad (forward-over-reverse);
- closed: the closed-form peer, what a user would write by hand: the forward keeps σ(Xθ_t) for
  every t, the backward is ∂J/∂γ_t = −η r_t ⊙ (Xλ_{t+1}) and
  λ_t = λ_{t+1} + ∇L_dev(θ_t)/T − η Xᵀ(γ_t ⊙ σ(1−σ) ⊙ Xλ_{t+1}), with all the dev losses and dev
  gradients in two [T+1, ·] matrix products.
When both run, the script checks that their ∂J/∂γ on the first epoch (the constant policy) agree
(prints the max relative difference, max|Δ| / max|∂J/∂γ|, and exits 1 after the tables if it is
above 1e-3 in float32 or 1e-9 in float64), so the two cannot silently diverge.
θ_0: `learnlaw data perceptron` writes no `theta0` (learnlaw then draws θ_0 from --init-seed with
ChaCha8, which numpy cannot reproduce). So when the file has no theta0, the script draws one like
PyTorch's nn.Linear init, U(−1/√D, 1/√D), and writes a copy of the data file with it; all
implementations then run on that copy and start from the same θ_0.

Transformer: the official module as scripts/check_export.py reimplements it (same parameter names,
shapes and forward: pre-norm blocks, RMSNorm dividing by rms + 1e-8, scores scaled by 1/√hidden),
θ a dict of its parameters run through torch.func.functional_call; l_n the token cross-entropy of
sequence n averaged over its non-PAD labels; full batch (N = 512 is also the official batch size).
The torch.func engine (func) takes the derivatives as the official code does, by torch.func:
forward grad of the weighted loss; backward the dev gradient by grad, H_t λ_{t+1} by jvp of grad
(forward-over-reverse), and the N dots ∇l_n(θ_t)·λ_{t+1} by forward mode over the per-example
losses (the jvp of θ ↦ [l_1..l_N] along λ: the same numbers as the official vmap(grad) per-example
gradients dotted with λ, without materialising N gradients). With --dots fused (default) both come
from one jvp of grad(Σ γ l, has_aux = the losses): its tangents are H_t λ and the dots; --dots
separate does two jvps (at the scaled default in f32 on one thread: 1.8 s against 1.4 s for a
backward step's jvps).
θ_0: --theta0 FILE (the official module's state dict as safetensors, e.g. from `learnlaw export`
or a torch state_dict saved by safetensors.torch.save_file) or by default learnlaw's own θ_0 for
--init-seed (what `learnlaw search` and `reproduce transformer` start from), written by `learnlaw
search --epochs 0` and `learnlaw export --format official`. Both sides load that one file
(learnlaw by --theta0), so they start from the same θ_0 (f32 values; exact in f64).

Then it runs `learnlaw search` with the same settings on the same file (--backend cpu-f64 and
cpu), reads each run's J and seconds per epoch from policy.safetensors' metadata, and prints J per
outer epoch from every engine and backend, the largest relative J difference between any two, and
seconds per epoch (median and min over epochs) with learnlaw's speed-up over each PyTorch engine
and the PyTorch engines' split into forward, adjoint and SGD + projection (time.perf_counter).
It checks every PyTorch engine's J against every learnlaw backend's and exits 1 after the tables if
the largest relative difference is above the tolerance, so the implementations cannot silently
diverge: torch float64 against cpu-f64 at every epoch to 1e-9 (the same computation to rounding:
measured 1e-16 to 4e-16 on the Transformer, T = 5 and 200); a pair with f32 in it to 1e-4, at
every epoch for the perceptron but at epoch 0 only (the constant policy) for the Transformer,
whose search amplifies rounding: at the scaled default learnlaw's own cpu and cpu-f64 J differ by
1% after one outer epoch, and a 1e-7 relative perturbation of θ_0 moves cpu-f64's by 1.8%. So the
Transformer's exactness check is the float64 run (above, on a small config: torch float64 at the
scaled default takes several times its f32 time). --j-rtol X: X for every pair at every epoch.
"""
import argparse
import warnings
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from torch.func import functional_call, grad, jvp, vmap

warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation noise at import


def bce(z, y):
    # BCE with logits, the official perceptron's per-example loss.
    return torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")


def example_loss(theta, x, y):
    return bce(x @ theta, y)


def weighted_loss(theta, x, y, g):
    return (g * bce(x @ theta, y)).sum()


def mean_loss(theta, x, y):
    return bce(x @ theta, y).mean()


def project_simplex_rows(v):
    """Exact Euclidean projection of every row onto the simplex, by sorting (Duchi et al. 2008)."""
    u, _ = torch.sort(v, dim=1, descending=True)
    css = u.cumsum(dim=1) - 1.0
    k = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    # The support is the longest prefix with u_k > (Σ_{j≤k} u_j − 1)/k.
    rho = (u * k > css).sum(dim=1, keepdim=True)
    tau = css.gather(1, rho - 1) / rho.to(v.dtype)
    return (v - tau).clamp_min(0.0)


class TorchSearch:
    """The data, the outer loop and its timing; an engine supplies forward() and backward()."""

    name = None

    def __init__(self, n, steps, eta, device, dtype):
        self.n, self.steps, self.eta = n, steps, eta
        self.device, self.dtype = torch.device(device), dtype

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def run(self, epochs, outer_lr):
        gamma = torch.full((self.steps, self.n), 1.0 / self.n, dtype=self.dtype, device=self.device)
        js, secs, parts = [], [], []
        for e in range(epochs):
            self.sync()
            t0 = time.perf_counter()
            j, state = self.forward(gamma)
            j = j.item()  # waits for the device
            t1 = time.perf_counter()
            g = self.backward(gamma, state)
            self.sync()
            t2 = time.perf_counter()
            lr = outer_lr * (epochs - e) / epochs  # get_linear_schedule_with_warmup, 0 warm-up
            gamma = project_simplex_rows(gamma - lr * g)
            self.sync()
            t3 = time.perf_counter()
            if e == 0:
                self.first_grad = g  # ∂J/∂γ at the constant policy, for the engines' cross-check
            js.append(j)
            secs.append(t3 - t0)
            parts.append((t1 - t0, t2 - t1, t3 - t2))
            print(f"{self.name} epoch {e}: J {j:.10f}  {t3 - t0:.2f} s", file=sys.stderr)
        js.append(self.forward(gamma)[0].item())  # the final policy's J, as learnlaw records it
        return js, secs, parts


class PerceptronSearch(TorchSearch):
    """The perceptron's tensors: X, y of the training and dev sets, θ_0."""

    def __init__(self, data, theta0, steps, eta, device, dtype):
        super().__init__(data["x_train"].shape[0], steps, eta, device, dtype)
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)
        self.x, self.y = t(data["x_train"]), t(data["y_train"])
        self.xd, self.yd = t(data["x_dev"]), t(data["y_dev"])
        self.theta0 = t(theta0)


class FuncSearch(PerceptronSearch):
    """torch.func, as the official code."""

    name = "torch.func"

    def __init__(self, *args):
        super().__init__(*args)
        self.dev_grad = grad(mean_loss)
        self.train_grad = grad(weighted_loss)
        self.per_example_grad = vmap(grad(example_loss), in_dims=(None, 0, 0))

    def forward(self, gamma):
        """J and every θ_t (t = 0..T)."""
        thetas = [self.theta0]
        dev = []
        for t in range(self.steps):
            th = thetas[-1]
            dev.append(mean_loss(th, self.xd, self.yd))
            thetas.append(th - self.eta * self.train_grad(th, self.x, self.y, gamma[t]))
        dev.append(mean_loss(thetas[-1], self.xd, self.yd))
        return torch.stack(dev).sum() / self.steps, thetas

    def backward(self, gamma, thetas):
        """∂J/∂γ by the adjoint recursion."""
        T, eta = self.steps, self.eta
        g = torch.empty_like(gamma)
        lam = self.dev_grad(thetas[T], self.xd, self.yd) / T
        for t in range(T - 1, -1, -1):
            th = thetas[t]
            g[t] = -eta * (self.per_example_grad(th, self.x, self.y) @ lam)
            # H_t λ by forward-over-reverse: the jvp of the weighted-loss gradient along λ.
            _, hvp = jvp(lambda p: self.train_grad(p, self.x, self.y, gamma[t]), (th,), (lam,))
            lam = self.dev_grad(th, self.xd, self.yd) / T + lam - eta * hvp
        return g


class ClosedSearch(PerceptronSearch):
    """The closed-form peer: BCE's gradient (Xᵀr) and Hessian (Xᵀ diag(σ(1−σ)) X) by hand."""

    name = "closed-form torch"

    def forward(self, gamma):
        """J, and what the adjoint needs: every σ(Xθ_t) (t < T) and every Xd θ_t (t ≤ T)."""
        T = self.steps
        thetas = self.x.new_empty((T + 1, self.x.shape[1]))
        sig = self.x.new_empty((T, self.x.shape[0]))
        thetas[0] = self.theta0
        for t in range(T):
            sig[t] = torch.sigmoid(self.x @ thetas[t])
            thetas[t + 1] = thetas[t] - self.eta * ((gamma[t] * (sig[t] - self.y)) @ self.x)
        zd = thetas @ self.xd.T  # [T+1, K]: the dev logits of every θ_t in one product
        j = bce(zd, self.yd.expand_as(zd)).mean(dim=1).sum() / T
        return j, (sig, zd)

    def backward(self, gamma, state):
        """∂J/∂γ by the adjoint recursion."""
        sig, zd = state
        T, eta = self.steps, self.eta
        # ∇L_dev(θ_t)/T = Xdᵀ(σ(Xd θ_t) − y_dev) / (K T), for every t in one product.
        dev_grads = (torch.sigmoid(zd) - self.yd) @ self.xd / (self.xd.shape[0] * T)
        g = torch.empty_like(gamma)
        lam = dev_grads[T]
        for t in range(T - 1, -1, -1):
            s = sig[t]
            u = self.x @ lam
            g[t] = -eta * (s - self.y) * u
            lam = lam + dev_grads[t] - eta * ((gamma[t] * s * (1 - s) * u) @ self.x)
        return g


ENGINES = {"closed": ClosedSearch, "func": FuncSearch}


# ---------------------------------------------------------------------------------------------
# The Transformer LM (paper §5)


def official_transformer(cfg):
    """check_export.py's reimplementation of the official module (transformer_model.Transformer
    around modeling.BaseTransformer: the same parameter names, shapes and forward) and PAD."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from check_export import PAD, torch_modules

    return torch_modules()[1](cfg), PAD


class TransformerFuncSearch(TorchSearch):
    """torch.func on the official Transformer module, θ a dict of its parameters (functional_call)."""

    name = "torch.func"

    def __init__(self, data, theta0, cfg, steps, eta, device, dtype, dots):
        super().__init__(data["train"].shape[0], steps, eta, device, dtype)
        model, self.pad = official_transformer(cfg)
        self.model = model.to(dtype)  # f64 before loading: an f32 θ_0 converts exactly
        self.model.load_state_dict(theta0, strict=True)  # names and shapes exactly the official module's
        self.theta0 = {k: v.detach() for k, v in self.model.named_parameters()}
        ids = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long)
        self.train, self.dev = ids(data["train"]), ids(data["dev"])
        self.dots = dots
        self.dev_grad = grad(self.dev_loss)
        self.train_grad = grad(self.weighted_loss)
        # grad of the weighted loss with the per-example losses as aux: its jvp along λ gives
        # H_t λ and every ∇l_n·λ from one forward-over-reverse pass.
        self.train_grad_losses = grad(self.weighted_loss_with_losses, has_aux=True)

    def losses(self, params, rows):
        """Per-example losses of token rows [B, L+1] (the official compute_loss): inputs row[:-1],
        labels row[1:], token cross-entropy averaged over the label positions that are not PAD."""
        ids, labels = rows[:, :-1], rows[:, 1:]
        logits = functional_call(self.model, params, (ids,)).logits
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none").view(labels.shape)
        mask = (labels != self.pad).to(ce.dtype)
        return (ce * mask).sum(-1) / mask.sum(-1)

    def dev_loss(self, params):
        return self.losses(params, self.dev).mean()

    def weighted_loss(self, params, g):
        return (g * self.losses(params, self.train)).sum()

    def weighted_loss_with_losses(self, params, g):
        l = self.losses(params, self.train)
        return (g * l).sum(), l

    def forward(self, gamma):
        """J and every θ_t (t = 0..T)."""
        T, eta = self.steps, self.eta
        thetas, dev = [self.theta0], []
        for t in range(T):
            th = thetas[-1]
            dev.append(self.dev_loss(th))
            g = self.train_grad(th, gamma[t])
            thetas.append({k: th[k] - eta * g[k] for k in th})
        dev.append(self.dev_loss(thetas[-1]))
        return torch.stack(dev).sum() / T, thetas

    def backward(self, gamma, thetas):
        """∂J/∂γ by the adjoint recursion."""
        T, eta = self.steps, self.eta
        g = torch.empty_like(gamma)
        lam = {k: v / T for k, v in self.dev_grad(thetas[T]).items()}
        for t in range(T - 1, -1, -1):
            th, gt = thetas[t], gamma[t]
            if self.dots == "fused":
                _, (hvp, dots) = jvp(lambda p: self.train_grad_losses(p, gt), (th,), (lam,))
            else:
                # ∇l_n(θ_t)·λ for every n: forward mode over the per-example losses; then H_t λ
                # by forward-over-reverse, the jvp of the weighted-loss gradient along λ.
                _, dots = jvp(lambda p: self.losses(p, self.train), (th,), (lam,))
                _, hvp = jvp(lambda p: self.train_grad(p, gt), (th,), (lam,))
            g[t] = -eta * dots
            dev = self.dev_grad(th)
            lam = {k: dev[k] / T + lam[k] - eta * hvp[k] for k in lam}
        return g


def run_quiet(cmd, env=None):
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)


def learnlaw_search(binary, data_path, backend, args, out_dir, task_flags):
    cmd = [
        binary, "search", "--data", data_path, "--out", out_dir, "--backend", backend,
        "--steps", str(args.steps), "--eta", str(args.eta), "--epochs", str(args.epochs),
        "--outer-lr", str(args.outer_lr), *task_flags,
    ]
    env = dict(os.environ)
    if args.threads > 0:
        env["RAYON_NUM_THREADS"] = str(args.threads)
    run_quiet(cmd, env)
    # Per-epoch J and seconds are in the policy file's metadata (summary.json has only the mean).
    with safe_open(os.path.join(out_dir, "policy.safetensors"), "np") as f:
        history = json.loads(f.metadata()["history"])
    return history["j"], history["seconds"]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
        return f"{names[0]}, {len(names)} logical CPUs" if names else "unknown CPU"
    except OSError:
        return "unknown CPU"


def load_avg():
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def perceptron_setup(args, data, work):
    """Engines to build and the data file learnlaw reads (a copy with θ_0 when it has none)."""
    data_path = args.data
    if "theta0" not in data:
        d = data["x_train"].shape[1]
        rng = np.random.default_rng(args.theta_seed)
        data["theta0"] = rng.uniform(-1 / np.sqrt(d), 1 / np.sqrt(d), d).astype(np.float32)
        data_path = os.path.join(work, "data_with_theta0.safetensors")
        save_file({k: np.ascontiguousarray(v) for k, v in data.items()}, data_path)
        print(f"no theta0 in {args.data}: wrote a copy with one to {data_path}", file=sys.stderr)
    dtype = getattr(torch, args.dtype)
    make = lambda name: ENGINES[name](data, data["theta0"], args.steps, args.eta, args.device, dtype)
    n, dim = data["x_train"].shape
    desc = f"perceptron T={args.steps} N={n} D={dim} K={data['x_dev'].shape[0]}"
    return make, data_path, [], desc


def transformer_setup(args, data, work):
    """θ_0 (the official module's state dict, the same file for torch and for learnlaw's
    --theta0) and the model flags for learnlaw, from --theta0 or else from learnlaw's own θ_0."""
    from safetensors.torch import load_file as load_torch

    context = data["train"].shape[1] - 1
    with safe_open(args.data, "np") as f:
        vocab = int((f.metadata() or {}).get("vocab_size", 0)) or int(max(data[k].max() for k in ("train", "dev"))) + 1
    flags = {"hidden_size": args.hidden, "num_head": args.heads, "num_layers": args.layers}
    if args.theta0 is None:
        # learnlaw's θ_0 for --init-seed (what `search`/`reproduce` start from), written in the
        # official format by `learnlaw export` of a search of no epoch.
        run, out = os.path.join(work, "theta0_run"), os.path.join(work, "theta0")
        run_quiet([args.learnlaw, "search", "--task", "transformer", "--data", args.data, "--out", run,
                   "--steps", "1", "--epochs", "0", "--init-seed", str(args.init_seed),
                   "--hidden", str(args.hidden or 64), "--heads", str(args.heads or 4),
                   "--layers", str(args.layers or 2)])
        run_quiet([args.learnlaw, "export", run, "--out", out, "--format", "official"])
        theta0_path = os.path.join(out, "theta_0.safetensors")
    else:
        theta0_path = args.theta0
    with safe_open(theta0_path, "np") as f:
        meta = f.metadata() or {}
    if "config" in meta:
        cfg = json.loads(meta["config"])
        for key, v in flags.items():
            if v is not None and v != cfg[key]:
                sys.exit(f"{theta0_path} is a model with {key} {cfg[key]}, not {v}")
    else:  # a state dict written by torch: the flags say what it is
        cfg = {"hidden_size": args.hidden or 64, "num_head": args.heads or 4, "num_layers": args.layers or 2,
               "vocab_size": vocab, "max_len": context}
    if (cfg["vocab_size"], cfg["max_len"]) != (vocab, context):
        sys.exit(f"{theta0_path}: vocabulary {cfg['vocab_size']} and context {cfg['max_len']}, "
                 f"but {args.data} has {vocab} and {context}")
    theta0 = load_torch(theta0_path)
    task_flags = ["--task", "transformer", "--theta0", theta0_path, "--hidden", str(cfg["hidden_size"]),
                  "--heads", str(cfg["num_head"]), "--layers", str(cfg["num_layers"])]
    dtype = getattr(torch, args.dtype)
    make = lambda name: TransformerFuncSearch(data, theta0, cfg, args.steps, args.eta, args.device, dtype, args.dots)
    params = sum(v.numel() for v in theta0.values())
    desc = (f"transformer T={args.steps} N={data['train'].shape[0]} K={data['dev'].shape[0]} context={context} "
            f"vocab={vocab} hidden={cfg['hidden_size']} heads={cfg['num_head']} layers={cfg['num_layers']} "
            f"P={params} (θ_0 {theta0_path if args.theta0 else f'learnlaw --init-seed {args.init_seed}'}; "
            f"torch dots {args.dots})")
    return make, args.data, task_flags, desc


# Per task: (defaults of --steps, --eta, --outer-lr: the official scripts' for the perceptron,
# learnlaw's scaled default for the Transformer), the torch engines it has, their default.
TASKS = {
    "perceptron": ((2000, 0.1, 0.001), ("closed", "func"), "closed,func"),
    "transformer": ((200, 0.5, 0.4), ("func",), "func"),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True,
                    help="safetensors from `learnlaw data perceptron` (or `learnlaw data text` with --task transformer)")
    ap.add_argument("--task", default="perceptron", choices=list(TASKS))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, help="T (default: perceptron 2000, transformer 200)")
    ap.add_argument("--eta", type=float, help="η (default: perceptron 0.1, transformer 0.5)")
    ap.add_argument("--outer-lr", type=float, help="outer SGD lr (default: perceptron 0.001, transformer 0.4)")
    ap.add_argument("--torch-engines", help="PyTorch engines to run: closed, func (perceptron; default both), "
                    "func (transformer)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the torch side only; perceptron only)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--learnlaw", default="target/release/learnlaw", help="path to the learnlaw binary")
    ap.add_argument("--backends", default="cpu-f64,cpu", help="learnlaw backends to compare against")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads and learnlaw's RAYON_NUM_THREADS (0: their defaults)")
    ap.add_argument("--keep", action="store_true", help="keep the data copy, θ_0 and the learnlaw run dirs")
    ap.add_argument("--j-rtol", type=float,
                    help="largest relative J difference allowed between a torch engine and a learnlaw backend "
                         "(default 1e-9 for torch float64 vs cpu-f64, else 1e-4)")
    ap.add_argument("--theta-seed", type=int, default=10, help="perceptron: seed of θ_0 when the file has none")
    ap.add_argument("--theta0", help="transformer: θ_0 as the official module's state dict (safetensors, "
                    "`learnlaw export` writes one), for both sides; default: learnlaw's θ_0 for --init-seed")
    ap.add_argument("--init-seed", type=int, default=10, help="transformer: learnlaw's θ_0 seed without --theta0")
    ap.add_argument("--hidden", type=int, help="transformer: hidden width (default 64, or --theta0's)")
    ap.add_argument("--heads", type=int, help="transformer: attention heads (default 4, or --theta0's)")
    ap.add_argument("--layers", type=int, help="transformer: blocks (default 2, or --theta0's)")
    ap.add_argument("--dots", default="fused", choices=["fused", "separate"],
                    help="transformer torch.func backward: H_t λ and the N dots ∇l_n·λ from one jvp of "
                         "grad (fused, default) or the dots by their own jvp of the per-example losses")
    args = ap.parse_args()
    (steps, eta, outer_lr), known, default_engines = TASKS[args.task]
    args.steps = steps if args.steps is None else args.steps
    args.eta = eta if args.eta is None else args.eta
    args.outer_lr = outer_lr if args.outer_lr is None else args.outer_lr
    engines = (args.torch_engines or default_engines).split(",")
    for name in engines:
        if name not in known:
            ap.error(f"--torch-engines: {args.task} has no engine {name!r} ({', '.join(known)})")
    if args.task == "transformer" and args.device != "cpu":
        ap.error("--task transformer runs torch on the CPU only")
    if args.task == "perceptron" and args.theta0:
        ap.error("--theta0 is for --task transformer (a perceptron file carries its theta0)")

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    data = load_file(args.data)
    work = tempfile.mkdtemp(prefix="compare_torch_")
    try:
        setup = transformer_setup if args.task == "transformer" else perceptron_setup
        make, data_path, task_flags, desc = setup(args, data, work)
        load_start = load_avg()

        # Every implementation's (J per epoch, s per epoch, torch phase split per epoch or None).
        dtype = getattr(torch, args.dtype)
        runs, searches = {}, {}
        for name in engines:
            s = searches[name] = make(name)
            runs[s.name] = s.run(args.epochs, args.outer_lr)
        backends = args.backends.split(",")
        for backend in backends:
            j, secs = learnlaw_search(args.learnlaw, data_path, backend, args, os.path.join(work, backend), task_flags)
            runs[f"learnlaw {backend}"] = (j, secs, None)

        print(f"\n{cpu_model()}; {desc} η={args.eta} outer lr={args.outer_lr} E={args.epochs}; "
              f"torch {torch.__version__} {args.device} {args.dtype}, {torch.get_num_threads()} threads; "
              f"learnlaw RAYON_NUM_THREADS={args.threads if args.threads > 0 else 'default'}; "
              f"load average (1/5/15 min) {load_start} at the start, {load_avg()} at the end")

        names = list(runs)
        print("\n| epoch | " + " | ".join(f"J {b}" for b in names) + " | max rel diff |")
        print("|---" * (2 + len(names)) + "|")
        worst, pair = 0.0, None
        for e in range(args.epochs + 1):
            js = {b: runs[b][0][e] for b in names}
            rels = {(a, b): abs(js[a] - js[b]) / abs(js[b]) for a in names for b in names}
            spread = max(rels.values())
            if spread > worst:
                worst, pair = spread, max(rels, key=rels.get)
            print(f"| {e} | " + " | ".join(f"{j:.10f}" for j in js.values()) + f" | {spread:.1e} |")
        print(f"\nmax relative J difference between all of them: {worst:.2e}"
              + (f" ({pair[0]} vs {pair[1]})" if pair else ""))

        # Each torch engine's J against each learnlaw backend's: a failure exits 1. torch float64 vs
        # cpu-f64 is the same computation to f64 rounding: every epoch, 1e-9. A pair with f32 in it
        # differs by f32 rounding: the perceptron's J agree to ~1e-7 at every epoch, but the
        # Transformer's search amplifies rounding (at the scaled default learnlaw's own cpu and cpu-f64
        # differ by 1% after one outer epoch, torch f32 by 2-3%), so there only epoch 0 (the constant
        # policy's unrolled training: same model, data and θ_0) is checked, at 1e-4. A backend that
        # stores X in 16 bits (cpu-bf16) trains on X rounded to 8 significant bits: 1e-3 (its J
        # differs from f32's by ~2e-4). --j-rtol: that tolerance for every pair at every epoch.
        j_ok = True
        for name in engines:
            a = searches[name].name
            for backend in backends:
                b = f"learnlaw {backend}"
                exact = dtype == torch.float64 and backend == "cpu-f64"
                tol = args.j_rtol if args.j_rtol is not None else (1e-9 if exact else 1e-3 if "16" in backend else 1e-4)
                every = exact or args.j_rtol is not None or args.task == "perceptron"
                pairs = list(zip(runs[a][0], runs[b][0]))[: None if every else 1]
                rel = max(abs(x - y) / abs(y) for x, y in pairs)
                ok = rel <= tol
                j_ok &= ok
                print(f"J, {a} vs {b}, {'every epoch' if every else 'epoch 0 (f32 rounding: later epochs not checked)'}: "
                      f"max relative difference {rel:.2e} ({'ok' if ok else 'MISMATCH'}, tolerance {tol:g})")

        grad_ok = True
        if "closed" in searches and "func" in searches:
            gc, gf = searches["closed"].first_grad, searches["func"].first_grad
            rel = ((gc - gf).abs().max() / gf.abs().max()).item()
            tol = 1e-3 if dtype == torch.float32 else 1e-9
            grad_ok = rel <= tol
            print(f"∂J/∂γ on the first epoch, closed vs torch.func: max|Δ| / max|∂J/∂γ| = {rel:.2e} "
                  f"({'ok' if grad_ok else 'MISMATCH'}, tolerance {tol:g})")

        # Median and minimum over epochs: the first epoch carries one-off set-up (torch.func's first
        # calls, allocations), and on a shared machine the minimum is the least disturbed epoch.
        med = {b: float(np.median(runs[b][1])) for b in names}
        low = {b: float(np.min(runs[b][1])) for b in names}
        refs = [searches[name].name for name in engines]
        print("\n| implementation | s / outer epoch, median | min | forward | adjoint | SGD + projection | "
              + " | ".join(f"{r} / this, median (min)" for r in refs) + " |")
        print("|---" * (6 + len(refs)) + "|")
        for b in names:
            parts = runs[b][2]
            split = [f"{float(np.median(p)):.4g}" for p in zip(*parts)] if parts else ["—"] * 3
            ratios = [f"{med[r] / med[b]:.3g}× ({low[r] / low[b]:.3g}×)" for r in refs]
            print(f"| {b} | {med[b]:.4g} | {low[b]:.4g} | " + " | ".join(split + ratios) + " |")
    finally:  # also after an error or Ctrl-C: each run dir holds a [T, N] policy (32 MiB at the paper's size)
        if args.keep:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if not j_ok:
        sys.exit("J of a torch engine and of learnlaw disagree beyond the tolerance")
    if not grad_ok:
        sys.exit("the closed-form and torch.func ∂J/∂γ disagree")


if __name__ == "__main__":
    main()
