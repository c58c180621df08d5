"""What GRPO does to the tiny model on the CPU: an SFT run of the news recipe, `trainer grpo` on it, and the
held-out answers of both runs scored the same way.

    python3 bench/grpo_cpu.py --sft-steps 40 --work /tmp/grpo-bench [--seed N] [grpo.key=value ...]

The SFT run is kept in --work per step count and seed, so several GRPO settings can start from the same one.
Prints, as its last line, one JSON object: TRL's reward curve summary, and for the SFT and the GRPO adapter the
held-out greedy accuracy, the share of sampled completions that are well formed and that are correct (8 per
prompt, at the GRPO run's temperature, seed 0), and how many held-out prompts get the most common greedy answer
(a policy that collapsed onto one answer gets all of them).
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLES = 8


def main() -> int:
    args = _parser().parse_args()
    from trainer.cli import main as cli

    sft = sft_run(cli, args)
    out = Path(args.work) / f"grpo-{time.strftime('%H%M%S')}"
    started = time.perf_counter()
    assert cli(["grpo", "news", "profile=cpu", f"train.output_dir={out}", f"train.seed={args.seed}",
                "--run", str(sft), *args.overrides]) == 0
    (run,) = out.glob("news-grpo-*")
    metrics = json.loads((run / "metrics.json").read_text())
    result = {"sft_steps": args.sft_steps, "sft_seed": args.sft_seed, "seed": args.seed, "overrides": args.overrides,
              "grpo_wall_s": round(time.perf_counter() - started, 1), "train_runtime_s": metrics["train_runtime_s"],
              "reward_start": metrics["reward_start"], "reward_end": metrics["reward_end"],
              "curve": [round(r, 3) for r in metrics["curves"]["reward"]],
              "sft": scores(sft), "grpo": scores(run)}
    print(json.dumps(result))
    return 0


def sft_run(cli, args) -> Path:
    out = Path(args.work) / f"sft{args.sft_steps}-{args.sft_seed}"
    done = [p.parent for p in out.glob("news-*/COMPLETE")]
    if not done:
        assert cli(["train", "news", "profile=cpu", f"train.max_steps={args.sft_steps}", "train.eval_steps=none",
                    f"train.seed={args.sft_seed}", f"train.output_dir={out}"]) == 0
        done = [p.parent for p in out.glob("news-*/COMPLETE")]
    return done[0]


def scores(run: Path) -> dict:
    import torch

    from trainer.data.dataset import read_conversations
    from trainer.evaluation.metrics import label_match
    from trainer.generate import generate, history_of
    from trainer.hardware import Hardware
    from trainer.model import load_for_inference
    from trainer.r1 import split_reasoning
    from trainer.recipe import load_resolved

    held_out = read_conversations(run / "eval_data.jsonl")
    recipe = load_resolved(run)
    loaded = load_for_inference(recipe, Hardware(False), run / "adapter")
    length = recipe.grpo.max_completion_length
    greedy = generate(loaded.model, loaded.tokenizer, [history_of(c.messages) for c in held_out], length,
                      batch_size=len(held_out))
    answers = [split_reasoning(text).answer for text in greedy]
    torch.manual_seed(0)
    sampled = generate(loaded.model, loaded.tokenizer, [history_of(c.messages) for c in held_out for _ in
                       range(SAMPLES)], length, batch_size=SAMPLES * len(held_out),
                       temperature=recipe.grpo.temperature)
    references = [c.messages[-1].content for c in held_out]
    splits = [split_reasoning(text) for text in sampled]
    formed = [s.closed and bool(s.answer) and "</think>" not in s.answer for s in splits]
    right = [f and label_match(s.answer, references[i // SAMPLES]) for i, (s, f) in enumerate(zip(splits, formed))]
    return {"greedy_accuracy": _share([label_match(a, r) for a, r in zip(answers, references)]),
            "sampled_format": _share(formed), "sampled_correct": _share(right),
            "most_common_greedy_answer": collections.Counter(answers).most_common(1)[0]}


def _share(flags: list) -> float:
    return round(sum(map(bool, flags)) / len(flags), 3)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sft-steps", type=int, default=40)
    p.add_argument("--sft-seed", type=int, default=3407, help="train.seed of the SFT run")
    p.add_argument("--seed", type=int, default=3407, help="train.seed of the GRPO run (its sampling)")
    p.add_argument("--work", required=True)
    p.add_argument("overrides", nargs="*", help="grpo.key=value overrides of the news recipe's CPU profile")
    return p


if __name__ == "__main__":
    raise SystemExit(main())
