#!/usr/bin/env bash
# The planner's calibration and the card benchmark on a machine with two GPUs (nvidia-h200-x2), one list of
# cases per GPU at once:  bash bench/device/calibrate.sh cal1|cal2;  on one GPU: CASES0=... bash ... cards
# Carry .devsite (site.tgz) and .benchtok (tokenizers.tgz from `python -m bench export-tokenizers`).
# Cases: see bench/calibrate.py (shape:cap_gib:variant:batch:accum:length:ckpt:rank). Caps: trainer.plan.budget_gib
# of an 8, 12, 16 and 24 GB card (7.0, 10.58, 14.15, 21.31 GiB).
set -uo pipefail
stage=${1:?stage}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
mkdir -p /tmp/site && tar xzf .devsite/site.tgz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 \
       PYTHONUNBUFFERED=1 R1TUNE_CACHE=/tmp/r1cache
T=.benchtok/tokenizers.tgz
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; python3 -c \
  "import torch, transformers, trl, peft, unsloth, bitsandbytes; print('torch', torch.__version__, 'transformers',
  transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'unsloth', unsloth.__version__,
  'bitsandbytes', bitsandbytes.__version__)" 2>/dev/null | tail -1; date -u; git rev-parse HEAD 2>/dev/null; } \
  > "$OUT/env.txt"
B=${BUDGET:-440}
gpu() {  # gpu INDEX NAME CASE...
  local i=$1 name=$2; shift 2
  CUDA_VISIBLE_DEVICES=$i python3 -m bench.calibrate run "$@" --tokenizers $T --work /tmp/cal$i --budget-s $B \
    --child-timeout 200 --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
}
case $stage in
  cal1)
    gpu 0 cal1-gpu0 qwen-7b:7.0:project:1:4:4096:1:16 qwen-7b:7.0:bare:2:4:2048:1:16 \
      qwen-7b:21.31:project:4:2:4096:1:16 qwen-7b:21.31:bare:2:4:2048:1:16 qwen-7b:21.31:project:1:8:4096:0:16 \
      qwen-7b:7.0:project:1:8:2048:1:16 qwen-7b:14.15:project:2:4:4096:1:64 qwen-7b:10.58:project:2:4:2048:1:16 &
    gpu 1 cal1-gpu1 qwen-1.5b:7.0:project:4:2:4096:1:16 qwen-1.5b:7.0:project:1:8:2048:0:16 \
      qwen-1.5b:10.58:project:2:4:4096:0:32 qwen-1.5b:21.31:project:8:1:4096:1:16 \
      llama-8b:7.0:project:1:8:2048:1:16 llama-8b:21.31:project:1:8:4096:0:16 llama-8b:10.58:project:2:4:4096:1:16 \
      llama-8b:14.15:project:4:2:4096:1:64 qwen-1.5b:14.15:project:4:2:2048:0:16 &
    wait ;;
  cards)  # one GPU (nvidia-h200): the cases in CASES0 in order, STEPS timed steps after WARMUP warm-up steps each (warm-up past torch.compile's shape recompiles)
    CUDA_VISIBLE_DEVICES=0 python3 -m bench.calibrate run ${CASES0:?} --tokenizers $T --work /tmp/cal0 \
      --budget-s $B --child-timeout 200 --steps ${STEPS:-5} --warmup ${WARMUP:-3} --out "$OUT/cards.json" > "$OUT/cards.log" 2>&1 ;;
  cal2)  # the planner's own choices (plan:CARD) next to packed bare Unsloth at the same cap, after the fit
    gpu 0 cal2-gpu0 ${CASES0:?} &
    gpu 1 cal2-gpu1 ${CASES1:?} &
    wait ;;
esac
tar czf "$OUT/logs-$stage.tgz" -C /tmp $(cd /tmp && ls -d cal0/logs cal1/logs 2>/dev/null)
for f in "$OUT"/*.log; do echo "== $f"; grep "calibrate " "$f" | cut -c1-260; done
