#!/usr/bin/env bash
# GPU work per U-Net step counted natively (wgpu; lavapipe on a machine without a GPU), the way
# tests/browser/gpu.test.mjs counts it in the browser: the CLI generates a 1-step and a 2-step
# image, cubecl's profiling logger (level "minimal": one line per kernel launch, no timing, no
# extra sync) records every dispatch, and the difference is one step. Prints the per-step
# total and its per-kernel histogram, plus the whole 1-step generation.
#   scripts/count-dispatches.sh MODEL_DIR [SIDE] [extra CLI args...]
# Needs `cargo build --features wgpu --bin inkstone` (INKSTONE_BIN overrides the binary).
set -euo pipefail
MODEL=$(realpath "$1"); SIDE=${2:-64}; shift $(( $# >= 2 ? 2 : 1 ))
BIN=${INKSTONE_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/inkstone-target}/debug/inkstone}
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
count() { # steps [extra CLI args] -> $WORK/<steps>.hist
  local steps=$1; shift
  mkdir -p "$WORK/$steps"
  # cubecl reads cubecl.toml from the working directory.
  printf '[profiling.logger]\nlevel = "minimal"\nfile = "%s"\nappend = false\n' "$WORK/$steps.log" > "$WORK/$steps/cubecl.toml"
  (cd "$WORK/$steps" && INKSTONE_DEVICE=wgpu XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp} "$BIN" generate --model "$MODEL" \
    --prompt "a lighthouse" --steps "$steps" --seed 1 --width "$SIDE" --height "$SIDE" --out "$WORK/$steps.png" "$@" >"$WORK/$steps.out" 2>&1) \
    || { cat "$WORK/$steps.out" >&2; exit 1; }
  grep '^Executing ' "$WORK/$steps.log" | sed -e 's/^Executing //' -e 's/[<(_ ].*//' | sort | uniq -c | sort -rn > "$WORK/$steps.hist"
}
count 1 "$@"; count 2 "$@"
total() { awk '{ s += $1 } END { print s + 0 }' "$1"; }
echo "1-step generation: $(total "$WORK/1.hist") dispatches"
echo "per U-Net step:    $(( $(total "$WORK/2.hist") - $(total "$WORK/1.hist") )) dispatches"
join -1 2 -2 2 -a 1 -e 0 -o 0,1.1,2.1 <(sort -k2 "$WORK/2.hist") <(sort -k2 "$WORK/1.hist") \
  | awk '$2 - $3 > 0 { printf "  %5d  %s\n", $2 - $3, $1 }' | sort -rn
