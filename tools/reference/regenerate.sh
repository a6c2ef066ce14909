#!/usr/bin/env bash
# Regenerates tests/fixtures/ from the reference stack (diffusers/transformers on PyTorch CPU).
# Usage: tools/reference/regenerate.sh        (creates/uses $INKSTONE_REF_VENV, default ~/.cache/inkstone-ref-venv)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${INKSTONE_REF_VENV:-$HOME/.cache/inkstone-ref-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r "$here/requirements.txt"
fi
# Tokenizer vocabularies ship inside these wheels (no model hub needed).
wheels=${INKSTONE_REF_WHEELS:-$HOME/.cache/inkstone-ref-wheels}
if [ ! -f "$wheels/open_clip/bpe_simple_vocab_16e6.txt.gz" ] || [ ! -f "$wheels/cn_clip/clip/vocab.txt" ]; then
  mkdir -p "$wheels"
  "$venv/bin/pip" download -q --no-deps -d "$wheels" open_clip_torch==3.3.0 cn_clip==1.6.0
  (cd "$wheels" && unzip -o -q 'open_clip_torch-*.whl' 'open_clip/bpe_simple_vocab_16e6.txt.gz' \
                 && unzip -o -q 'cn_clip-*.whl' 'cn_clip/clip/vocab.txt')
fi
export INKSTONE_REF_WHEELS="$wheels" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=
exec "$venv/bin/python" "$here/make_fixtures.py" "$@"
