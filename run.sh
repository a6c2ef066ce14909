#!/usr/bin/env bash
# Builds Inkstone and generates an image with the bundled tiny model (no network, no GPU needed).
# Usage: ./run.sh [extra `inkstone generate` flags]
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/inkstone-target}
if ! command -v cargo >/dev/null; then
  echo "run.sh: cargo not found; install Rust from https://rustup.rs" >&2
  exit 1
fi
# The dev profile is optimised (see Cargo.toml) and shared with the tests: one build serves both.
cargo build --locked --bin inkstone
inkstone="$CARGO_TARGET_DIR/debug/inkstone"
"$inkstone" info --model tests/fixtures/tiny-sd
"$inkstone" generate --model tests/fixtures/tiny-sd --prompt "a photo of a cat" --seed 42 --out inkstone-demo.png "$@"
echo "run.sh: wrote inkstone-demo.png (a random-weight tiny model: expect abstract colour, not a cat)"
