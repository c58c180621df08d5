#!/usr/bin/env bash
# What runs on the H100 test machine (see ../shared/device/README.md), one stage per device call:
#   bash bench/device/h100.sh setup|tests|bench-1.5b|bench-7b|export-eval|final|next|multi|next2|abcd
# (setup only unpacks the bundles and writes env.txt, for a command of your own after it)
# Carry .devsite (site.tgz: unsloth, trl, bitsandbytes, datasets, jieba; llama-trim.tar.gz: llama.cpp's sources
# and vocabularies from the pinned llama-cpp-python sdist; deepspeed.tgz from bench/device/deepspeed_bundle.sh)
# and .benchtok (the real R1 tokenizers). multi, next2 and abcd are for a machine with two GPUs (nvidia-h100-x2).
set -uo pipefail
stage=${1:?stage}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
mkdir -p /tmp/site && tar xzf .devsite/site.tgz -C /tmp/site
[ -f .devsite/deepspeed.tgz ] && tar xzf .devsite/deepspeed.tgz -C /tmp/site
# NVLink multicast stays off on shared multi-GPU hosts (see the device notes); children inherit these.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 \
       PYTHONUNBUFFERED=1 R1TUNE_CACHE=/tmp/r1cache LLAMA_CPP_SDIST=$PWD/.devsite/llama-trim.tar.gz
T=.benchtok/tokenizers.tgz
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; python3 -c \
  "import torch, transformers, trl, peft, unsloth, bitsandbytes; print('torch', torch.__version__, 'transformers',
  transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'unsloth', unsloth.__version__,
  'bitsandbytes', bitsandbytes.__version__)" 2>/dev/null | tail -1; date -u; } > "$OUT/env.txt"
