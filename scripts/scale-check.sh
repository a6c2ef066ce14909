#!/usr/bin/env bash
# Real-size scale check (not part of CI): see scripts/scale-check.mjs. Results: docs/performance.md.
# Usage: scripts/scale-check.sh [sdxs|worst-case|bk-sdm-tiny ...]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/inkstone-target}
cargo build --locked --bin inkstone --example random-model
[ -f www/pkg/inkstone_core_bg.wasm ] || ./build.sh
(cd tests/browser && [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error)
exec node scripts/scale-check.mjs "$@"
