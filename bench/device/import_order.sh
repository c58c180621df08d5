#!/usr/bin/env bash
# Issue 16.6 on one GPU: does `python -m trainer train` still get Unsloth's "import unsloth first" warning, and
# does the import order change speed? Run from the new checkout, with the old one (49edc04's trainer/cli.py) in
# OLD; both train the news recipe on a random-init R1-Distill-Qwen-1.5B-shape folder at the same time (same GPU,
# same cold caches, so neither gets the other's compiled kernels), 4-bit LoRA, 24 steps.
#   OLD=../structure-old TOK=../structure-tok/tokenizers.tgz bash bench/device/import_order.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
OLD=$(cd "${OLD:?checkout with the old cli.py}" && pwd)
NEW=$PWD
python3 - "$TOK" <<'EOF' > "$OUT/build.log" 2>&1
import sys
from pathlib import Path
from bench.shapes import build_shape, get_shape, tokenizer_path
tok = tokenizer_path("qwen", sys.argv[1], Path("/tmp/bench"))
print("built in", round(build_shape(get_shape("qwen-1.5b"), Path("/tmp/s15"), tok), 1), "s")
EOF
tail -1 "$OUT/build.log"
ARGS=(news model.base=/tmp/s15 train.max_steps=24 train.eval_steps=null data.val_size=0 train.logging_steps=4
      train.checkpoint_steps=null)
(cd "$NEW" && PYTHONPATH=${SITE:-/tmp/site}:$NEW timeout 110 python3 -m trainer train "${ARGS[@]}" train.output_dir=/tmp/runs-new > "$OUT/new.log" 2>&1) &
(cd "$OLD" && PYTHONPATH=${SITE:-/tmp/site}:$OLD timeout 110 python3 -m trainer train "${ARGS[@]}" train.output_dir=/tmp/runs-old > "$OUT/old.log" 2>&1) &
wait
for side in new old; do
  run=$(ls -d /tmp/runs-$side/news-* 2>/dev/null | head -1)
  [ -n "$run" ] && cp "$run/train.log" "$OUT/$side-train.log" && cp "$run/metrics.json" "$OUT/$side-metrics.json"
  echo "$side: warnings $(grep -c 'should be imported before' "$OUT/$side.log")," \
       "$(grep -o '"trained_tokens_per_s": [0-9.]*' "$OUT/$side-metrics.json" 2>/dev/null)"
done
grep -h "should be imported before" "$OUT"/*.log | head -2
