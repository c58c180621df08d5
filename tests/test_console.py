"""A cheap `make train RECIPE=medical`-like run: what it prints and what it leaves in the run folder.

The console shows our banner, data summary, progress bar and result, and none of the library noise that used to
come before them; the run folder has a real model card and no empty folders.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOISE = (
    "Loading weights",  # transformers' weight-loading bar
    "Truncating train dataset", "Truncating eval dataset",  # TRL's datasets.map bars over our encoded rows
    "Dropping fully masked examples",
    "The tokenizer has new PAD/BOS/EOS tokens",  # the Trainer aligning ids we now align quietly
    "SyntaxWarning",
)


@pytest.fixture(scope="module")
def medical_run(tmp_path_factory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "trainer", "train", "medical", "profile=auto", f"train.output_dir={root}",
            "train.max_steps=1", "train.batch_size=2", "train.gradient_accumulation=1", "data.max_samples=24",
            "data.val_size=2"]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    (run,) = [p for p in root.iterdir() if p.is_dir()]
    return output, run


def test_a_training_run_prints_our_lines_and_no_library_noise(medical_run):
    output, _ = medical_run
    assert "recipe medical" in output and "train:" in output and "done in" in output  # ours stay
    found = [line for line in output.splitlines() if any(noise in line for noise in NOISE)]
    assert not found, found


def test_the_run_folder_has_a_model_card_and_no_empty_folders(medical_run):
    _, run = medical_run
    empty = [p for p in run.rglob("*") if p.is_dir() and not any(p.iterdir())]
    assert not empty, empty
    card = (run / "adapter" / "README.md").read_text(encoding="utf-8")
    assert "More Information Needed" not in card  # PEFT's template
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "peft" and meta["license"] == "other" and "lora" in meta["tags"]
    assert "base_model" not in meta  # `tiny` is no Hub model: the metadata would point nowhere
    for heading in ("## Data", "## Training", "## Results", "## How to use", "## License"):
        assert heading in card
    assert "medical.jsonl" in card and "22 training examples, 2 held out" in card
    assert "AutoPeftModelForCausalLM.from_pretrained" in card and str(run / "adapter") in card
