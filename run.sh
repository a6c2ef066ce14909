#!/usr/bin/env bash
# Builds Inkstone (the browser bundle and the native CLI), makes one image with the bundled tiny
# model on the CPU, then serves the page at http://127.0.0.1:8080 (Ctrl-C stops it).
# Usage: ./run.sh            PORT=9000 ./run.sh            NO_SERVE=1 ./run.sh
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/inkstone-target}
if ! command -v cargo >/dev/null; then
  echo "run.sh: cargo not found; install Rust from https://rustup.rs" >&2
  exit 1
fi

# The page: wasm on WebGPU + npm package + bundled demo models (installs its own tools).
./build.sh

# The native CLI (the dev profile is optimised and shared with the tests: one build serves both).
cargo build --locked --bin inkstone
inkstone="$CARGO_TARGET_DIR/debug/inkstone"
"$inkstone" info --model tests/fixtures/tiny-sd
"$inkstone" generate --model tests/fixtures/tiny-sd --prompt "a photo of a cat" --seed 42 --out inkstone-demo.png
echo "run.sh: wrote inkstone-demo.png (random-weight tiny model: expect abstract colour, not a cat)"

[ -n "${NO_SERVE:-}" ] && exit 0
echo "run.sh: open http://127.0.0.1:${PORT:-8080}/ in a browser with WebGPU (Chrome/Edge 113+, Safari 18+)"
exec node tests/browser/server.mjs www "${PORT:-8080}"
