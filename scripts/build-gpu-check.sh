#!/usr/bin/env bash
# Builds, on the development machine, the release binaries that scripts/gpu-check.sh runs on the GPU
# machine (which has no Rust toolchain and no network), strips their debug info and stages them in
# target/gpu-check (ignored by git; name it in the device tool's `carry`). Prints their sizes: the
# device tool carries at most 64 MiB.
#
#   scripts/build-gpu-check.sh            # then, on the GPU machine: scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=target/gpu-check
rm -rf "$STAGE"
mkdir -p "$STAGE"
json="$(mktemp)"
trap 'rm -f "$json"' EXIT
fmt=(--message-format=json-render-diagnostics --locked)
cargo test --release --no-run "${fmt[@]}" -p learnlaw --test conformance >>"$json"
cargo test --release --no-run "${fmt[@]}" -p learnlaw-cuda >>"$json"
cargo bench --no-run "${fmt[@]}" -p learnlaw --bench cuda >>"$json"
cargo build --release "${fmt[@]}" -p learnlaw-cli >>"$json"
cargo build --release "${fmt[@]}" -p learnlaw --example weighted_training >>"$json"
python3 - "$json" "$STAGE" <<'PY'
import json, os, shutil, subprocess, sys
# (target name, target kind) -> staged name
want = {("conformance", "test"): "conformance", ("learnlaw_cuda", "lib"): "cuda_unit",
        ("nvrtc_compile", "test"): "nvrtc_compile", ("device", "test"): "cuda_device", ("cuda", "bench"): "bench_cuda",
        ("learnlaw", "bin"): "learnlaw", ("weighted_training", "example"): "weighted_training"}
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
for name, exe in sorted(found.items()):
    dst = os.path.join(sys.argv[2], name)
    shutil.copy2(exe, dst)
    subprocess.run(["strip", "--strip-debug", dst], check=True)
    print(f"{dst:40s} {os.path.getsize(dst) / 2**20:6.1f} MiB  (from {exe})")
PY
du -sh "$STAGE"
