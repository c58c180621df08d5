#!/usr/bin/env bash
# The user's commands on one GPU, as a card owner runs them: `make train`'s planner under a simulated 8 GB card
# (the plan printed before loading, planned and measured peak in metrics.json), then `make grpo` on that run,
# then the GPU tests. Random-init R1-Distill-Qwen-1.5B-shape weights (no hub), the real tokenizer from TOK.
#   TOK=.benchtok/tokenizers.tgz bash bench/device/integrated.sh
# The device cannot download the llama-cpp-python sdist the tiny test model's tokenizer is built from: carry its two
# vocabularies as .devcache/llama-cpp-python-0.3.36/llama.cpp/models/ggml-vocab-{qwen2,llama-bpe}.gguf.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SITE=${SITE:-/tmp/site}
export R1TUNE_CACHE=$PWD/.devcache
python3 - "${TOK:?tokenizers.tgz}" <<'EOF' > "$OUT/build.log" 2>&1
import sys
from pathlib import Path
from bench.shapes import build_shape, get_shape, tokenizer_path
tok = tokenizer_path("qwen", sys.argv[1], Path("/tmp/bench"))
print("built in", round(build_shape(get_shape("qwen-1.5b"), Path("/tmp/s15"), tok), 1), "s")
EOF
tail -1 "$OUT/build.log"
# 8 GB card: every process's allocator capped at 7.0 GiB (bench/device/capsite/sitecustomize.py).
export CAP_GIB=7.0 PYTHONPATH=$PWD/bench/device/capsite:$SITE:$PWD
COMMON=(model.base=/tmp/s15 data.val_size=0 train.eval_steps=null train.checkpoint_steps=null
        train.output_dir=/tmp/runs)
timeout 150 python3 -m trainer train news profile=4060 train.max_steps=8 "${COMMON[@]}" > "$OUT/train.log" 2>&1
echo "train exit $?"; grep -iE "plan|predicted|peak|should be imported" "$OUT/train.log" | head -12
echo "warnings from torchao or SyntaxWarning in train.log: $(grep -ciE 'torchao|SyntaxWarning' "$OUT/train.log")"
run=$(ls -d /tmp/runs/news-2* | head -1)
python3 - "$run/metrics.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
print({k: m.get(k) for k in ("planned_peak_gib", "peak_gpu_memory_gib", "trained_tokens_per_s", "first_loss",
                             "final_loss", "lora_scale", "engine")})
EOF
timeout 150 python3 -m trainer grpo news profile=4060 grpo.steps=3 grpo.num_generations=4 \
  grpo.max_completion_length=64 train.output_dir=/tmp/runs > "$OUT/grpo.log" 2>&1
echo "grpo exit $?"; tail -4 "$OUT/grpo.log"
g=$(ls -d /tmp/runs/news-grpo-* 2>/dev/null | head -1)
[ -n "$g" ] && ls "$g" && python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print({k: m.get(k) for k in ('reward_start','reward_end','peak_gpu_memory_gib','steps')})" "$g/metrics.json"
unset CAP_GIB
PYTHONPATH=$SITE:$PWD timeout 120 python3 -m pytest -q tests/gpu -p no:cacheprovider > "$OUT/gpu-tests.log" 2>&1
tail -3 "$OUT/gpu-tests.log"
