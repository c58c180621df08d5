"""GRPO on the CPU: a short SFT run of the tiny model on the news sample, then `python -m trainer grpo` with the
news recipe's own CPU settings.

The SFT run is kept short (40 steps) on purpose: the model has half learnt the format (about 40% of sampled
completions close the think block once and answer) and hardly any classes, so completions of one prompt differ
in reward and GRPO has something to learn. What it learns there is mostly the format; the classes stay near
chance (see the README's GRPO section). The reward is measured again here, independently of TRL's logs: sampled
answers to the held-out prompts before and after GRPO, scored by this file's own checks.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer.cli import main
from trainer.data.dataset import read_conversations
from trainer.evaluation.evaluate import evaluate
from trainer.evaluation.metrics import label_match
from trainer.generate import generate, history_of
from trainer.hardware import Hardware
from trainer.model import load_for_inference
from trainer.recipe import load_resolved

pytestmark = pytest.mark.integration
SFT_STEPS = 40
SAMPLES = 8
"""Sampled completions per held-out prompt when the reward is measured again (30 prompts: 240 completions)."""


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", "news", "profile=cpu", f"train.max_steps={SFT_STEPS}", "train.eval_steps=none",
                 f"train.output_dir={out}"]) == 0
    (sft,) = out.glob("news-*")
    assert main(["grpo", "news", "profile=cpu", f"train.output_dir={out}"]) == 0
    (grpo,) = out.glob("news-grpo-*")
    return sft, grpo


def sampled_reward(run: Path, held_out) -> dict[str, float]:
    """Share of sampled completions that are well formed (one `</think>`, then a short non-empty answer) and
    share whose answer is the reference label, at the GRPO run's temperature, with a fixed seed."""
    recipe = load_resolved(run)
    loaded = load_for_inference(recipe, Hardware(False), run / "adapter")
    histories = [history_of(c.messages) for c in held_out for _ in range(SAMPLES)]
    references = [c.messages[-1].content for c in held_out for _ in range(SAMPLES)]
    torch.manual_seed(0)
    outputs = generate(loaded.model, loaded.tokenizer, histories, recipe.grpo.max_completion_length,
                       batch_size=len(histories), temperature=recipe.grpo.temperature)
    well_formed = correct = 0
    for text, reference in zip(outputs, references, strict=True):
        parts = text.split("</think>")
        answer = parts[-1].strip()
        if len(parts) == 2 and answer and len(answer) <= 64:
            well_formed += 1
            correct += label_match(answer, reference)
    return {"format": well_formed / len(outputs), "correct": correct / len(outputs),
            "reward": (well_formed + correct) / len(outputs)}


@pytest.fixture(scope="session")
def rewards_before_and_after(runs) -> tuple[dict, dict]:
    sft, grpo = runs
    held_out = read_conversations(grpo / "eval_data.jsonl")
    return sampled_reward(sft, held_out), sampled_reward(grpo, held_out)


def test_mean_reward_rises(runs, rewards_before_and_after):
    before, after = rewards_before_and_after
    assert after["reward"] >= before["reward"] + 0.1, (before, after)  # rises of 0.23-0.27 were measured (two seeds)
    metrics = json.loads((runs[1] / "metrics.json").read_text())
    assert metrics["reward_end"] > metrics["reward_start"], metrics  # TRL's own log agrees


def test_metrics_hold_each_reward_components_curve(runs):
    metrics = json.loads((runs[1] / "metrics.json").read_text())
    steps = load_resolved(runs[1]).grpo.steps
    assert metrics["stage"] == "grpo" and metrics["steps"] == steps
    curves = metrics["curves"]
    assert set(curves) >= {"step", "reward", "format", "correctness"}
    assert len(curves["reward"]) == len(curves["correctness"]) == steps
    tenth = max(1, steps // 10)  # reward_start and reward_end: means over the first and the last tenth
    assert metrics["reward_start"] == pytest.approx(sum(curves["reward"][:tenth]) / tenth, abs=1e-4)
    assert metrics["reward_end"] == pytest.approx(sum(curves["reward"][-tenth:]) / tenth, abs=1e-4)


def test_grpo_trains_the_decoder_layers_and_leaves_the_vocabulary_adapters_as_sft_left_them(runs):
    sft, grpo = (load_file(str(run / "adapter" / "adapter_model.safetensors")) for run in runs)
    assert set(sft) == set(grpo)
    vocabulary = {k for k in sft if "embed_tokens" in k or "lm_head" in k}
    layers = set(sft) - vocabulary
    assert vocabulary and layers  # the CPU profile puts an adapter on both
    assert all(torch.equal(sft[k], grpo[k]) for k in vocabulary)
    assert sum(not torch.equal(sft[k], grpo[k]) for k in layers) == len(layers)


def test_grpo_run_folder_works_with_eval_and_keeps_the_contract(runs):
    sft, grpo = runs
    for name in ("config.yaml", "adapter/adapter_model.safetensors", "adapter/adapter_config.json",
                 "adapter/tokenizer.json", "metrics.json", "reward_curve.png", "train.log", "eval_data.jsonl",
                 "COMPLETE"):
        assert (grpo / name).is_file(), name
    assert not (grpo / "adapter" / "ref").exists()  # only the trained adapter is kept
    assert json.loads((grpo / "metrics.json").read_text())["sft_run"] == str(sft)
    assert evaluate(grpo, samples=8)["samples"] == 8  # make eval takes the GRPO run unchanged
