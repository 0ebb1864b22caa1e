#!/usr/bin/env python3
"""Tests scripts/convert_official_data.py on files laid out like the official data: token tensors
[n, 65]-style (here [n, 9]) with a vocab.pt, the perceptron's (x, y) tuples, a cached θ_0 state
dict. With torch importable they are written by torch.save itself; without it, by a stand-in that
writes torch.save's zip format (data.pkl pickling `torch._utils._rebuild_tensor_v2` over storages
in data/<key>), including a strided, offset view as slicing leaves behind.

    python3 scripts/test_convert_official_data.py [--learnlaw target/debug/learnlaw]

With --learnlaw it also runs `learnlaw search` on the converted files (a search-only token file
with --no-test; the perceptron data from the converted θ_0) and `learnlaw eval` where a test set
exists. Exits non-zero on the first failure. (crates/learnlaw-cli/tests/theta_io.rs runs it.)
"""
import argparse
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import types
import zipfile
from array import array
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
CONVERT = os.path.join(HERE, "convert_official_data.py")


class View:
    """A tensor to save: a storage (flat values of one kind) and a view of it."""

    def __init__(self, values, kind, shape, stride=None, offset=0):
        self.values, self.kind, self.shape, self.offset = values, kind, shape, offset
        if stride is None:
            stride, acc = [], 1
            for d in reversed(shape):
                stride.insert(0, acc)
                acc *= d
        self.stride = stride


def dense(rows, kind):
    return View([v for r in rows for v in r], kind, [len(rows), len(rows[0]) if rows else 0])


STORAGE = {"q": "LongStorage", "i": "IntStorage", "f": "FloatStorage", "d": "DoubleStorage"}
TORCH_DTYPE = {"q": "int64", "i": "int32", "f": "float32", "d": "float64"}


def save_with_torch(obj, path):
    import torch

    def conv(o):
        if isinstance(o, View):
            storage = torch.tensor(o.values, dtype=getattr(torch, TORCH_DTYPE[o.kind]))
            return storage.as_strided(o.shape, o.stride, o.offset)
        if isinstance(o, (list, tuple)):
            return type(o)(conv(x) for x in o)
        if isinstance(o, dict):
            return OrderedDict((k, conv(v)) for k, v in o.items())
        return o

    torch.save(conv(obj), path)


def save_without_torch(obj, path):
    """torch.save's zip layout, written with stand-in `torch` modules so that pickle emits the
    same global references (torch._utils._rebuild_tensor_v2, torch.LongStorage, …)."""
    fake_torch, fake_utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    fake_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in STORAGE.values():
        setattr(fake_torch, name, type(name, (), {"__module__": "torch"}))
    fake_torch._utils = fake_utils
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = fake_torch, fake_utils
    storages = []

    class Storage:
        def __init__(self, view):
            self.view = view

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, Storage):
                storages.append(o.view)
                key = str(len(storages) - 1)
                return ("storage", getattr(fake_torch, STORAGE[o.view.kind]), key, "cpu", len(o.view.values))
            return None

        def reducer_override(self, o):
            if isinstance(o, View):
                return _rebuild_tensor_v2, (Storage(o), o.offset, tuple(o.shape), tuple(o.stride), False, OrderedDict())
            return NotImplemented

    try:
        buf = io.BytesIO()
        Pickler(buf, protocol=2).dump(obj)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        for key, view in enumerate(storages):
            z.writestr(f"archive/data/{key}", array(view.kind, view.values).tobytes())
        z.writestr("archive/version", "3\n")


def have_torch():
    try:
        import torch  # noqa: F401

        return True
    except ImportError:
        return False


SAVE = save_with_torch if have_torch() else save_without_torch


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    out = {}
    for name, t in header.items():
        a = array({"I32": "i", "F32": "f"}[t["dtype"]])
        a.frombytes(raw[8 + n + t["data_offsets"][0] : 8 + n + t["data_offsets"][1]])
        out[name] = (t["shape"], a.tolist())
    return out, meta


def run(args, ok=True):
    p = subprocess.run([sys.executable, CONVERT] + args, capture_output=True, text=True)
    if ok and p.returncode != 0:
        raise AssertionError(f"convert {args} failed:\n{p.stdout}\n{p.stderr}")
    if not ok and p.returncode == 0:
        raise AssertionError(f"convert {args} should have failed:\n{p.stdout}")
    return p.stdout + p.stderr


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def token_rows(n, width, vocab, seed):
    rows = []
    for r in range(n):
        row = [2 + (seed * 7 + r * 5 + i * 3) % (vocab - 2) for i in range(width)]
        pads = r % 3  # some rows end in PAD, as shorter stories do
        rows.append(row[: width - pads] + [1] * pads)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--learnlaw", help="the learnlaw binary: also search (and evaluate) on the converted files")
    args = ap.parse_args()
    print(f"writing the official-like files with {'torch.save' if have_torch() else 'a stand-in for torch.save (no torch)'}")
    with tempfile.TemporaryDirectory(prefix="convert-test-") as tmp:
        check(tmp, args.learnlaw)
    print("OK: convert_official_data.py")


