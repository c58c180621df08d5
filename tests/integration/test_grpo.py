"""GRPO on the CPU: a short SFT run of the tiny model on the news sample, then `python -m trainer grpo`.

The SFT run is kept short (40 steps) on purpose: the model has learnt the format and some of the classes, so
sampled completions of one prompt differ in reward and GRPO has something to learn. The rewards are scored here
again, independently of TRL's logs: greedy answers on the training prompts before and after GRPO.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.cli import main
from trainer.data.dataset import read_conversations
from trainer.evaluation.evaluate import evaluate
from trainer.generate import generate, history_of
from trainer.hardware import Hardware
from trainer.evaluation.metrics import label_match
from trainer.r1 import split_reasoning
from trainer.model import load_for_inference
from trainer.recipe import load_resolved

pytestmark = pytest.mark.integration
SFT_STEPS, GRPO_STEPS = 40, 12


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", "news", "profile=cpu", f"train.max_steps={SFT_STEPS}", "train.eval_steps=none",
                 f"train.output_dir={out}"]) == 0
    (sft,) = out.glob("news-*")
    assert main(["grpo", "news", "profile=cpu", f"grpo.steps={GRPO_STEPS}", f"train.output_dir={out}"]) == 0
    (grpo,) = out.glob("news-grpo-*")
    return sft, grpo


@pytest.mark.xfail(strict=False, reason="open (issue 19): on the tiny model the sampled rewards are noise, "
                   "correctness stays 0 and format wanders 0.1-0.5 from step to step; no setting found yet that "
                   "makes the mean reward rise within a CPU test's budget")
def test_mean_reward_rises(runs):
    metrics = json.loads((runs[1] / "metrics.json").read_text())
    assert metrics["reward_end"] > metrics["reward_start"] + 0.2, metrics


def test_metrics_hold_each_reward_components_curve(runs):
    metrics = json.loads((runs[1] / "metrics.json").read_text())
    assert metrics["stage"] == "grpo" and metrics["steps"] == GRPO_STEPS
    curves = metrics["curves"]
    assert set(curves) >= {"step", "reward", "format", "correctness"}
    assert len(curves["reward"]) == len(curves["correctness"]) == GRPO_STEPS
    tenth = max(1, GRPO_STEPS // 10)  # reward_start and reward_end: means over the first and the last tenth
    assert metrics["reward_start"] == pytest.approx(sum(curves["reward"][:tenth]) / tenth, abs=1e-4)
    assert metrics["reward_end"] == pytest.approx(sum(curves["reward"][-tenth:]) / tenth, abs=1e-4)


def greedy_correct(run: Path, conversations) -> float:
    recipe = load_resolved(run)
    loaded = load_for_inference(recipe, Hardware(False), run / "adapter")
    outputs = generate(loaded.model, loaded.tokenizer, [history_of(c.messages) for c in conversations],
                       max_new_tokens=recipe.grpo.max_completion_length, batch_size=len(conversations))
    hits = [label_match(split_reasoning(o).answer, c.messages[-1].content) for o, c in zip(outputs, conversations)]
    return sum(hits) / len(hits)


def test_grpo_run_folder_works_with_eval_and_keeps_the_contract(runs):
    sft, grpo = runs
    for name in ("config.yaml", "adapter/adapter_model.safetensors", "adapter/adapter_config.json",
                 "adapter/tokenizer.json", "metrics.json", "reward_curve.png", "train.log", "eval_data.jsonl",
                 "COMPLETE"):
        assert (grpo / name).is_file(), name
    assert not (grpo / "adapter" / "ref").exists()  # only the trained adapter is kept
    assert json.loads((grpo / "metrics.json").read_text())["sft_run"] == str(sft)
    assert evaluate(grpo, samples=8)["samples"] == 8  # make eval takes the GRPO run unchanged


@pytest.mark.xfail(strict=False, reason="open (issue 19): GRPO's effect on the tiny model is noise so far")
def test_grpo_keeps_or_improves_held_out_accuracy(runs):
    sft, grpo = runs
    held_out = read_conversations(grpo / "eval_data.jsonl")
    assert greedy_correct(grpo, held_out) >= greedy_correct(sft, held_out)
