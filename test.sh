#!/usr/bin/env bash
# Runs every test: the native Rust suite (parity with diffusers/transformers on the committed
# fixtures, error handling) and, once built, the browser suite. Installs what it needs.
# Usage: ./test.sh
set -euo pipefail
cd "$(dirname "$0")"

# One persistent target dir: a cold burn build takes 20-30 min on 2 cores, incremental seconds.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/inkstone-target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

if ! command -v cargo >/dev/null; then
  echo "test.sh: cargo not found; install Rust from https://rustup.rs" >&2
  exit 1
fi

echo "== native tests (cargo test, CPU backend)"
cargo test --locked --lib --bins --tests -- --nocapture 2>&1