def check(tmp, learnlaw_bin):
    ts = os.path.join(tmp, "tinystory")
    os.makedirs(ts)
    width, vocab = 9, 40
    train, dev, test = token_rows(24, width, vocab, 1), token_rows(8, width, vocab, 2), token_rows(6, width, vocab, 3)
    SAVE(dense(train, "q"), os.path.join(ts, "train.pt"))
    SAVE(dense(dev, "q"), os.path.join(ts, "dev.pt"))
    # The test set as slicing leaves it: an offset view of a larger storage (the first 6 of 8 rows,
    # starting one row in).
    bigger = [[0] * width] + test + [[5] * width]
    SAVE(View([v for r in bigger for v in r], "q", [6, width], [width, 1], width), os.path.join(ts, "test.pt"))
    SAVE(list(range(1000, 1000 + vocab)), os.path.join(ts, "vocab.pt"))

    out = os.path.join(tmp, "tokens.safetensors")
    msg = run(["tinystory", ts, "--out", out])
    expect("train 24, dev 8, test 6" in msg and "vocabulary 40" in msg, msg)
    got, meta = read_safetensors(out)
    expect(meta == {"vocab_size": "40"}, meta)
    for name, rows in [("train", train), ("dev", dev), ("test", test)]:
        expect(got[name] == ([len(rows), width], [v for r in rows for v in r]), f"{name}: {got[name]}")
    # The official trainer's cuts, and a search-only file.
    only = os.path.join(tmp, "search-only.safetensors")
    run(["tinystory", ts, "--out", only, "--train-num", "16", "--no-test"])
    got, _ = read_safetensors(only)
    expect(got["train"][0] == [16, width] and got["test"] == ([0, width], []), {k: v[0] for k, v in got.items()})
    # Clear errors: an id beyond the vocabulary, a row without labels, a missing test file.
    msg = run(["tinystory", ts, "--out", os.path.join(tmp, "x.safetensors"), "--vocab-size", "20"], ok=False)
    expect("is not in 0..19" in msg and "train.pt" in msg and "row 0" in msg, msg)
    bad = os.path.join(tmp, "bad")
    os.makedirs(bad)
    SAVE(dense(train, "q"), os.path.join(bad, "train.pt"))
    SAVE(dense([dev[0], [3] + [1] * (width - 1)], "q"), os.path.join(bad, "dev.pt"))
    msg = run(["tinystory", bad, "--out", os.path.join(tmp, "x.safetensors"), "--vocab-size", "40"], ok=False)
    expect("dev.pt: row 1 has no label" in msg, msg)
    SAVE(dense(dev, "q"), os.path.join(bad, "dev.pt"))
    msg = run(["tinystory", bad, "--out", os.path.join(tmp, "x.safetensors"), "--vocab-size", "40"], ok=False)
    expect("test.pt is missing" in msg and "--no-test" in msg, msg)
    msg = run(["tinystory", bad, "--out", os.path.join(tmp, "x.safetensors")], ok=False)
    expect("--vocab-size" in msg, msg)
    expect(not os.path.exists(os.path.join(tmp, "x.safetensors")), "a failed conversion writes nothing")

    # The perceptron data and a cached θ_0.
    lin = os.path.join(tmp, "linear")
    os.makedirs(lin)
    d = 4
    for name, n in [("train", 16), ("dev", 8), ("test", 8)]:
        x = [[((r * 3 + c * 5) % 7 - 3) / 2 for c in range(d)] for r in range(n)]
        y = [1 if sum(row) > 0 else 0 for row in x]
        SAVE((dense(x, "f"), View(y, "q", [n])), os.path.join(lin, f"{name}.pt"))
    perceptron = os.path.join(tmp, "perceptron.safetensors")
    msg = run(["linear", lin, "--out", perceptron])
    got, _ = read_safetensors(perceptron)
    expect(got["x_train"][0] == [16, d] and got["y_dev"][0] == [8] and set(got["y_train"][1]) <= {0.0, 1.0}, msg)
    init = os.path.join(tmp, "init.pt")
    SAVE(OrderedDict([("linear.weight", View([0.25, -0.5, 0.125, 0.75], "f", [1, d]))]), init)
    theta0 = os.path.join(tmp, "theta0.safetensors")
    run(["model-init", init, "--out", theta0])
    got, _ = read_safetensors(theta0)
    expect(got == {"linear.weight": ([1, d], [0.25, -0.5, 0.125, 0.75])}, got)
    os.makedirs(os.path.join(bad, "lin"))
    for name, label in [("train", 2), ("dev", 1), ("test", 1)]:
        SAVE((dense([[0.0] * d], "f"), View([label], "q", [1])), os.path.join(bad, "lin", f"{name}.pt"))
    msg = run(["linear", os.path.join(bad, "lin"), "--out", os.path.join(tmp, "x.safetensors")], ok=False)
    expect("label 2 at row 0 is not 0 or 1" in msg, msg)

    if learnlaw_bin:
        def learnlaw(*a):
            p = subprocess.run([learnlaw_bin] + list(a), capture_output=True, text=True, cwd=tmp)
            if p.returncode != 0:
                raise AssertionError(f"learnlaw {a} failed:\n{p.stdout}\n{p.stderr}")
            return p.stdout

        out = learnlaw("search", "--task", "transformer", "--data", only, "--out", "ts-run", "--hidden", "8", "--heads", "2",
                       "--layers", "1", "--steps", "6", "--epochs", "1")
        expect("search done" in out, out)
        learnlaw("search", "--task", "transformer", "--data", os.path.join(tmp, "tokens.safetensors"), "--out", "ts-full", "--hidden", "8", "--heads",
                 "2", "--layers", "1", "--steps", "6", "--epochs", "1")
        expect("AR test" in learnlaw("eval", "ts-full"), "eval on the converted token data")
        out = learnlaw("search", "--data", perceptron, "--out", "p-run", "--steps", "6", "--epochs", "1", "--theta0", theta0)
        expect("search done" in out, out)
        print("learnlaw searched the converted files")


if __name__ == "__main__":
    main()
