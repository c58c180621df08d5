"""Building the trainer: TRL's packing warning is kept only where packed rows were not shown to stay apart."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from trainer.data.dataset import prepare
from trainer.hardware import Hardware
from trainer.model import load_for_training, load_tokenizer
from trainer.recipe import find_recipe, load_recipe
from trainer.runs import RunLog
from trainer.training.sft import TRL_PACKING_WARNING, build_trainer

ROOT = Path(__file__).resolve().parents[1]


def packing_warnings(tmp_path, caplog, attention: str | None) -> list[str]:
    """TRL's warnings about attention while the tiny news recipe's trainer is built with packing on."""
    overrides = ["profile=cpu", "train.packing=true", "train.max_steps=1", f"train.output_dir={tmp_path}"]
    recipe = load_recipe(find_recipe("news", ROOT / "recipes"), overrides, Hardware(False))
    tokenizer = load_tokenizer(recipe.model)
    loaded = load_for_training(recipe, Hardware(False), tokenizer)
    if attention:
        loaded.model.config._attn_implementation = attention
    with caplog.at_level(logging.WARNING, logger="trl"):
        build_trainer(recipe, loaded, prepare(recipe, tokenizer), Hardware(False), tmp_path, RunLog(quiet=True))
    return [r.getMessage() for r in caplog.records if TRL_PACKING_WARNING in r.getMessage()]


def test_packing_with_sdpa_builds_without_the_false_cross_contamination_warning(tmp_path, tiny_path, caplog):
    assert packing_warnings(tmp_path, caplog, None) == []


@pytest.mark.parametrize("attention", ["flex_attention"])
def test_packing_with_an_unchecked_attention_keeps_trl_warnings(attention, tmp_path, tiny_path, caplog):
    # Also proves the filter's text still matches what this TRL prints: if TRL rewords it, this test fails.
    warnings = packing_warnings(tmp_path, caplog, attention)
    assert any("cross-contamination" in w for w in warnings), warnings
