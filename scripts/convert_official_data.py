#!/usr/bin/env python3
"""Converts the official Learning Law data (microsoft/LMOps learning_law, the download its README
points to) into learnlaw's files. Needs only the Python standard library: PyTorch's .pt files (the
zip format of torch.save since PyTorch 1.6) are read directly; torch, when importable, reads the
older format too.

    # TinyStories token data: data/tinystory/{train,dev,test}.pt, int tensors [n, 65] (+ vocab.pt)
    python3 scripts/convert_official_data.py tinystory data/tinystory --out tokens.safetensors
    # the same without a test set: a file for `learnlaw search` alone (`eval` needs a test set)
    python3 scripts/convert_official_data.py tinystory data/tinystory --out search.safetensors --no-test
    # the perceptron data: data/linear/{train,dev,test}.pt, tuples (x [n, D], y [n])
    python3 scripts/convert_official_data.py linear data/linear --out perceptron.safetensors
    # the cached θ_0 (data/<name>/model_init/<model>-new.pt, a state dict) for `--theta0`
    python3 scripts/convert_official_data.py model-init data/tinystory/model_init/h128-n8-l2-len64-v5k-new.pt --out theta0.safetensors

Outputs:
- tinystory: learnlaw's token file: `train`, `dev`, `test` as int32 [n, context + 1] (the official
  width 65 = context 64 + 1; inputs are [:, :-1], labels [:, 1:], PAD = 1 is masked, UNK = 0), and
  the metadata `vocab_size`: --vocab-size, else the length of vocab.pt next to the data, else an
  error (the official model's is 5000, its --vocab-size default). --train-num/--dev-num/--test-num
  keep the first rows of a set, as the official --train-num/--dev-num do (the official trainer also
  cuts the test set to --dev-num rows). --no-test writes an empty test set [0, context + 1].
- linear: learnlaw's perceptron data: `x_train` [N, D], `y_train` [N], … as float32, labels 0/1.
- model-init: the state dict as safetensors with its keys as they are (`base_model.…` for the
  Transformer, `linear.weight` for the perceptron), float32: `learnlaw search --theta0 FILE` reads it.

Every id, label and value is checked, and a problem names the file, the set and the row.
"""
import argparse
import json
import math
import os
import pickle
import struct
import sys
import zipfile
from array import array
from collections import OrderedDict

PAD = 1

# ---------------------------------------------------------------------------------------------
# Reading torch.save files without torch


# Storage classes of torch.save's pickles → array type codes and item sizes.
STORAGES = {
    "LongStorage": ("q", 8),
    "IntStorage": ("i", 4),
    "ShortStorage": ("h", 2),
    "CharStorage": ("b", 1),
    "ByteStorage": ("B", 1),
    "BoolStorage": ("B", 1),
    "FloatStorage": ("f", 4),
    "DoubleStorage": ("d", 8),
    "HalfStorage": ("e", 2),
    "BFloat16Storage": ("bf16", 2),
}
FLOAT_CODES = {"f", "d", "e", "bf16"}


class Tensor:
    """A tensor read from a .pt file: its shape and its values, flat, row-major (Python numbers)."""

    def __init__(self, shape, values, dtype):
        self.shape, self.values, self.dtype = list(shape), values, dtype

    def rows(self):
        cols = self.shape[1]
        return [self.values[r * cols : (r + 1) * cols] for r in range(self.shape[0])]


class _Storage:
    def __init__(self, kind, values):
        self.kind, self.values = kind, values


class _StorageType:
    def __init__(self, name):
        self.name = name


def _rebuild_tensor(storage, offset, size, stride, *_rest):
    """A strided view of a storage, gathered into a contiguous row-major list."""
    size, stride = list(size), list(stride)
    if not size:
        return Tensor([], [storage.values[offset]], storage.kind)
    out = []

    def walk(dim, at):
        if dim == len(size) - 1:
            out.extend(storage.values[at + i * stride[dim]] for i in range(size[dim]))
        else:
            for i in range(size[dim]):
                walk(dim + 1, at + i * stride[dim])

    if all(s > 0 for s in size):
        walk(0, offset)
    return Tensor(size, out, storage.kind)


def _decode(raw, code, byteorder):
    if code == "bf16":
        halves = array("H")
        halves.frombytes(raw)
        if byteorder != sys.byteorder:
            halves.byteswap()
        return [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in halves]
    if code == "e":
        return [v[0] for v in struct.iter_unpack(("<" if byteorder == "little" else ">") + "e", raw)]
    a = array(code)
    a.frombytes(raw)
    if byteorder != sys.byteorder:
        a.byteswap()
    return a.tolist()


