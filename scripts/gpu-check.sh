#!/usr/bin/env bash
# The one-shot CUDA check on the GPU machine (an H200: driver 580 / CUDA 13.0, nvcc and PyTorch
# installed, no network, no Rust). Runs binaries built on the development machine:
#
#   here:  scripts/build-gpu-check.sh          # stages release binaries in target/gpu-check
#   there: scripts/gpu-check.sh                # device tool: carry ["target/gpu-check"], ~4–6 min
#
# Steps (each one's log is kept; a failing step does not stop the others; exit status 1 if any failed):
#   0. `learnlaw backends`: every backend's device, or why it is unavailable;
#   1. the NVRTC + ptxas compile check with the machine's own NVRTC and ptxas, and the crate's unit tests;
#   2. the conformance tests of the CUDA engine (X in f32, bf16, f16; register and shared-memory
#      variants) and the crate's device tests (large D, reproducibility, CUDA-graph replays bit-equal
#      to direct launches, projection edge cases), with LEARNLAW_REQUIRE_CUDA=1;
#   2b. examples/weighted_training.rs on cuda and cuda-bf16 (a user's own step loop);
#   3. the CUDA benchmarks (benches/cuda.rs: steps with X in f32 and bf16 and the projection at the
#      paper's size and at D = 4096, the device-to-device copy ceiling measured in the same run, an
#      outer epoch with CUDA graphs and with step-by-step launches);
#   4. `learnlaw reproduce perceptron` for $EPOCHS outer epochs (default 5) with --backend cuda,
#      cuda-bf16 and cpu on the same data: seconds per epoch, speed-up, J trajectories' largest
#      relative difference to cpu (the target, 1e-4, is for f32 X), AR;
#   5. if time allows, compute-sanitizer memcheck on the conformance tests (where the runtime allows it).
# A short table is printed last. Logs go to $OUT (the device tool's result folder) or /tmp/gpu-check.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
BIN="$ROOT/target/gpu-check"
LOG="${OUT:-/tmp/gpu-check}"
EPOCHS="${EPOCHS:-5}"
mkdir -p "$LOG"
START=$(date +%s)
for b in conformance cuda_unit cuda_device nvrtc_compile bench_cuda learnlaw weighted_training; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: run scripts/build-gpu-check.sh on the development machine and carry target/gpu-check"; exit 2; }
done

# --- libraries: libcuda (the driver's folder), libnvrtc.so.13 (toolkit or a PyPI wheel), ptxas ---
# The toolkit's folders first, then any PyPI wheel (PyTorch's nvidia-cuda-nvrtc, nvidia-cuda-nvcc).
libdirs=(/usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
bindirs=(/usr/local/cuda/bin)
while IFS= read -r d; do
  case "$d" in L:*) libdirs+=("${d#L:}") ;; B:*) bindirs+=("${d#B:}") ;; esac
