"""Loading the trainable model: equal recipes start from equal adapters (what resume and comparisons rely on)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from trainer.hardware import Hardware
from trainer.model import load_for_training, load_tokenizer
from trainer.recipe import find_recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]


def adapter_weights(*overrides: str) -> dict[str, torch.Tensor]:
    recipe = load_recipe(find_recipe("news", ROOT / "recipes"), ["profile=cpu", *overrides], Hardware(False))
    loaded = load_for_training(recipe, Hardware(False), load_tokenizer(recipe.model))
    return {k: v.detach().clone() for k, v in loaded.model.named_parameters() if v.requires_grad}


def test_the_adapter_initialisation_follows_the_recipe_seed(tiny_path):
    first = adapter_weights()
    torch.manual_seed(12345)  # whatever happened to the global generator before must not matter
    again = adapter_weights()
    other = adapter_weights("train.seed=7")
    lora_a = [k for k in first if "lora_A" in k]
    assert lora_a and first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in lora_a)


def test_start_engine_without_cuda_tells_deepspeed_it_runs_on_the_cpu(monkeypatch, tiny_path):
    from trainer.model import start_engine

    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    recipe = load_recipe(find_recipe("news", ROOT / "recipes"), ["profile=cpu"], Hardware(False))
    assert start_engine(recipe, Hardware(False)) == "transformers"
    assert os.environ["DS_ACCELERATOR"] == "cpu"  # else DeepSpeed warns on every CPU run that it found no GPU


def test_torchao_syntax_warnings_are_ignored_and_others_kept():
    import warnings

    from trainer.model import ignore_torchao_syntax_warnings

    source = "same = len('') is 0\n"  # Python warns while compiling ("is" with a literal), as for torchao's escapes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ignore_torchao_syntax_warnings()
        compile(source, "/site-packages/torchao/quantization/utils.py", "exec")
        compile(source, "/work/project/mine.py", "exec")
    assert [str(w.filename) for w in caught if w.category is SyntaxWarning] == ["/work/project/mine.py"]