def load_pt(path):
    """The object a torch.save file holds, with tensors as `Tensor`s (torch's zip format)."""
    if not zipfile.is_zipfile(path):
        try:
            import torch
        except ImportError:
            raise SystemExit(f"{path}: not a zip-format torch.save file (PyTorch < 1.6); reading it needs torch")
        return _from_torch(torch.load(path, map_location="cpu", weights_only=True))
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = next((n for n in names if n.endswith("data.pkl")), None)
        if pkl is None:
            raise SystemExit(f"{path}: a zip file without data.pkl, not a torch.save file")
        base = pkl[: -len("data.pkl")]
        byteorder = z.read(base + "byteorder").decode().strip() if base + "byteorder" in names else "little"
        storages = {}

        class Unpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
                    return _rebuild_tensor
                if module == "torch._utils" and name == "_rebuild_parameter":
                    return lambda data, *_rest: data
                if module == "torch" and name in STORAGES:
                    return _StorageType(name)
                if module == "collections" and name == "OrderedDict":
                    return OrderedDict
                if module == "torch" and name in ("Size",):
                    return tuple
                raise SystemExit(f"{path}: holds a {module}.{name}, which this reader does not know (convert it with torch)")

            def persistent_load(self, pid):
                kind, stype, key, _location, _numel = pid[:5]
                if kind != "storage" or not isinstance(stype, _StorageType):
                    raise SystemExit(f"{path}: unknown storage reference {pid!r}")
                if key not in storages:
                    code, _ = STORAGES[stype.name]
                    storages[key] = _Storage(code, _decode(z.read(f"{base}data/{key}"), code, byteorder))
                return storages[key]

        with z.open(pkl) as f:
            return Unpickler(f).load()


def _from_torch(obj):
    """torch.load's result with tensors as `Tensor`s (the legacy format, through torch)."""
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        kind = "f" if t.is_floating_point() else "q"
        return Tensor(list(t.shape), t.reshape(-1).tolist(), kind)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_from_torch(o) for o in obj)
    if isinstance(obj, dict):
        return OrderedDict((k, _from_torch(v)) for k, v in obj.items())
    return obj


# ---------------------------------------------------------------------------------------------
# Writing safetensors without the safetensors package


def write_safetensors(path, tensors, metadata=None):
    """tensors: [(name, dtype "I32"/"F32", shape, flat values)], written in one go (to a temporary
    next to `path`, then renamed)."""
    codes = {"I32": "i", "F32": "f"}
    header, blobs, at = {}, [], 0
    for name, dtype, shape, values in tensors:
        a = array(codes[dtype], values)
        if sys.byteorder != "little":
            a.byteswap()
        b = a.tobytes()
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# The conversions


def fail(msg):
    raise SystemExit(f"error: {msg}")


def tensor_of(obj, what):
    if not isinstance(obj, Tensor):
        fail(f"{what}: expected a tensor, found {type(obj).__name__}")
    return obj


def vocab_size_of(data_dir, given):
    if given is not None:
        return given
    path = os.path.join(data_dir, "vocab.pt")
    if os.path.exists(path):
        vocab = load_pt(path)
        return vocab.shape[0] if isinstance(vocab, Tensor) else len(vocab)
    fail(f"no vocab.pt in {data_dir}: give --vocab-size (the official model's is 5000)")


def convert_tinystory(args):
    vocab = vocab_size_of(args.data_dir, args.vocab_size)
    if vocab < 3:
        fail(f"vocabulary size {vocab}: needs UNK, PAD and at least one real token")
    sets, width = [], None
    for name, keep in [("train", args.train_num), ("dev", args.dev_num), ("test", args.test_num)]:
        if name == "test" and args.no_test:
            sets.append((name, 0, []))
            continue
        path = os.path.join(args.data_dir, f"{name}.pt")
        if not os.path.exists(path):
            fail(f"{path} is missing" + (" (--no-test makes a file without a test set, for a search alone)" if name == "test" else ""))
        t = tensor_of(load_pt(path), path)
        if len(t.shape) != 2 or t.dtype in FLOAT_CODES:
            fail(f"{path}: expected integer token ids [n, context + 1], found {'floats' if t.dtype in FLOAT_CODES else 'shape'} {t.shape}")
        n, cols = t.shape
        width = width or cols
        if cols != width:
            fail(f"{path}: rows of {cols} ids, but train's are {width}")
        if cols < 2:
            fail(f"{path}: rows of {cols} ids; a row needs an input and a label (context + 1 ≥ 2)")
        n = n if keep is None else min(n, keep)
        rows = t.rows()[:n]
        for r, row in enumerate(rows):
            bad = next((i for i, v in enumerate(row) if not 0 <= v < vocab), None)
            if bad is not None:
                fail(f"{path}: token id {row[bad]} at row {r}, position {bad} is not in 0..{vocab - 1} (vocabulary {vocab}; set --vocab-size)")
            if all(v == PAD for v in row[1:]):
                fail(f"{path}: row {r} has no label (positions 1..{cols - 1} are all PAD = {PAD}); learnlaw's per-example loss needs one")
        if n == 0 and name != "test":
            fail(f"{path}: the {name} set is empty")
        sets.append((name, n, [v for row in rows for v in row]))
    width = width or 2
    write_safetensors(args.out, [(name, "I32", [n, width], flat) for name, n, flat in sets], {"vocab_size": vocab})
    sizes = ", ".join(f"{name} {n}" for name, n, _ in sets)
    print(f"wrote {args.out}: {sizes} rows of {width} ids (context {width - 1}), vocabulary {vocab}")


