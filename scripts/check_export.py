#!/usr/bin/env python3
"""Checks a `learnlaw export` (official format) against the official PyTorch modules: every
exported θ_t loads into a model built like the official one, and gives the per-example training
losses learnlaw computed for it (train_losses.safetensors, written by the same export).

    learnlaw export RUN_DIR --steps 5            # RUN_DIR/export/theta_{0,5,final}.safetensors
    python3 scripts/check_export.py RUN_DIR/export --data RUN_DIR/data.safetensors

With torch (and safetensors) importable, it builds the modules of microsoft/LMOps learning_law
(`transformer_model.Transformer` wrapping `modeling.BaseTransformer`, or `PerceptronModel`) as a
reimplementation here (same parameter names, shapes and forward), loads each file with
`load_state_dict(strict=True)` and compares losses in float64. Without torch that part is skipped,
visibly (it prints SKIPPED), and the losses are computed instead by a pure-Python reference of the
same forward pass, reading the state dict by its official names and applying `nn.Linear` as
y = x·Wᵀ: slow, so only the first --max-examples rows (default 16). Either way the exit status is
non-zero when a loss differs by more than --rtol (relative) + --atol.
"""
import argparse
import json
import math
import os
import struct
import sys
from array import array

PAD = 1  # PAD id of the token data; its label positions are masked from the loss
RMS_EPS = 1e-8

# ---------------------------------------------------------------------------------------------
# safetensors, read without the safetensors package (header: u64 length, JSON; then raw bytes)

DTYPES = {"F32": "f", "F64": "d", "I32": "i", "I64": "q", "U8": "B", "BOOL": "B"}


