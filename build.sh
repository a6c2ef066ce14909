#!/usr/bin/env bash
# Builds the browser bundle: the wasm (burn on WebGPU), its wasm-bindgen glue, the npm package
# in pkg/ and the page in www/ (with the bundled tiny demo model).
#   ./build.sh            release build (profile wasm-release: size-tuned, LTO)
# Env: CARGO_TARGET_DIR (default ~/.cache/inkstone-target), PROFILE (default wasm-release),
#      SKIP_WASM_OPT=1 to skip binaryen's wasm-opt.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
PROFILE=${PROFILE:-wasm-release}
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
cargo build --profile "$PROFILE" --target "$TARGET" --lib --no-default-features --features "$FEATURES"
WASM="$CARGO_TARGET_DIR/$TARGET/$PROFILE/inkstone.wasm"
size() { stat -c %s "$1"; }
gz() { gzip -9c "$1" | wc -c; }
echo "raw cargo wasm: $(size "$WASM") bytes"

OUT=$(mktemp -d)
wasm-bindgen --target web --out-dir "$OUT" --out-name inkstone_core --remove-name-section "$WASM"
BG="$OUT/inkstone_core_bg.wasm"
echo "after wasm-bindgen: $(size "$BG") bytes ($(gz "$BG") gzipped)"

# wasm-opt from npm's binaryen (Debian's binaryen 108 produces a wasm that breaks at runtime).
WASM_OPT=""
if [ -z "${SKIP_WASM_OPT:-}" ]; then
  if [ -x "$ROOT/tools/binaryen/node_modules/.bin/wasm-opt" ]; then
    WASM_OPT="$ROOT/tools/binaryen/node_modules/.bin/wasm-opt"
  elif command -v npm >/dev/null && (cd tools/binaryen && npm ci --no-audit --no-fund >/dev/null 2>&1); then
    WASM_OPT="$ROOT/tools/binaryen/node_modules/.bin/wasm-opt"
  fi
fi
if [ -n "$WASM_OPT" ]; then
  "$WASM_OPT" -Oz --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
    --enable-mutable-globals --enable-reference-types --enable-multivalue \
    "$BG" -o "$BG.opt" && mv "$BG.opt" "$BG"
  echo "after wasm-opt -Oz: $(size "$BG") bytes ($(gz "$BG") gzipped)"
else
  echo "wasm-opt (npm binaryen) not available: skipped"
fi

# npm package: our JS + the generated glue and wasm.
cp "$OUT"/inkstone_core.js "$OUT"/inkstone_core.d.ts "$OUT"/inkstone_core_bg.wasm pkg/
rm -rf "$OUT"

# The page: app shell + the package + the bundled tiny model (works with no network).
rm -rf www/pkg www/models
mkdir -p www/pkg www/models
cp pkg/*.js pkg/*.d.ts pkg/inkstone_core_bg.wasm pkg/package.json www/pkg/
cp -r tests/fixtures/tiny-sd www/models/tiny-sd
cp -r tests/fixtures/tiny-flow www/models/tiny-flow
node www/make-shell-list.mjs
echo "== built pkg/ and www/ (serve www/ over http, e.g. node tests/browser/server.mjs www)"
