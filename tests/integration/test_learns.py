"""A real training run on the CPU that must learn: the tiny model on the news sample, LoRA, the cpu profile.

Held-out accuracy is the class after `</think>` in greedy generations, before (base) and after (adapter).
The run is longer than `make train RECIPE=news` (300 steps, about 4 minutes, instead of 120): at 150 steps two
seeds gave 80% and 97%; at 300 the harder seed reaches 100% (eval loss 0.003), which leaves a real margin.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.cli import main
from trainer.data.dataset import read_conversations
from trainer.generate import generate, history_of
from trainer.hardware import Hardware
from trainer.evaluation.metrics import label_match
from trainer.r1 import split_reasoning
from trainer.model import load_for_inference
from trainer.recipe import load_resolved

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def news_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", "news", "profile=cpu", "train.max_steps=300", f"train.output_dir={out}"]) == 0
    (run,) = out.glob("news-*")
    return run


def accuracy(run: Path, trained: bool) -> float:
    recipe = load_resolved(run)
    loaded = load_for_inference(recipe, Hardware(False), run / "adapter" if trained else None)
    conversations = read_conversations(run / "eval_data.jsonl")
    outputs = generate(loaded.model, loaded.tokenizer, [history_of(c.messages) for c in conversations],
                       max_new_tokens=recipe.eval.max_new_tokens, batch_size=len(conversations))
    hits = [label_match(split_reasoning(o).answer, c.messages[-1].content) for o, c in zip(outputs, conversations)]
    return sum(hits) / len(hits)


def test_news_accuracy_rises_from_chance_to_at_least_90_percent(news_run):
    before, after = accuracy(news_run, trained=False), accuracy(news_run, trained=True)
    assert before <= 0.3, before  # ten classes: an untrained model is at chance or below
    assert after >= 0.9, after


def test_run_folder_is_complete_and_loss_fell(news_run):
    for name in ("config.yaml", "adapter/adapter_model.safetensors", "adapter/adapter_config.json",
                 "adapter/tokenizer.json", "trainer_state.json", "metrics.json", "loss_curve.png", "train.log",
                 "eval_data.jsonl", "COMPLETE"):
        assert (news_run / name).is_file(), name
    metrics = json.loads((news_run / "metrics.json").read_text())
    assert metrics["final_loss"] < metrics["first_loss"] / 3
    assert metrics["eval_loss"] is not None and metrics["trained_tokens_per_s"] > 0
    assert len(read_conversations(news_run / "eval_data.jsonl")) == 30
