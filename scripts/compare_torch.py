#!/usr/bin/env python3
"""The perceptron policy search in PyTorch (torch.func), the way the official code does it,
against `learnlaw search` on the same data file. Not part of CI.

How to run (torch, safetensors and numpy in a venv outside the repo):

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch safetensors numpy
    cargo build --release -p learnlaw-cli
    target/release/learnlaw data perceptron --out /tmp/perceptron.safetensors
    /tmp/torchvenv/bin/python scripts/compare_torch.py --data /tmp/perceptron.safetensors --epochs 3

Options: --steps T, --eta, --outer-lr, --device cpu|cuda, --dtype float64|float32, --learnlaw PATH,
--backends cpu-f64,cpu. On a shared machine use --threads 1: torch's OpenMP threads slow down
many-fold when other processes take the cores, and one thread is as fast here (dispatch-bound).

What it does (reference §3/§8 of the official code's algorithm):
- forward: full-batch GD θ_{t+1} = θ_t − η ∇Σ_n γ_{t,n} l_n(θ_t), keeping every θ_t;
  J = (1/T) Σ_{t=0..T} L_dev(θ_t);
- backward (adjoint): per-example gradients by vmap(grad), ∂J/∂γ_{t,n} = −η ∇l_n(θ_t)·λ_{t+1},
  the HVP by jvp of grad (forward-over-reverse), λ_t = ∇L_dev(θ_t)/T + λ_{t+1} − η H_t λ_{t+1};
- outer: SGD with lr decayed linearly to 0 over the epochs, then the exact Euclidean projection of
  every row onto the simplex. The official code solves a QP per row with cvxpy; this script uses
  the exact sort-based projection (Duchi et al. 2008) in torch instead, so its projection time is
  not the official code's.

θ_0: `learnlaw data perceptron` writes no `theta0` (learnlaw then draws θ_0 from --init-seed with
ChaCha8, which numpy cannot reproduce). So when the file has no theta0, the script draws one like
PyTorch's nn.Linear init, U(−1/√D, 1/√D), and writes a copy of the data file with it; both
implementations then run on that copy and start from the same θ_0.

Then it runs `learnlaw search` with the same settings on the same file (--backend cpu-f64 and
cpu), reads each run's J and seconds per epoch from policy.safetensors' metadata, and prints J per
outer epoch from all three, the largest relative J difference, and seconds per epoch with ratios.
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
    def __init__(self, data, theta0, steps, eta, device, dtype):
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)
        self.x, self.y = t(data["x_train"]), t(data["y_train"])
        self.xd, self.yd = t(data["x_dev"]), t(data["y_dev"])
        self.theta0 = t(theta0)
        self.steps, self.eta = steps, eta
        self.dev_grad = grad(mean_loss)
        self.train_grad = grad(weighted_loss)
        self.per_example_grad = vmap(grad(example_loss), in_dims=(None, 0, 0))

    def sync(self):
        if self.x.is_cuda:
            torch.cuda.synchronize()

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

    def run(self, epochs, outer_lr):
        n = self.x.shape[0]
        gamma = torch.full((self.steps, n), 1.0 / n, dtype=self.x.dtype, device=self.x.device)
        js, secs, parts = [], [], []
        for e in range(epochs):
            self.sync()
            t0 = time.perf_counter()
            j, thetas = self.forward(gamma)
            j = j.item()  # waits for the device
            t1 = time.perf_counter()
            g = self.backward(gamma, thetas)
            self.sync()
            t2 = time.perf_counter()
            lr = outer_lr * (epochs - e) / epochs  # get_linear_schedule_with_warmup, 0 warm-up
            gamma = project_simplex_rows(gamma - lr * g)
            self.sync()
            t3 = time.perf_counter()
            js.append(j)
            secs.append(t3 - t0)
            parts.append((t1 - t0, t2 - t1, t3 - t2))
            print(f"torch epoch {e}: J {j:.10f}  {t3 - t0:.2f} s", file=sys.stderr)
        js.append(self.forward(gamma)[0].item())  # the final policy's J, as learnlaw records it
        return js, secs, parts


def learnlaw_search(binary, data_path, backend, args, out_dir):
    cmd = [
        binary, "search", "--data", data_path, "--out", out_dir, "--backend", backend,
        "--steps", str(args.steps), "--eta", str(args.eta), "--epochs", str(args.epochs),
        "--outer-lr", str(args.outer_lr),
    ]
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    # Per-epoch J and seconds are in the policy file's metadata (summary.json has only the mean).
    with safe_open(os.path.join(out_dir, "policy.safetensors"), "np") as f:
        history = json.loads(f.metadata()["history"])
    return history["j"], history["seconds"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="safetensors from `learnlaw data perceptron`")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eta", type=float, default=0.1)
    ap.add_argument("--outer-lr", type=float, default=0.001)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the torch side only)")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--learnlaw", default="target/release/learnlaw", help="path to the learnlaw binary")
    ap.add_argument("--backends", default="cpu-f64,cpu", help="learnlaw backends to compare against")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--keep", action="store_true", help="keep the data copy and the learnlaw run dirs")
    ap.add_argument("--theta-seed", type=int, default=10, help="seed of θ_0 when the file has none")
    args = ap.parse_args()

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

    dtype = getattr(torch, args.dtype)
    ts = TorchSearch(data, data["theta0"], args.steps, args.eta, args.device, dtype)
    j_torch, s_torch, parts = ts.run(args.epochs, args.outer_lr)

    runs = {}
    for backend in args.backends.split(","):
        runs[backend] = learnlaw_search(args.learnlaw, data_path, backend, args, os.path.join(work, backend))

    n, dim = data["x_train"].shape
    print(f"\nT={args.steps} N={n} D={dim} K={data['x_dev'].shape[0]} η={args.eta} outer lr={args.outer_lr} "
          f"E={args.epochs}; torch {torch.__version__} {args.device} {args.dtype}, {torch.get_num_threads()} threads")
    names = list(runs)
    print("\n| epoch | J torch | " + " | ".join(f"J learnlaw {b}" for b in names) + " | "
          + " | ".join(f"rel diff {b}" for b in names) + " |")
    print("|---" * (2 + 2 * len(names)) + "|")
    worst = {b: 0.0 for b in names}
    for e, jt in enumerate(j_torch):
        row = [f"{e}", f"{jt:.10f}"]
        diffs = []
        for b in names:
            jl = runs[b][0][e]
            rel = abs(jl - jt) / abs(jt)
            worst[b] = max(worst[b], rel)
            row.append(f"{jl:.10f}")
            diffs.append(f"{rel:.1e}")
        print("| " + " | ".join(row + diffs) + " |")
    print("\nmax relative J difference vs torch: " + ", ".join(f"{b} {worst[b]:.2e}" for b in names))

    # Median and minimum over epochs: the first epoch carries one-off set-up (torch.func's first
    # calls, allocations), and on a shared machine the minimum is the least disturbed epoch.
    st, st_min = float(np.median(s_torch)), float(np.min(s_torch))
    fwd, bwd, proj = (float(np.median(p)) for p in zip(*parts))
    print("\n| implementation | s / outer epoch, median | min | torch / this (median) | (min) |")
    print("|---|---|---|---|---|")
    print(f"| torch.func ({args.device}, {args.dtype}) | {st:.4g} (forward {fwd:.4g}, backward {bwd:.4g}, "
          f"SGD + projection {proj:.4g}) | {st_min:.4g} | 1.00 | 1.00 |")
    for b in names:
        sl, sl_min = float(np.median(runs[b][1])), float(np.min(runs[b][1]))
        print(f"| learnlaw --backend {b} | {sl:.4g} | {sl_min:.4g} | {st / sl:.1f}× | {st_min / sl_min:.1f}× |")
    if args.keep:
        print(f"\nkept {work}")
    else:
        shutil.rmtree(work)  # each run dir holds a [T, N] policy (32 MiB at the paper's size)


if __name__ == "__main__":
    main()
