#!/usr/bin/env bash
# Builds the browser bundle: the wasm (burn on WebGPU), the CPU wasm for browsers without WebGPU
# (burn-flex + SIMD128), their wasm-bindgen glue, the npm package in pkg/ and the page in www/
# (with the bundled tiny demo model).
#   ./build.sh            release build (profile wasm-release: size-tuned, LTO; CPU: wasm-cpu)
# Env: CARGO_TARGET_DIR (default ~/.cache/inkstone-target), PROFILE (default wasm-release),
#      CPU_PROFILE (default wasm-cpu), WASM_OPT_LEVEL (default -Oz), SKIP_WASM_OPT=1 to skip binaryen's wasm-opt,
#      SKIP_CPU=1 to skip the CPU build.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
PROFILE=${PROFILE:-wasm-release}
CPU_PROFILE=${CPU_PROFILE:-wasm-cpu}
FEATURES=${FEATURES:-webgpu}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/inkstone-target}
TARGET=wasm32-unknown-unknown

if ! rustup target list --installed | grep -qx "$TARGET"; then
  rustup target add "$TARGET"
fi

# The CLI must match the wasm-bindgen crate version exactly (the glue format is not stable).
WB_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
if ! command -v wasm-bindgen >/dev/null || [ "$(wasm-bindgen --version | awk '{print $2}')" != "$WB_VERSION" ]; then
  # Without --locked: a locked install fails on a yanked dependency (shared/README.md).
  cargo install wasm-bindgen-cli --version "$WB_VERSION"
fi

echo "== cargo build ($PROFILE, features $FEATURES)"
t0=$SECONDS
cargo build --profile "$PROFILE" --target "$TARGET" --lib --no-default-features --features "$FEATURES"
WASM="$CARGO_TARGET_DIR/$TARGET/$PROFILE/inkstone.wasm"
size() { stat -c %s "$1"; }
gz() { gzip -9c "$1" | wc -c; }
echo "WebGPU build: $((SECONDS - t0)) s; raw cargo wasm: $(size "$WASM") bytes"

OUT=$(mktemp -d)
wasm-bindgen --target web --out-dir "$OUT" --out-name inkstone_core --remove-name-section "$WASM"
BG="$OUT/inkstone_core_bg.wasm"
echo "after wasm-bindgen: $(size "$BG") bytes ($(gz "$BG") gzipped)"

# wasm-opt from npm's binaryen (Debian's binaryen 108 produces a wasm that breaks at runtime).
# -Oz: -O1 takes a quarter of the time and gives a smaller download, but the browser suite ran
# ~23% slower on it (the wasm's own per-dispatch work; docs/performance.md).
WASM_OPT_LEVEL=${WASM_OPT_LEVEL:--Oz}
WASM_OPT=""
if [ -z "${SKIP_WASM_OPT:-}" ]; then
  if [ -x "$ROOT/tools/binaryen/node_modules/.bin/wasm-opt" ]; then
    WASM_OPT="$ROOT/tools/binaryen/node_modules/.bin/wasm-opt"
  elif command -v npm >/dev/null && (cd tools/binaryen && npm ci --no-audit --no-fund >/dev/null 2>&1); then
    WASM_OPT="$ROOT/tools/binaryen/node_modules/.bin/wasm-opt"
  fi
fi
# It runs beside the CPU build below (minutes each; the build's LTO and codegen end on one
# core, and wasm-opt's function passes use the other): waited for before pkg/ is assembled.
OPT_PID=""
if [ -n "$WASM_OPT" ]; then
  OPT_LOG=$(mktemp)
  (
    t0=$SECONDS
    "$WASM_OPT" "$WASM_OPT_LEVEL" --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
      --enable-mutable-globals --enable-reference-types --enable-multivalue \
      "$BG" -o "$BG.opt"
    mv "$BG.opt" "$BG"
    echo "after wasm-opt $WASM_OPT_LEVEL ($((SECONDS - t0)) s): $(size "$BG") bytes ($(gz "$BG") gzipped)"
  ) >"$OPT_LOG" 2>&1 &
  OPT_PID=$!
else
  echo "wasm-opt (npm binaryen) not available: skipped"
fi

# The CPU build: the same shell on burn-flex, fetched by the worker only where WebGPU is missing
# (or `backend: 'cpu'`). SIMD128 for this build only (every browser with WebAssembly SIMD:
# Chrome 91, Firefox 89, Safari 16.4); its own profile dir, so the two builds never invalidate
# each other. Single-threaded: threads need atomics and a std built with -Z build-std
# (nightly + rust-src), see docs/performance.md.
if [ -z "${SKIP_CPU:-}" ]; then
  echo "== cargo build ($CPU_PROFILE, features cpu, +simd128)"
  t0=$SECONDS
  RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+simd128" \
    cargo build --profile "$CPU_PROFILE" --target "$TARGET" --lib --no-default-features --features cpu
  CPU_WASM="$CARGO_TARGET_DIR/$TARGET/$CPU_PROFILE/inkstone.wasm"
  echo "CPU build: $((SECONDS - t0)) s; raw cargo wasm: $(size "$CPU_WASM") bytes"
  wasm-bindgen --target web --out-dir "$OUT" --out-name inkstone_cpu --remove-name-section "$CPU_WASM"
  CPU_BG="$OUT/inkstone_cpu_bg.wasm"
  echo "CPU build after wasm-bindgen: $(size "$CPU_BG") bytes ($(gz "$CPU_BG") gzipped)"
fi

if [ -n "$OPT_PID" ]; then
  OPT_RC=0; wait "$OPT_PID" || OPT_RC=$?
  cat "$OPT_LOG"; rm -f "$OPT_LOG"
  if [ "$OPT_RC" != 0 ]; then echo "build.sh: wasm-opt failed (exit $OPT_RC)" >&2; exit "$OPT_RC"; fi
fi

# npm package: our JS + the generated glue and wasm.
cp "$OUT"/inkstone_core.js "$OUT"/inkstone_core.d.ts "$OUT"/inkstone_core_bg.wasm pkg/
if [ -z "${SKIP_CPU:-}" ]; then cp "$OUT"/inkstone_cpu.js "$OUT"/inkstone_cpu.d.ts "$OUT"/inkstone_cpu_bg.wasm pkg/; fi
rm -rf "$OUT"

# The page: app shell + the package + the bundled tiny model (works with no network).
rm -rf www/pkg www/models
mkdir -p www/pkg www/models
cp pkg/*.js pkg/*.d.ts pkg/*.wasm pkg/package.json www/pkg/
cp -r tests/fixtures/tiny-sd www/models/tiny-sd
cp -r tests/fixtures/tiny-flow www/models/tiny-flow
node www/make-shell-list.mjs
echo "== built pkg/ and www/ (serve www/ over http, e.g. node tests/browser/server.mjs www)"
