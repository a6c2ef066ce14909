#!/usr/bin/env bash
# Runs every cargo-fuzz target for RUNS executions (default 1,000,000) from seed corpora made of
# the committed fixtures, and prints libFuzzer's final stats. Figures: docs/reliability.md.
# Usage: fuzz/run.sh [target...]     (RUNS=N, LONG_RUNS=N for tokenizer_long, the long-prompt
#        pass; CORPUS=dir to keep the grown corpora elsewhere)
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${RUNS:-1000000}
CORPUS=${CORPUS:-$HOME/.cache/inkstone-fuzz-corpus}
# Its own target dir: the instrumented build must not evict the main one.
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$HOME/.cache/inkstone-fuzz-target}
# cargo-fuzz passes -Z flags; the stable toolchain accepts them with this (no nightly needed).
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
fixtures=../tests/fixtures

seed() {  # seed <target>: fill $CORPUS/<target> from the fixtures (once)
  local dir=$CORPUS/$1 f c i p t
  [ -d "$dir" ] && return
  mkdir -p "$dir"
  case $1 in
    safetensors_header) find $fixtures -name '*.safetensors' -size -64k -exec cp {} "$dir/" \; ;;
    tensor_stream)  # 8 bytes of chunking seed, then the file
      for f in $(find $fixtures -name '*.safetensors' -size -64k); do
        { printf '\x01\x23\x45\x67\x89\xab\xcd\xef'; cat "$f"; } >"$dir/$(basename "$f")"
      done ;;
    configs)
      i=0; for f in $(find $fixtures -name '*config*.json' -size -32k) $(find $fixtures -name 'model_index.json'); do
        cp "$f" "$dir/$((i++)).json"; done
      for c in LCMScheduler DDIMScheduler EulerDiscreteScheduler FlowMatchEulerDiscreteScheduler; do
        printf '{"_class_name": "%s"}' $c >"$dir/$c.json"; done ;;
    tokenizer)  # first byte: which tokenizer (CLIP files, BERT files, CLIP json, BERT json)
      i=0; for p in 'a photo of a cat' '床前明月光，疑是地上霜' '你好，世界！（测试）「引号」🐱🎨 emoji：ok？' \
                   '  A   PHOTO	of a Café  naïve CAT' 'hi!! wow! <|endoftext|> <|ENDOFTEXT|> [SEP] [cls]'; do
        for t in 0 1 2 3; do printf "\\x0$t%s" "$p" >"$dir/$((i++))"; done; done ;;
    tokenizer_long)  # the tokenizer target on 256 KiB - 1 MiB prompts: words, CJK, binary junk
      for t in 0 1 2 3; do
        { printf "\\x0$t"; yes 'a photo of a cat,' | head -c 1048576 || true; } >"$dir/words$t"
        { printf "\\x0$t"; yes '床前明月光，疑是地上霜' | head -c 524288 || true; } >"$dir/cjk$t"
        { printf "\\x0$t"; head -c 262144 $fixtures/tiny-sd/unet/diffusion_pytorch_model.safetensors; } >"$dir/binary$t"
      done ;;
  esac
}

# Per run: the binary, and libFuzzer options beyond the common ones. libFuzzer grows inputs
# gradually up to -max_len; the long-prompt pass starts from long seeds at full length.
binary() { case $1 in tokenizer_long) echo tokenizer ;; *) echo "$1" ;; esac; }
options() {
  case $1 in
    configs) echo -max_len=16384 ;;
    # ~8 us per prompt byte instrumented: a 1 MiB prompt takes ~8 s, more on a loaded machine.
    tokenizer_long) echo -max_len=1100000 -len_control=0 -timeout=60 ;;
    *) echo -max_len=65536 ;;
  esac
}

cargo fuzz build -s none
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors_header tensor_stream configs tokenizer tokenizer_long)
for t in "${targets[@]}"; do
  seed "$t"
  runs=$RUNS
  [ "$t" != tokenizer_long ] || runs=${LONG_RUNS:-300}
  echo "== $t: $runs runs"
  start=$(date +%s)
  set +e
  # shellcheck disable=SC2046
  cargo fuzz run -s none "$(binary "$t")" "$CORPUS/$t" -- -runs="$runs" -dict=json.dict -timeout=10 \
    -rss_limit_mb=4096 -print_final_stats=1 $(options "$t") >"$CORPUS/$t.log" 2>&1
  rc=$?
  set -e
  grep -E '^#[0-9]+.*(INITED|DONE)|^stat::|^Done|ERROR|SUMMARY|panicked|Test unit written' "$CORPUS/$t.log"
  echo "== $t: exit $rc, $(( $(date +%s) - start )) s"
  [ $rc = 0 ] || exit $rc
done
