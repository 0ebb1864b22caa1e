#!/usr/bin/env python3
"""The perceptron policy search in PyTorch, by two engines, against `learnlaw search` on the same
data file. Not part of CI.

How to run (torch, safetensors and numpy in a venv outside the repo):

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch safetensors numpy
    cargo build --release -p learnlaw-cli
    target/release/learnlaw data perceptron --out /tmp/perceptron.safetensors
    /tmp/torchvenv/bin/python scripts/compare_torch.py --data /tmp/perceptron.safetensors --epochs 3 --threads 1

Options: --torch-engines closed,func (which PyTorch engines run; default both), --steps T, --eta,
--outer-lr, --device cpu|cuda, --dtype float32|float64 (default float32), --learnlaw PATH,
--backends cpu-f64,cpu. On a shared machine use --threads 1: torch's OpenMP threads slow down
many-fold when other processes take the cores, and one thread is as fast here (dispatch-bound).
--threads N also sets RAYON_NUM_THREADS=N for `learnlaw search`, so both sides get N threads.

The two PyTorch engines run the same search (reference §3/§8 of the official code's algorithm),
with l_n(θ) = BCE-with-logits(x_n·θ, y_n), r = σ(Xθ) − y, X the [N, D] training matrix:
- forward: full-batch GD θ_{t+1} = θ_t − η ∇Σ_n γ_{t,n} l_n(θ_t) = θ_t − η Xᵀ(γ_t ⊙ r_t), keeping
  every θ_t; J = (1/T) Σ_{t=0..T} L_dev(θ_t), L_dev the mean loss over the dev set;
- backward (adjoint): λ_T = ∇L_dev(θ_T)/T, then for t = T−1..0
  ∂J/∂γ_{t,n} = −η ∇l_n(θ_t)·λ_{t+1} and λ_t = λ_{t+1} + ∇L_dev(θ_t)/T − η H_t λ_{t+1},
  H_t the Hessian of Σ_n γ_{t,n} l_n at θ_t;
- outer: SGD with lr decayed linearly to 0 over the epochs, then the exact Euclidean projection of
  every row onto the simplex. The official code solves a QP per row with cvxpy; this script uses
  the exact sort-based projection (Duchi et al. 2008) in torch instead, so its projection time is
  not the official code's.
The engines differ only in how they get the derivatives:
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

Then it runs `learnlaw search` with the same settings on the same file (--backend cpu-f64 and
cpu), reads each run's J and seconds per epoch from policy.safetensors' metadata, and prints J per
outer epoch from every engine and backend, the largest relative J difference between any two, and
seconds per epoch (median and min over epochs) with learnlaw's speed-up over each PyTorch engine
and the PyTorch engines' split into forward, adjoint and SGD + projection (time.perf_counter).
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
from torch.func import grad, jvp, vmap

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

    def __init__(self, data, theta0, steps, eta, device, dtype):
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)
        self.x, self.y = t(data["x_train"]), t(data["y_train"])
        self.xd, self.yd = t(data["x_dev"]), t(data["y_dev"])
        self.theta0 = t(theta0)
        self.steps, self.eta = steps, eta

    def sync(self):
        if self.x.is_cuda:
            torch.cuda.synchronize()

    def run(self, epochs, outer_lr):
        n = self.x.shape[0]
        gamma = torch.full((self.steps, n), 1.0 / n, dtype=self.x.dtype, device=self.x.device)
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


class FuncSearch(TorchSearch):
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


class ClosedSearch(TorchSearch):
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


def learnlaw_search(binary, data_path, backend, args, out_dir):
    cmd = [
        binary, "search", "--data", data_path, "--out", out_dir, "--backend", backend,
        "--steps", str(args.steps), "--eta", str(args.eta), "--epochs", str(args.epochs),
        "--outer-lr", str(args.outer_lr),
    ]
    env = dict(os.environ)
    if args.threads > 0:
        env["RAYON_NUM_THREADS"] = str(args.threads)
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="safetensors from `learnlaw data perceptron`")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eta", type=float, default=0.1)
    ap.add_argument("--outer-lr", type=float, default=0.001)
    ap.add_argument("--torch-engines", default="closed,func", help="PyTorch engines to run: closed, func")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the torch side only)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--learnlaw", default="target/release/learnlaw", help="path to the learnlaw binary")
    ap.add_argument("--backends", default="cpu-f64,cpu", help="learnlaw backends to compare against")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads and learnlaw's RAYON_NUM_THREADS (0: their defaults)")
    ap.add_argument("--keep", action="store_true", help="keep the data copy and the learnlaw run dirs")
    ap.add_argument("--theta-seed", type=int, default=10, help="seed of θ_0 when the file has none")
    args = ap.parse_args()
    engines = args.torch_engines.split(",")
    for name in engines:
        if name not in ENGINES:
            ap.error(f"--torch-engines: unknown engine {name!r} (closed, func)")

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    data = load_file(args.data)
    work = tempfile.mkdtemp(prefix="compare_torch_")
    data_path = args.data
    if "theta0" not in data:
        d = data["x_train"].shape[1]
        rng = np.random.default_rng(args.theta_seed)
        data["theta0"] = rng.uniform(-1 / np.sqrt(d), 1 / np.sqrt(d), d).astype(np.float32)
        data_path = os.path.join(work, "data_with_theta0.safetensors")
        save_file({k: np.ascontiguousarray(v) for k, v in data.items()}, data_path)
        print(f"no theta0 in {args.data}: wrote a copy with one to {data_path}", file=sys.stderr)

    # Every implementation's (J per epoch, s per epoch, torch phase split per epoch or None).
    dtype = getattr(torch, args.dtype)
    runs, searches = {}, {}
    for name in engines:
        s = searches[name] = ENGINES[name](data, data["theta0"], args.steps, args.eta, args.device, dtype)
        runs[s.name] = s.run(args.epochs, args.outer_lr)
    for backend in args.backends.split(","):
        j, secs = learnlaw_search(args.learnlaw, data_path, backend, args, os.path.join(work, backend))
        runs[f"learnlaw {backend}"] = (j, secs, None)

    n, dim = data["x_train"].shape
    print(f"\n{cpu_model()}; T={args.steps} N={n} D={dim} K={data['x_dev'].shape[0]} η={args.eta} "
          f"outer lr={args.outer_lr} E={args.epochs}; torch {torch.__version__} {args.device} {args.dtype}, "
          f"{torch.get_num_threads()} threads; learnlaw RAYON_NUM_THREADS="
          f"{args.threads if args.threads > 0 else 'default'}")

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
    if args.keep:
        print(f"\nkept {work}")
    else:
        shutil.rmtree(work)  # each run dir holds a [T, N] policy (32 MiB at the paper's size)
    if not grad_ok:
        sys.exit("the closed-form and torch.func ∂J/∂γ disagree")


if __name__ == "__main__":
    main()
