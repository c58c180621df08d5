"""On a CUDA GPU: the Unsloth path end to end, and both backends seeing the same tokens and labels.

Run on the H100 test machine (`pytest -m gpu tests/gpu`); everything here skips without CUDA.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from trainer.cli import main

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="needs unsloth")]

LINEAR = "lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"
TINY_4BIT = ["news", "profile=cpu", "model.quantization=4bit", LINEAR, "train.max_steps=40",
             "train.eval_steps=20"]


@pytest.fixture(scope="module")
def unsloth_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", *TINY_4BIT, "model.backend=unsloth", f"train.output_dir={out}"]) == 0
    (run,) = out.glob("news-*")
    return run


def test_unsloth_trains_the_tiny_model_in_4bit(unsloth_run):
    metrics = json.loads((unsloth_run / "metrics.json").read_text())
    assert metrics["backend"] == "unsloth"
    assert metrics["final_loss"] < metrics["first_loss"] / 2
    assert metrics["peak_gpu_memory_gib"] > 0
    assert metrics["planned_peak_gib"] > 0  # make train planned the run for this card first (trainer/plan.py)
    assert (unsloth_run / "adapter" / "adapter_model.safetensors").is_file()


def test_unsloth_adapter_loads_for_eval_and_chat(unsloth_run, capsys):
    assert main(["eval", str(unsloth_run), "--samples", "8"]) == 0
    report = json.loads((unsloth_run / "eval_metrics.json").read_text())
    assert report["after"]["eval_loss"] < report["before"]["eval_loss"]
    capsys.readouterr()
    assert main(["chat", str(unsloth_run), "--prompt", "新闻分类:「高考志愿」最新进展公布", "--temperature", "0",
                 "--max-new-tokens", "40"]) == 0
    assert "[thinking]" in capsys.readouterr().out


def test_both_backends_train_on_identical_ids_and_labels(tmp_path):
    """The shared data path decides the tokens: Unsloth and transformers+bnb+PEFT get the same examples."""
    seen = {}
    for backend in ("unsloth", "transformers"):
        seen[backend] = processed_examples(backend, tmp_path / backend)
    assert seen["unsloth"] == seen["transformers"]
    assert len(seen["unsloth"]) > 100


def processed_examples(backend: str, out: Path) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    from trainer.data.dataset import encode, load_conversations
    from trainer.hardware import detect
    from trainer.model import load_for_training, load_tokenizer
    from trainer.recipe import find_recipe, load_recipe
    from trainer.runs import RunLog
    from trainer.training.sft import build_trainer

    hardware = detect()
    root = Path(__file__).resolve().parents[2] / "recipes"
    recipe = load_recipe(find_recipe("news", root), [*TINY_4BIT[1:], f"model.backend={backend}",
                                                      f"train.output_dir={out}"], hardware)
    tokenizer = load_tokenizer(recipe.model)
    prepared = encode(load_conversations(recipe), tokenizer, recipe)
    loaded = load_for_training(recipe, hardware, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    trainer, _ = build_trainer(recipe, loaded, prepared, hardware, out, RunLog())
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["labels"] != -100).any()
    rows = sorted((tuple(r["input_ids"]), tuple(r["labels"])) for r in trainer.train_dataset)
    del trainer, loaded
    torch.cuda.empty_cache()
    return rows