def convert_linear(args):
    tensors, dim = [], None
    for name in ["train", "dev", "test"]:
        path = os.path.join(args.data_dir, f"{name}.pt")
        if not os.path.exists(path):
            fail(f"{path} is missing")
        obj = load_pt(path)
        if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
            fail(f"{path}: expected a tuple (x [n, D], y [n]), found {type(obj).__name__}")
        x, y = tensor_of(obj[0], f"{path} x"), tensor_of(obj[1], f"{path} y")
        if len(x.shape) != 2:
            fail(f"{path}: x has shape {x.shape}, expected [n, D]")
        n, d = x.shape
        dim = dim or d
        if d != dim:
            fail(f"{path}: x has {d} columns, train's has {dim}")
        labels = y.values
        if len(labels) != n:
            fail(f"{path}: y has {len(labels)} values for {n} rows of x")
        bad = next((i for i, v in enumerate(x.values) if not math.isfinite(v)), None)
        if bad is not None:
            fail(f"{path}: x holds {x.values[bad]} at row {bad // d}, column {bad % d}")
        bad = next((i for i, v in enumerate(labels) if v not in (0, 1)), None)
        if bad is not None:
            fail(f"{path}: label {labels[bad]} at row {bad} is not 0 or 1")
        tensors += [(f"x_{name}", "F32", [n, d], x.values), (f"y_{name}", "F32", [n], [float(v) for v in labels])]
    write_safetensors(args.out, tensors)
    print(f"wrote {args.out}: D = {dim}, " + ", ".join(f"{t[0][2:]} {t[2][0]}" for t in tensors[::2]))


def convert_model_init(args):
    state = load_pt(args.file)
    if not isinstance(state, dict):
        fail(f"{args.file}: expected a state dict, found {type(state).__name__}")
    tensors = []
    for key, t in state.items():
        t = tensor_of(t, f"{args.file} {key}")
        bad = next((i for i, v in enumerate(t.values) if not math.isfinite(v)), None)
        if bad is not None:
            fail(f"{args.file}: {key} holds {t.values[bad]} at flat index {bad}")
        tensors.append((key, "F32", t.shape, t.values))
    write_safetensors(args.out, tensors, {"format": "pt", "learnlaw_format": "official"})
    print(f"wrote {args.out}: {len(tensors)} tensors, {sum(len(t[3]) for t in tensors)} parameters (for --theta0)")


def main():
    ap = argparse.ArgumentParser(description="Convert the official Learning Law data to learnlaw's files.")
    sub = ap.add_subparsers(dest="kind", required=True)
    t = sub.add_parser("tinystory", help="{train,dev,test}.pt token tensors → a learnlaw token file")
    t.add_argument("data_dir")
    t.add_argument("--out", required=True)
    t.add_argument("--vocab-size", type=int, help="default: the length of DATA_DIR/vocab.pt")
    t.add_argument("--train-num", type=int, help="keep the first rows of train (default: all)")
    t.add_argument("--dev-num", type=int)
    t.add_argument("--test-num", type=int)
    t.add_argument("--no-test", action="store_true", help="an empty test set: a file for `learnlaw search` alone")
    t.set_defaults(run=convert_tinystory)
    l = sub.add_parser("linear", help="{train,dev,test}.pt (x, y) tuples → learnlaw perceptron data")
    l.add_argument("data_dir")
    l.add_argument("--out", required=True)
    l.set_defaults(run=convert_linear)
    m = sub.add_parser("model-init", help="a cached θ_0 state dict (.pt) → safetensors for --theta0")
    m.add_argument("file")
    m.add_argument("--out", required=True)
    m.set_defaults(run=convert_model_init)
    args = ap.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