case $stage in
  setup) ;;
  tests)
    python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu -x 2>&1 | tee "$OUT/gpu-tests.log" | tail -30
    python3 -m bench packing-check --shapes qwen-1.5b --backends unsloth,transformers --tokenizers $T \
      --budget-s 170 --child-timeout 120 --out "$OUT/check.json" 2>&1 | tail -15 ;;
  bench-1.5b)
    python3 -m bench --shapes qwen-1.5b --variants d,c,a,b,d-nll,d-pack --steps 6 --tokenizers $T \
      --budget-s 500 --child-timeout 140 --out "$OUT/bench-1.5b.json" --logs-tgz "$OUT/logs-1.5b.tgz" 2>&1 | tail -25 ;;
  bench-7b)
    python3 -m bench --shapes qwen-7b --variants d,c,a,p-4060,p-4090,b --steps 6 --tokenizers $T \
      --budget-s 510 --child-timeout 150 --out "$OUT/bench-7b.json" --logs-tgz "$OUT/logs-7b.tgz" 2>&1 | tail -25 ;;
  export-eval)
    python3 -m bench export --shape qwen-7b --device cuda --quant q4_k_m --tokenizers $T --out "$OUT/export-7b.json" \
      2>&1 | tail -30
    python3 bench/eval_speed.py --shape qwen-1.5b --tokenizers $T --out "$OUT/eval-1.5b.json" 2>&1 | tail -15 ;;
  final)  # the 7B bench on the GPU while the 7B export runs on the CPUs, then eval speed on 1.5B
    python3 -m bench --shapes qwen-7b --variants d,a,c,p-4060,p-4090 --steps 6 --tokenizers $T --budget-s 390 \
      --child-timeout 150 --out "$OUT/bench-7b.json" --logs-tgz "$OUT/logs-7b.tgz" > "$OUT/bench-7b.log" 2>&1 &
    bench=$!
    for i in $(seq 1 60); do [ -f /tmp/bench/shapes/qwen-7b/bench_shape.json ] && break; sleep 3; done
    timeout 420 python3 -m bench export --shape qwen-7b --quant q4_k_m --tokenizers $T \
      --out "$OUT/export-7b.json" > "$OUT/export-7b.log" 2>&1 &
    wait $bench; tail -12 "$OUT/bench-7b.log"
    timeout 110 python3 bench/eval_speed.py --shape qwen-1.5b --prompts 32 --batch-sizes 8,32 --tokenizers $T \
      --out "$OUT/eval-1.5b.json" > "$OUT/eval-1.5b.log" 2>&1; tail -4 "$OUT/eval-1.5b.log"
    wait; tail -4 "$OUT/export-7b.log" ;;
  next)  # what 2026-11-25 left unmeasured: the card profiles on 7B, the Llama-8B shape, the 7B export
    python3 -m bench --shapes qwen-7b,llama-8b --order variant --variants p-4060,p-4090,d,c,a --steps 6 \
      --tokenizers $T --budget-s 400 --child-timeout 150 --out "$OUT/bench-next.json" --logs-tgz "$OUT/logs-next.tgz" \
      > "$OUT/bench-next.log" 2>&1 &
    bench=$!
    for i in $(seq 1 60); do [ -f /tmp/bench/shapes/qwen-7b/bench_shape.json ] && break; sleep 3; done
    timeout 480 python3 -m bench export --shape qwen-7b --quant q4_k_m --tokenizers $T \
      --out "$OUT/export-7b.json" > "$OUT/export-7b.log" 2>&1
    cp /tmp/r1cache/*.failed.log "$OUT/" 2>/dev/null
    wait $bench; tail -14 "$OUT/bench-next.log"; tail -4 "$OUT/export-7b.log" ;;
  multi)  # issue 7: ZeRO-2 full fine-tune of 1.5B and DDP QLoRA of 7B, each on 1 and 2 GPUs via --gpus N
    nvidia-smi -L >> "$OUT/env.txt"
    python3 -m bench scaling --cases qwen-1.5b:full:zero2,qwen-7b:lora:ddp --gpus 1,2 --steps 6 --warmup 2 \
      --tokenizers $T --budget-s 545 --child-timeout 240 --out "$OUT/scaling.json" --logs-tgz "$OUT/logs-scaling.tgz" \
      2>&1 | tee "$OUT/scaling.log" | grep -v "^\s*$" | tail -30 ;;
  next2)  # on two GPUs at once: 7B card profiles on GPU 0, Llama-8B on GPU 1, the 7B export on the CPUs, GPU tests
    L=/tmp/logs2; mkdir -p $L
    CUDA_VISIBLE_DEVICES=0 python3 -m bench --shapes qwen-7b --variants p-4060,p-4090 --steps 6 --tokenizers $T \
      --budget-s 330 --child-timeout 160 --out "$OUT/bench-profiles.json" > $L/bench-profiles.log 2>&1 &
    a=$!
    CUDA_VISIBLE_DEVICES=1 python3 -m bench --shapes llama-8b --variants d,c,a --steps 6 --tokenizers $T \
      --work /tmp/bench8 --budget-s 420 --child-timeout 160 --out "$OUT/bench-llama.json" > $L/bench-llama.log 2>&1 &
    b=$!
    for i in $(seq 1 60); do [ -f /tmp/bench/shapes/qwen-7b/bench_shape.json ] && break; sleep 3; done
    timeout 420 python3 -m bench export --shape qwen-7b --quant q4_k_m --tokenizers $T \
      --out "$OUT/export-7b.json" > $L/export-7b.log 2>&1 &
    e=$!
    wait $a; CUDA_VISIBLE_DEVICES=0 timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu \
      > $L/gpu-tests.log 2>&1
    wait $b $e; cp /tmp/r1cache/*.failed.log $L/ 2>/dev/null; cp -r /tmp/bench/logs $L/bench7b 2>/dev/null
    cp -r /tmp/bench8/logs $L/bench8b 2>/dev/null; tar czf "$OUT/logs-next2.tgz" -C $L .
    tail -3 $L/gpu-tests.log; tail -8 $L/bench-profiles.log; tail -8 $L/bench-llama.log; tail -4 $L/export-7b.log ;;
  abcd)  # all four variants in one run per shape: Qwen-7B on GPU 0, Llama-8B on GPU 1 (b first after d: it was missing)
    L=/tmp/logsabcd; mkdir -p $L
    CUDA_VISIBLE_DEVICES=0 python3 -m bench --shapes qwen-7b --variants d,b,c,a --steps 6 --tokenizers $T \
      --budget-s 520 --child-timeout 200 --out "$OUT/bench-7b-abcd.json" > $L/bench-7b.log 2>&1 &
    CUDA_VISIBLE_DEVICES=1 python3 -m bench --shapes llama-8b --variants d,b,c,a --steps 6 --tokenizers $T \
      --work /tmp/bench8 --budget-s 520 --child-timeout 200 --out "$OUT/bench-llama-abcd.json" > $L/bench-8b.log 2>&1 &
    wait; cp -r /tmp/bench/logs $L/bench7b 2>/dev/null; cp -r /tmp/bench8/logs $L/bench8b 2>/dev/null
    tar czf "$OUT/logs-abcd.tgz" -C $L .; tail -9 $L/bench-7b.log; tail -9 $L/bench-8b.log ;;
esac
