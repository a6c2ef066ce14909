#!/usr/bin/env bash
# The U-Net benchmark (benches/unet.rs) in the same build as test.sh and run.sh: the dev profile
# (dependencies at opt-level 3) and the shared CARGO_TARGET_DIR, so it compiles nothing the tests
# have not (plain `cargo bench` would rebuild everything in release into ./target).
#   scripts/bench.sh [fixture|full]                    CPU backend (burn-flex)
#   FEATURES=wgpu scripts/bench.sh [fixture|full]      GPU through wgpu (lavapipe without a GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/inkstone-target}
exec cargo bench --locked --profile dev --bench unet ${FEATURES:+--features "$FEATURES"} -- "$@"
