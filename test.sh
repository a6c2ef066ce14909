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

# Stage times, printed as each stage ends and once more at the end (CI shows the log's tail).
T0=$SECONDS; T=$SECONDS; STAGES=""
stage_done() { STAGES="$STAGES\n  $1: $((SECONDS - T)) s"; echo "== $1 took $((SECONDS - T)) s"; T=$SECONDS; }
# (An early exit still lets the background install below finish: an apt-get killed half-way
# leaves dpkg to repair.)
trap 'if [ -n "${PREP_PID:-}" ]; then wait "$PREP_PID" 2>/dev/null || true; fi
      printf "== stage times (so far)$STAGES\n  total: %s s\n" $((SECONDS - T0))' EXIT

# What the browser suite needs besides the build, fetched in the background while Rust builds
# (network and disk against the build's CPU; ~45 s off a cold run): chromium, and firefox-esr
# for tests/browser/cpu.test.mjs (the browsers the suite drives), and the suite's npm packages.
# Its output goes to a log shown when the browser stage waits for it.
PREP_LOG=$(mktemp)
(
  set -e
  MISSING=""
  command -v chromium >/dev/null || MISSING="$MISSING chromium"
  command -v firefox-esr >/dev/null || MISSING="$MISSING firefox-esr"
  if [ -n "$MISSING" ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $MISSING >/dev/null
  fi
  cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
) >"$PREP_LOG" 2>&1 &
PREP_PID=$!

echo "== native tests (cargo test, CPU backend)"
# Three test binaries: tests/suite.rs (every parity and error test file as a module),
# tests/fuzz_smoke.rs (the fuzz oracles of fuzz/ on 53k seeded mutations, seconds) and
# tests/limits.rs. `--timings`: the build's per-crate times land in
# $CARGO_TARGET_DIR/cargo-timings/ (what a cold run spends where).
cargo test --locked --timings --lib --bins --tests -- --nocapture 2>&1
stage_done "native tests (build + run)"
# Opt-in libFuzzer run of every target (fuzz/run.sh; builds its own instrumented target dir).
if [ -n "${INKSTONE_FUZZ_RUNS:-}" ]; then
  echo "== fuzzing (cargo-fuzz, $INKSTONE_FUZZ_RUNS runs per target)"
  RUNS=$INKSTONE_FUZZ_RUNS fuzz/run.sh
fi
# The browser tests compare against this CLI build (the one `cargo test --bins` just made) and
# make real-size random-weight models with tools/random_model.rs.
cargo build --locked --bin inkstone --example random-model
export INKSTONE_BIN="$CARGO_TARGET_DIR/debug/inkstone"
export INKSTONE_RANDOM_MODEL="$CARGO_TARGET_DIR/debug/examples/random-model"
stage_done "CLI + random-model build"

echo "== browser bundle (build.sh: wasm on WebGPU, the CPU wasm, pkg/, www/)"
./build.sh
stage_done "browser bundle (build.sh)"

echo "== browser tests (Debian chromium: WebGPU through SwiftShader, playwright-core; Debian firefox-esr:"
echo "   no WebGPU on Linux, the CPU build, puppeteer-core over WebDriver BiDi)"
# The browsers and npm packages started at the top (apt-get, npm ci): wait for them.
PREP_RC=0; wait "$PREP_PID" || PREP_RC=$?
PREP_PID=""
cat "$PREP_LOG"; rm -f "$PREP_LOG"
if [ "$PREP_RC" != 0 ]; then
  echo "test.sh: installing the browsers or the browser suite's npm packages failed (exit $PREP_RC)" >&2
  exit "$PREP_RC"
fi
stage_done "browsers + npm ci (waiting for the background install)"
(cd tests/browser && npm test 2>&1)
stage_done "browser tests"
