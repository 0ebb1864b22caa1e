#!/usr/bin/env bash
# Builds, on the development machine, the release binaries that scripts/gpu-check.sh runs on the GPU
# machine (which has no Rust toolchain and no network), strips their debug info and stages them in
# target/gpu-check (ignored by git; name it in the device tool's `carry`). Prints their sizes (the
# device tool carries at most 64 MiB) and the newest glibc symbol version each needs
# (objdump -T | grep GLIBC_: the GPU machine's glibc must be at least that), also written to
# target/gpu-check/glibc-needs.txt.
#
#   scripts/build-gpu-check.sh            # then, on the GPU machine: scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=target/gpu-check
# The staged binaries: "cargo target name:kind=staged name". Another check's binaries (the
# Transformer's) are added here and built by a cargo command below.
TARGETS=(
  conformance:test=conformance
  learnlaw_cuda:lib=cuda_unit
  nvrtc_compile:test=nvrtc_compile
  device:test=cuda_device
  cuda:bench=bench_cuda
  learnlaw:bin=learnlaw
  weighted_training:example=weighted_training
  layer_kernels:test=layer_kernels
  transformer_engines:test=transformer_engines
  cuda_transformer:bench=bench_cuda_transformer
)
rm -rf "$STAGE"
mkdir -p "$STAGE"
json="$(mktemp)"
trap 'rm -f "$json"' EXIT
fmt=(--message-format=json-render-diagnostics --locked)
cargo test --release --no-run "${fmt[@]}" -p learnlaw --test conformance --test layer_kernels --test transformer_engines >>"$json"
cargo test --release --no-run "${fmt[@]}" -p learnlaw-cuda >>"$json"
cargo bench --no-run "${fmt[@]}" -p learnlaw --bench cuda --bench cuda_transformer >>"$json"
cargo build --release "${fmt[@]}" -p learnlaw-cli >>"$json"
cargo build --release "${fmt[@]}" -p learnlaw --example weighted_training >>"$json"
python3 - "$json" "$STAGE" "${TARGETS[@]}" <<'PY'
import json, os, re, shutil, subprocess, sys
# (target name, target kind) -> staged name
want = {}
for t in sys.argv[3:]:
    target, staged = t.split("=")
    name, kind = target.split(":")
    want[(name, kind)] = staged
found = {}
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    key = (m["target"]["name"], m["target"]["kind"][0])
    if key in want:
        found[want[key]] = m["executable"]
missing = set(want.values()) - set(found)
if missing:
    sys.exit(f"build-gpu-check: no executable for {sorted(missing)}")
needs = []
for name, exe in sorted(found.items()):
    dst = os.path.join(sys.argv[2], name)
    shutil.copy2(exe, dst)
    subprocess.run(["strip", "--strip-debug", dst], check=True)
    syms = subprocess.run(["objdump", "-T", dst], capture_output=True, text=True).stdout
    versions = sorted(set(re.findall(r"GLIBC_(\d+(?:\.\d+)+)", syms)), key=lambda v: tuple(map(int, v.split("."))))
    need = f"GLIBC_{versions[-1]}" if versions else "?"
    needs.append(f"{name} {need}")
    print(f"{dst:40s} {os.path.getsize(dst) / 2**20:6.1f} MiB  needs {need:12s} (from {exe})")
with open(os.path.join(sys.argv[2], "glibc-needs.txt"), "w") as f:
    f.write("\n".join(needs) + "\n")
PY
du -sh "$STAGE"
if [ "$(du -sm "$STAGE" | cut -f1)" -gt 60 ]; then
  echo "warning: $STAGE is over 60 MiB; the device tool carries 64 MiB with the working tree" >&2
fi
