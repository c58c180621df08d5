"""adapter/README.md: Hub metadata, the base model's license, and the results once evaluated."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from trainer.hardware import Hardware
from trainer.modelcard import base_license, model_card
from trainer.recipe import find_recipe, load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.mark.parametrize("base, license_id, mentions", [
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "mit", "MIT"),
    ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "mit", "llama3.1"),
    ("deepseek-ai/DeepSeek-R1-Distill-Llama-70B", "mit", "llama3.3"),
    ("someone/unknown-model", "other", "not known"),
    ("tiny", "other", "random weights"),
])
def test_the_base_models_license(base, license_id, mentions):
    found, line = base_license(base)
    assert found == license_id and mentions in line


def test_a_local_base_folder_declares_its_own_license(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\ntags: [x]\n---\n# a model\n", encoding="utf-8")
    assert base_license(str(tmp_path))[0] == "apache-2.0"


def test_the_card_has_hub_metadata_and_the_evaluation_once_there(tmp_path):
    recipe = load_recipe(find_recipe("news", RECIPES), ["model.base=deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"],
                         Hardware(False))
    run = tmp_path / "news-20260101-000000"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"steps": 7, "first_loss": 3.5, "final_loss": 1.25,
                                                  "eval_loss": 1.5, "examples": {"train": 90, "eval": 10}}))
    card = model_card(run, recipe)
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta == {"base_model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "library_name": "peft",
                    "license": "mit", "pipeline_tag": "text-generation",
                    "tags": ["deepseek-r1", "reasoning", "r1-tune", "sft", "lora"]}
    assert "3.5000 -> 1.2500 over 7 steps" in card and "90 training examples, 10 held out" in card
    assert "not evaluated yet" in card
    side = {"accuracy": 0.25, "eval_loss": 2.0, "perplexity": 7.39, "think_format_rate": 1.0,
            "reasoning_tokens": 3.0, "answer_tokens": 1.0}
    (run / "eval_metrics.json").write_text(json.dumps({"samples": 10, "answers": "labels", "before": side,
                                                       "after": {**side, "accuracy": 0.75}}))
    card = model_card(run, recipe)
    assert "not evaluated yet" not in card and "| accuracy (exact match) | 25.0% | 75.0% | +50.0 pts ▲ |" in card
