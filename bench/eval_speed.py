"""Eval throughput (answers per second) of `make eval`'s generation on a real shape with a LoRA adapter.

Builds (or reuses) the shape's random weights and a random adapter run folder (as `bench export` does), loads
them the way `make eval` does (`load_for_inference`: Unsloth's fast inference on CUDA), and times greedy
generation of medical-style prompts at several batch sizes. Random weights never stop early, so every answer
runs to max_new_tokens: the figure is a lower bound on answers/s for real, shorter answers.

    python bench/eval_speed.py --shape qwen-1.5b --tokenizers .benchtok/tokenizers.tgz --out eval.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="qwen-1.5b")
    p.add_argument("--work", default="/tmp/bench")
    p.add_argument("--tokenizers")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-sizes", default="8,32,64")
    p.add_argument("--out", default="eval.json")
    args = p.parse_args()

    from trainer.hardware import detect
    from trainer.model import start_engine
    from trainer.recipe import load_resolved

    hardware = detect()
    run = prepare(args)
    recipe = load_resolved(run)
    backend = start_engine(recipe, hardware)
    import torch

    from trainer.data.formats import Message
    from trainer.generate import generate
    from trainer.model import load_for_inference

    started = time.perf_counter()
    loaded = load_for_inference(recipe, hardware, run / "adapter")
    load_s = time.perf_counter() - started
    histories = [[Message("user", question)] for question in questions(args.prompts)]
    results = []
    for size in map(int, args.batch_sizes.split(",")):
        generate(loaded.model, loaded.tokenizer, histories[:size], 8, batch_size=size)  # warm-up
        torch.cuda.synchronize()
        started = time.perf_counter()
        outputs = generate(loaded.model, loaded.tokenizer, histories, args.max_new_tokens, batch_size=size)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        tokens = sum(len(loaded.tokenizer(o, add_special_tokens=False).input_ids) for o in outputs)
        results.append({"batch_size": size, "answers": len(outputs), "seconds": round(seconds, 2),
                        "answers_per_s": round(len(outputs) / seconds, 2), "new_tokens_per_s": round(tokens / seconds)})
        print(results[-1], flush=True)
    report = {"shape": args.shape, "backend": backend, "card": torch.cuda.get_device_name(0),
              "max_new_tokens": args.max_new_tokens, "load_s": round(load_s, 1), "results": results,
              "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def prepare(args) -> Path:
    from bench.export_bench import fake_run
    from bench.shapes import build_shape, get_shape, is_built, shape_dir, tokenizer_path

    shape, work = get_shape(args.shape), Path(args.work)
    base = shape_dir(args.shape, work)
    if not is_built(args.shape, work):
        build_shape(shape, base, tokenizer_path(shape.family, args.tokenizers, work), device="cuda")
    return fake_run(base, work / "runs" / f"{args.shape}-eval")


def questions(n: int) -> list[str]:
    rows = [json.loads(line) for line in (Path(__file__).resolve().parent.parent / "recipes" / "samples" /
                                          "medical.jsonl").read_text(encoding="utf-8").splitlines()]
    return [rows[i % len(rows)]["Question"] for i in range(n)]


if __name__ == "__main__":
    sys.exit(main())