def read_safetensors(path):
    """{name: (shape, flat list of values)} and the metadata dict."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    out = {}
    for name, t in header.items():
        code = DTYPES.get(t["dtype"])
        if code is None:
            raise SystemExit(f"{path}: tensor {name} has dtype {t['dtype']}, which this script does not read")
        begin, end = t["data_offsets"]
        values = array(code)
        values.frombytes(raw[base + begin : base + end])
        if sys.byteorder != "little":
            values.byteswap()
        out[name] = (t["shape"], values.tolist())
    return out, meta


def rows(shape, flat):
    cols = shape[1]
    return [flat[r * cols : (r + 1) * cols] for r in range(shape[0])]


# ---------------------------------------------------------------------------------------------
# The official forward passes, in plain Python (reference when torch is missing)


def linear(x, w):
    """nn.Linear without bias: y = x·Wᵀ, W [out, in] as rows."""
    return [[sum(a * b for a, b in zip(xi, wr)) for wr in w] for xi in x]


def rmsnorm(x, weight, bias):
    out = []
    for xi in x:
        rms = math.sqrt(sum(v * v for v in xi) / len(xi))
        out.append([weight[c] * (v / (rms + RMS_EPS)) + bias[c] for c, v in enumerate(xi)])
    return out


def attention(x, p, prefix, heads):
    hidden = len(x[0])
    hd = hidden // heads
    q, k, v = (linear(x, p[f"{prefix}.attn.w_{n}.weight"]) for n in "qkv")
    merged = [[0.0] * hidden for _ in x]
    for h in range(heads):
        cols = slice(h * hd, (h + 1) * hd)
        for i in range(len(x)):
            # Causal: position i attends to 0..i; scores scaled by 1/√hidden as the official code.
            scores = [sum(a * b for a, b in zip(q[i][cols], k[j][cols])) / math.sqrt(hidden) for j in range(i + 1)]
            m = max(scores)
            e = [math.exp(s - m) for s in scores]
            z = sum(e)
            for j in range(i + 1):
                for c, vc in enumerate(v[j][cols]):
                    merged[i][h * hd + c] += e[j] / z * vc
    return linear(merged, p[f"{prefix}.attn.w_o.weight"])


def transformer_loss_py(p, cfg, row):
    inputs, labels = row[:-1], row[1:]
    x = [[a + b for a, b in zip(p["word_embed.weight"][t], p["pos_embed.weight"][i])] for i, t in enumerate(inputs)]
    for l in range(cfg["num_layers"]):
        pre = f"blocks.{l}"
        a = attention(rmsnorm(x, p[f"{pre}.ln_1.weight"], p[f"{pre}.ln_1.bias"]), p, pre, cfg["num_head"])
        x = [[u + w for u, w in zip(xi, ai)] for xi, ai in zip(x, a)]
        hidden = [[max(0.0, v) for v in r] for r in linear(rmsnorm(x, p[f"{pre}.ln_2.weight"], p[f"{pre}.ln_2.bias"]), p[f"{pre}.ffn.mlp_1.weight"])]
        f = linear(hidden, p[f"{pre}.ffn.mlp_2.weight"])
        x = [[u + w for u, w in zip(xi, fi)] for xi, fi in zip(x, f)]
    logits = linear(rmsnorm(x, p["ln_end.weight"], p["ln_end.bias"]), p["lm_head.weight"])
    total, count = 0.0, 0
    for z, y in zip(logits, labels):
        if y == PAD:
            continue
        m = max(z)
        total += m + math.log(sum(math.exp(v - m) for v in z)) - z[y]
        count += 1
    return total / count


def perceptron_loss_py(p, x, y):
    z = sum(a * b for a, b in zip(p["linear.weight"][0], x))
    # BCE with logits, as F.binary_cross_entropy_with_logits.
    return max(z, 0.0) - y * z + math.log1p(math.exp(-abs(z)))


def python_losses(task, cfg, state, data, n):
    prefix = "base_model."
    p = {}
    for name, (shape, flat) in state.items():
        key = name[len(prefix) :] if name.startswith(prefix) else name
        p[key] = rows(shape, flat) if len(shape) == 2 else flat
    if task == "transformer":
        shape, flat = data["train"]
        return [transformer_loss_py(p, cfg, r) for r in rows(shape, flat)[:n]]
    xs = rows(*data["x_train"])[:n]
    return [perceptron_loss_py(p, x, y) for x, y in zip(xs, data["y_train"][1])]


# ---------------------------------------------------------------------------------------------
# The official modules in torch (a reimplementation with the official names, shapes and forward)


def torch_modules():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class RMSLayerNorm(nn.Module):
        def __init__(self, hidden):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(hidden))
            self.bias = nn.Parameter(torch.zeros(hidden))

        def forward(self, x):
            rms = x.pow(2).mean(-1, keepdim=True).sqrt()
            return self.weight * (x / (rms + RMS_EPS)) + self.bias

    class Attention(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            h = cfg["hidden_size"]
            self.heads, self.hidden = cfg["num_head"], h
            self.w_q, self.w_k, self.w_v, self.w_o = (nn.Linear(h, h, bias=False) for _ in range(4))
            # The official buffer (its spelling, shape and dtype); non-persistent, so not in the state dict.
            mask = torch.tril(torch.ones(1, 1, cfg["max_len"], cfg["max_len"], dtype=torch.long))
            self.register_buffer("casual_mask", mask, persistent=False)

        def forward(self, x):
            b, n, h = x.shape
            split = lambda t: t.view(b, n, self.heads, h // self.heads).transpose(1, 2)
            q, k, v = split(self.w_q(x)), split(self.w_k(x)), split(self.w_v(x))
            s = q @ k.transpose(-1, -2) / self.hidden**0.5
            s = s.masked_fill(self.casual_mask[:, :, :n, :n] == 0, torch.finfo(s.dtype).min)
            o = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, n, h)
            return self.w_o(o)

    class FFN(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            h = cfg["hidden_size"]
            self.mlp_1 = nn.Linear(h, 4 * h, bias=False)
            self.mlp_2 = nn.Linear(4 * h, h, bias=False)

        def forward(self, x):
            return self.mlp_2(F.relu(self.mlp_1(x)))

    class Block(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.attn, self.ffn = Attention(cfg), FFN(cfg)
            self.ln_1, self.ln_2 = RMSLayerNorm(cfg["hidden_size"]), RMSLayerNorm(cfg["hidden_size"])

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.ffn(self.ln_2(x))

    class BaseTransformer(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            h = cfg["hidden_size"]
            self.word_embed = nn.Embedding(cfg["vocab_size"], h)
            self.pos_embed = nn.Embedding(cfg["max_len"], h)
            self.lm_head = nn.Linear(h, cfg["vocab_size"], bias=False)
            self.ln_end = RMSLayerNorm(h)
            self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg["num_layers"])])

        def forward(self, ids):
            x = self.word_embed(ids) + self.pos_embed(torch.arange(ids.shape[1]))
            for blk in self.blocks:
                x = blk(x)
            return self.lm_head(self.ln_end(x))

    class ToyOutput:  # the official forward's return value: the logits, as .logits
        def __init__(self, logits):
            self.logits = logits

    class Transformer(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.base_model = BaseTransformer(cfg)

        def forward(self, ids):
            return ToyOutput(self.base_model(ids))

        def losses(self, data):
            """Per-example losses of token rows [B, L+1]: inputs row[:-1], labels row[1:], the
            token cross-entropy averaged over label positions that are not PAD (official compute_loss)."""
            ids, labels = data[:, :-1], data[:, 1:]
            logits = self(ids).logits
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none").view(labels.shape)
            mask = (labels != PAD).to(ce.dtype)
            return (ce * mask).sum(-1) / mask.sum(-1)

    class PerceptronModel(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.linear = nn.Linear(cfg["hidden_size"], 1, bias=False)

        def forward(self, x):
            return self.linear(x)

        def losses(self, x, y):
            return F.binary_cross_entropy_with_logits(self(x).squeeze(-1), y, reduction="none")

    return torch, Transformer, PerceptronModel


ROWS_PER_BATCH = 64  # Transformer rows per forward pass: f64 logits of all N rows at once need N·L·V·8 bytes


def torch_losses(task, cfg, path, data):
    torch, Transformer, PerceptronModel = torch_modules()
    from safetensors.torch import load_file

    state = load_file(path)
    # f64 before loading, so a file of any float dtype keeps its values (an f32 one converts exactly).
    model = (Transformer(cfg) if task == "transformer" else PerceptronModel(cfg)).double()
    model.load_state_dict(state, strict=True)  # names and shapes exactly the official module's
    with torch.no_grad():
        if task == "transformer":
            shape, flat = data["train"]
            ids = torch.tensor(flat, dtype=torch.long).view(*shape)
            return [v for chunk in ids.split(ROWS_PER_BATCH) for v in model.losses(chunk).tolist()]
        (xs, xf), (_, yf) = data["x_train"], data["y_train"]
        return model.losses(torch.tensor(xf, dtype=torch.float64).view(*xs), torch.tensor(yf, dtype=torch.float64)).tolist()


def have_torch():
    try:
        import safetensors.torch  # noqa: F401
        import torch  # noqa: F401

        return True
    except ImportError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export_dir")
    ap.add_argument("--data", required=True, help="the run's data file (token data or perceptron data)")
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--max-examples", type=int, default=16, help="rows checked without torch (all with torch)")
    ap.add_argument("--no-torch", action="store_true", help="use the pure-Python reference even when torch is there")
    args = ap.parse_args()

    learnlaw_losses, _ = read_safetensors(os.path.join(args.export_dir, "train_losses.safetensors"))
    data, _ = read_safetensors(args.data)
    use_torch = have_torch() and not args.no_torch
    if not use_torch:
        why = "--no-torch" if args.no_torch else "torch or safetensors not importable"
        print(f"SKIPPED: the load_state_dict check ({why}); "
              f"checking with the pure-Python reference of the official forward pass, first {args.max_examples} rows")
    worst = 0.0
    failed = False
    for stem in sorted(learnlaw_losses, key=lambda s: (s == "theta_final", len(s), s)):
        path = os.path.join(args.export_dir, stem + ".safetensors")
        state, meta = read_safetensors(path)
        if meta.get("learnlaw_format") != "official":
            raise SystemExit(f"{path} is not in the official format (export with --format official)")
        task, cfg = meta["learnlaw_task"], json.loads(meta["config"])
        ref = learnlaw_losses[stem][1]
        got = torch_losses(task, cfg, path, data) if use_torch else python_losses(task, cfg, state, data, args.max_examples)
        want = len(ref) if use_torch else min(len(ref), args.max_examples)
        if len(got) != want:
            # zip below would compare a prefix: a --data file of another run must not pass.
            print(f"{stem}: {len(got)} losses from --data but learnlaw wrote {len(ref)}: is --data this run's data file?")
            failed = True
            continue
        bad = [(n, g, r) for n, (g, r) in enumerate(zip(got, ref)) if not abs(g - r) <= args.atol + args.rtol * abs(r)]
        err = max((abs(g - r) / max(abs(r), 1e-12) for g, r in zip(got, ref)), default=0.0)
        worst = max(worst, err)
        print(f"{stem}: {len(got)} per-example losses, largest relative difference {err:.2e}"
              + (f"; {len(bad)} differ, first: example {bad[0][0]} {bad[0][1]!r} vs learnlaw {bad[0][2]!r}" if bad else ""))
        failed |= bool(bad) or len(got) == 0
    print(("FAILED" if failed else "OK") + f": {'torch' if use_torch else 'pure-Python'} losses vs learnlaw's, worst relative difference {worst:.2e}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
