"""GRPO speed and peak memory on a real R1-Distill shape with random weights, under a simulated card's memory.

The news recipe's prompts, `make grpo`'s trainer set-up (`trainer.training.grpo.train_grpo`: reward functions, GRPOConfig,
Unsloth on CUDA), a fresh LoRA of the recipe's shape instead of an SFT adapter (same size and cost; random
weights earn no reward, so only speed and memory mean anything). A random model never writes eos, so every
completion runs to grpo.max_completion_length: the worst case for time and memory.

    python3 bench/grpo_speed.py --shape qwen-1.5b --tokenizers DIR --cap-gib 7.0 --steps 4 --out r.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    args = _parser().parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="grpo-bench-"))
    hardware_cuda = _cuda()
    model_dir = prepare_model(args, work, hardware_cuda)
    if hardware_cuda and args.cap_gib:
        cap(args.cap_gib)
    result = measure(args, model_dir, work)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def prepare_model(args, work: Path, cuda: bool) -> Path:
    """`tiny` (CPU dry run) or a random-init bf16 folder of the named shape, built on the GPU before the cap."""
    if args.shape == "tiny":
        return Path("tiny")
    from bench.shapes import build_shape, get_shape, tokenizer_path

    dest = work / args.shape
    started = time.perf_counter()
    build_shape(get_shape(args.shape), dest, tokenizer_path("qwen", args.tokenizers, work),
                device="cuda" if cuda else "cpu")
    print(f"built {args.shape} in {time.perf_counter() - started:.0f} s", flush=True)
    if cuda:
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return dest


def cap(gib: float) -> None:
    """A consumer card: the caching allocator refuses more than `gib` in this process."""
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(gib * 2**30 / total, 0)


def measure(args, model_dir: Path, work: Path) -> dict:
    from trainer.cli import RECIPES_DIR
    from trainer.hardware import detect
    from trainer.recipe import find_recipe, load_recipe

    hardware = detect()
    base = "tiny" if args.shape == "tiny" else str(model_dir)
    quantization = "4bit" if hardware.cuda else "none"
    overrides = [f"model.base={base}", f"model.quantization={quantization}", "model.max_seq_length=1024",
                 f"grpo.steps={args.steps}", f"grpo.num_generations={args.generations}",
                 f"grpo.max_completion_length={args.completion}", f"train.output_dir={work / 'runs'}",
                 "profile=none", "lora.rank=16", "lora.alpha=16", f"model.backend={args.backend}"]
    recipe = load_recipe(find_recipe("news", RECIPES_DIR), overrides, hardware)
    started = time.perf_counter()
    run_dir, metrics = run(recipe, hardware, work)
    steps = metrics["curves"]["step"]
    result = {"shape": args.shape, "cap_gib": args.cap_gib if hardware.cuda else None, "device": hardware.name,
              "quantization": quantization, "lora_rank": 16, "num_generations": args.generations,
              "max_completion_length": args.completion, "steps": len(steps),
              "wall_s": round(time.perf_counter() - started, 1), **_versions(), **_subset(metrics)}
    result["step_seconds"] = metrics.get("step_seconds")
    return result


def run(recipe, hardware, work: Path):
    """`run_grpo` without an SFT run: a fresh adapter of the recipe's shape in place of a trained one."""
    from trainer.training.grpo import prompt_rows, train_grpo
    from trainer.data.dataset import load_conversations
    from trainer.model import load_for_training, load_tokenizer, start_engine
    from trainer.training.rewards import resolve
    from trainer.runs import RunLog, new_run_dir

    start_engine(recipe, hardware)
    prompts = prompt_rows(load_conversations(recipe).train)
    spec = resolve(recipe, [p["reference"] for p in prompts])
    tokenizer = load_tokenizer(recipe.model)
    loaded = load_for_training(recipe, hardware, tokenizer)
    run_dir = new_run_dir(recipe.train.output_dir, f"{recipe.name}-grpo")
    log = RunLog()
    timer = step_timer()
    metrics = train_grpo(recipe, loaded, prompts, spec, hardware, run_dir, log, callbacks=[timer])
    metrics["step_seconds"] = timer.seconds
    return run_dir, metrics


def step_timer():
    """A callback timing each optimizer step (generation, rewards, loss, update), so the first, compiling step
    can be told apart from the steady ones. Built here: transformers may only be imported after Unsloth."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self.began = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.began = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(round(time.perf_counter() - self.began, 2))
            print(f"step {state.global_step}: {self.seconds[-1]} s, peak {_peak_gib()} GiB", flush=True)

    return StepTimer()


def _peak_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None


def _subset(metrics: dict) -> dict:
    keys = ("backend", "train_runtime_s", "completions", "completion_tokens", "completion_tokens_per_s",
            "peak_gpu_memory_gib", "reward_start", "reward_end")
    out = {k: metrics.get(k) for k in keys}
    seconds = metrics.get("step_seconds") or []
    steady = seconds[1:] or seconds
    if steady:
        per_step = sum(steady) / len(steady)
        out["steady_step_s"] = round(per_step, 2)
        lengths = metrics["curves"]["completion_length"][1:] or metrics["curves"]["completion_length"]
        tokens = sum(lengths) / len(lengths) * metrics["completions"] / max(metrics["steps"], 1)
        out["steady_completion_tokens_per_s"] = round(tokens / per_step, 1)
    return out


def _versions() -> dict:
    import torch
    import transformers
    import trl

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}
    try:
        import unsloth

        out["unsloth"] = unsloth.__version__
    except ImportError:
        pass
    return out


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="tiny", help="qwen-1.5b, qwen-7b, or tiny (CPU dry run)")
    p.add_argument("--tokenizers", help="folder or .tgz with qwen/ (bench.shapes.tokenizer_path)")
    p.add_argument("--cap-gib", type=float, default=7.0, help="simulated card memory (7.0 for an 8 GB card)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--completion", type=int, default=256)
    p.add_argument("--backend", default="auto", help="model.backend: auto (Unsloth on CUDA), unsloth, transformers")
    p.add_argument("--work", help="folder for the shape and the run (default: a temporary one)")
    p.add_argument("--out", help="write the result as JSON here")
    return p


if __name__ == "__main__":
    sys.exit(main())
