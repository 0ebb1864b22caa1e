#!/usr/bin/env bash
# The tests: the Rust workspace, then the Python package (crates/learnlaw-python) built with
# maturin, installed into a fresh venv (as the README's install command does) and run by pytest.
# The torch.func comparison runs where torch and safetensors are importable in that venv
# (LEARNLAW_TEST_TORCH=1 installs them: several GB); otherwise it prints SKIPPED.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
VENV="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$VENV")"' EXIT
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check ./crates/learnlaw-python pytest
if [ "${LEARNLAW_TEST_TORCH:-0}" = 1 ]; then "$VENV/bin/pip" install --quiet torch safetensors; fi
"$VENV/bin/python" -m pytest -rs crates/learnlaw-python/tests