done < <(python3 - 2>/dev/null <<'PY'
import glob, os, site, sys
roots = set(site.getsitepackages() + [site.getusersitepackages()] + [p for p in sys.path if p.endswith("-packages")])
for r in sorted(roots):
    for d in glob.glob(os.path.join(r, "nvidia", "*")):
        if glob.glob(os.path.join(d, "lib", "libnvrtc.so*")):
            print("L:" + os.path.join(d, "lib"))
        if os.path.isfile(os.path.join(d, "bin", "ptxas")):
            print("B:" + os.path.join(d, "bin"))
PY
)
for ((i = ${#libdirs[@]} - 1; i >= 0; i--)); do
  d="${libdirs[$i]}"; [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
for d in "${bindirs[@]}"; do [ -d "$d" ] && PATH="$PATH:$d"; done
export LD_LIBRARY_PATH PATH
export LEARNLAW_REQUIRE_CUDA=1 LEARNLAW_REQUIRE_NVRTC=1 LEARNLAW_KERNEL_DIR="$ROOT/kernels/cuda"

GPU="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
NVRTC="$(ls "${libdirs[@]}" 2>/dev/null | grep -m1 -o 'libnvrtc.so.[0-9.]*')"
echo "== learnlaw gpu-check $(date -u +%Y-%m-%dT%H:%MZ) on ${GPU:-no nvidia-smi}; ${NVRTC:-no libnvrtc found}; ptxas: $(command -v ptxas || echo none)"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

declare -a ROWS
row() { ROWS+=("$(printf '%-34s %s' "$1" "$2")"); }
# step NAME TIMEOUT CMD...: runs CMD with a timeout, its output to $LOG/NAME.log and the terminal.
step() {
  local name="$1" limit="$2"; shift 2
  local t0=$(date +%s)
  echo; echo "== $name: $*"
  timeout "$limit" "$@" 2>&1 | tee "$LOG/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $(( $(date +%s) - t0 )) s"
  return "$rc"
}
FAILED=0
result() { # NAME RC LOGNAME
  local summary
  summary="$(grep -E '^test result:' "$LOG/$3.log" | tail -1 | sed 's/test result: [a-zA-Z]*\. //; s/; 0 ignored.*//')"
  if [ "$2" -eq 0 ]; then row "$1" "ok ${summary}"; else row "$1" "FAILED (exit $2) ${summary}"; FAILED=1; fi
}

# 0. what the binary sees on this machine (device, NVRTC version; why a backend is unavailable)
step backends 60 "$BIN/learnlaw" backends
row "backends: cuda" "$(grep -E '^cuda ' "$LOG/backends.log" | head -1 | cut -c12-)"

# 1. compile check with this machine's NVRTC and ptxas, and the unit tests
step nvrtc_compile 120 "$BIN/nvrtc_compile" --nocapture --test-threads=1; result "nvrtc + ptxas sm_90" $? nvrtc_compile
step cuda_unit 120 "$BIN/cuda_unit" --test-threads=1; result "unit tests" $? cuda_unit

# 2. conformance of every engine operation against the f64 reference, both kernel variants; then
#    the large-D paths, reproducibility and projection edge cases (crates/learnlaw-cuda/tests/device.rs)
step conformance 300 "$BIN/conformance" cuda --test-threads=2; result "conformance (cuda f32/bf16/f16)" $? conformance
step cuda_device 200 "$BIN/cuda_device" --test-threads=2; result "device tests (large D, graphs)" $? cuda_device

# 2b. the embedding example (examples/weighted_training.rs): a user's step loop and ∂J/∂γ on cuda
for be in cuda cuda-bf16; do
  step "example_$be" 60 "$BIN/weighted_training" "$be"
  rc=$?; if [ $rc -eq 0 ]; then row "example, $be" "$(grep -m1 'L_dev' "$LOG/example_$be.log")"; else row "example, $be" "FAILED (exit $rc)"; FAILED=1; fi
done

# 3. benchmarks (the table is printed by the bench itself, and repeated below)
step bench 330 "$BIN/bench_cuda" --bench
rc=$?; if [ $rc -eq 0 ]; then row "benchmarks" "ok (table below)"; else row "benchmarks" "FAILED (exit $rc)"; FAILED=1; fi

# 4. the perceptron search, cuda against cpu, on the same data
RUNS="$(mktemp -d)"
"$BIN/learnlaw" data perceptron --out "$RUNS/data.safetensors" >/dev/null
for be in cuda cuda-bf16 cpu; do
  step "reproduce_$be" 300 "$BIN/learnlaw" reproduce perceptron --data "$RUNS/data.safetensors" --out "$RUNS/$be" --epochs "$EPOCHS" --backend "$be"
  rc=$?; [ $rc -eq 0 ] || { row "reproduce --backend $be" "FAILED (exit $rc)"; FAILED=1; }
done
for be in cuda cuda-bf16; do
  CMP="$(python3 - "$be" "$RUNS/$be/summary.json" "$RUNS/cpu/summary.json" <<'PY'
import json, sys
be = sys.argv[1]
try:
    g, c = (json.load(open(p)) for p in sys.argv[2:4])
except Exception as e:
    print(f"no comparison: {e}"); sys.exit(0)
jg, jc = g["j"], c["j"]
n = min(len(jg), len(jc))
rel = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(jg[:n], jc[:n])) if n else float("nan")
sg, sc = g["seconds_per_epoch"], c["seconds_per_epoch"]
ar = lambda s: "-" if s.get("ar") is None else f"{s['ar']:.3f}"
verdict = "" if be != "cuda" else (" (ok)" if rel <= 1e-4 else " (ABOVE 1e-4)")
print(f"s/epoch {sg:.4f} vs cpu {sc:.4f}: {sc / sg:.1f}x | J over {n} values: max rel diff {rel:.2e}{verdict} "
      f"| AR {ar(g)}, cpu {ar(c)}")
PY
)"
  row "reproduce $be, $EPOCHS epochs" "$CMP"
done

# 5. memory checker on the conformance tests, if the runtime supports it and time is left
ELAPSED=$(( $(date +%s) - START ))
if command -v compute-sanitizer >/dev/null && [ "$ELAPSED" -lt 300 ]; then
  step memcheck 120 compute-sanitizer --tool memcheck --error-exitcode 3 "$BIN/conformance" cuda_f32:: --test-threads=1
  rc=$?
  if grep -q -E "Device not supported|error 999|Failed to initialize" "$LOG/memcheck.log"; then row "compute-sanitizer memcheck" "not supported here"
  elif [ $rc -eq 0 ]; then row "compute-sanitizer memcheck" "ok (cuda_f32)"
  elif [ $rc -eq 124 ]; then row "compute-sanitizer memcheck" "timed out (not counted)"
  else row "compute-sanitizer memcheck" "FAILED (exit $rc)"; FAILED=1; fi
else
  row "compute-sanitizer memcheck" "skipped (${ELAPSED} s elapsed or not installed)"
fi

echo
echo "== learnlaw gpu-check summary ($(date -u +%Y-%m-%d), ${GPU:-?}, $(( $(date +%s) - START )) s)"
printf '%s\n' "${ROWS[@]}"
if [ -f "$LOG/bench.log" ]; then
  echo
  sed -n '/^benchmark .*GB\/s/,$p' "$LOG/bench.log"
fi
exit "$FAILED"
