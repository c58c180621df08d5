"""Two training processes (CPU, gloo, DDP) equal one process with the same global batch: gradients are
synchronised, for an adapter and for a full fine-tune. (FSDP and DeepSpeed need GPUs: tests/gpu/test_multi_gpu.py.)

The control: one process with only one process's share of the batch ends elsewhere, so the comparison can fail.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["news", "profile=cpu", "train.max_steps=4", "train.gradient_accumulation=1", "train.eval_steps=null",
        "data.val_size=0"]


def train(out: Path, batch: int, *extra: str) -> Path:
    done = subprocess.run([sys.executable, "-m", "trainer", "train", *ARGS, f"train.batch_size={batch}",
                           f"train.output_dir={out}", *extra], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run,) = out.glob("news-*")
    return run


def adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def full_model(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "model.safetensors"))


def losses(run: Path) -> list[float]:
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    two = train(tmp_path / "two", 4, "--gpus", "2")
    one = train(tmp_path / "one", 8)
    half = train(tmp_path / "half", 4)

    assert (two / "COMPLETE").exists() and len(list((tmp_path / "two").iterdir())) == 1  # one folder, one writer
    metrics = json.loads((two / "metrics.json").read_text())
    assert (metrics["engine"], metrics["processes"]) == ("ddp", 2)
    assert metrics["trained_tokens"] == json.loads((one / "metrics.json").read_text())["trained_tokens"]

    same, control = largest_difference(adapter(two), adapter(one)), largest_difference(adapter(half), adapter(one))
    assert control > 1e-3  # a different batch really moves the weights elsewhere
    assert same < 1e-4, f"2 processes vs 1: max weight difference {same} (half batch: {control})"
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)


def test_full_fine_tune_on_two_processes_equals_one(tmp_path):
    """The whole model's gradients are averaged too, and rank 0 alone saves the full weights."""
    full = ("train.method=full", "train.strategy=ddp", "train.max_steps=3")
    two = train(tmp_path / "two", 4, *full, "--gpus", "2")
    one = train(tmp_path / "one", 8, *full)

    metrics = json.loads((two / "metrics.json").read_text())
    assert (metrics["engine"], metrics["processes"]) == ("ddp", 2)
    sharded, whole = full_model(two), full_model(one)
    assert sharded.keys() == whole.keys() and len(whole) > 20  # every tensor of the model
    assert largest_difference(sharded, whole) < 1e-4
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)


def test_workers_that_fail_before_their_first_step_leave_no_run_folder(tmp_path):
    # The launcher's own checks pass (a local model folder, good data); each worker then fails to load it.
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "qwen2"', encoding="utf-8")  # cut short
    out = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "trainer", "train", *ARGS, f"model.base={broken}",
                           f"train.output_dir={out}", "--gpus", "2"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert done.returncode != 0
    assert "launching" in done.stdout  # it got past the launcher's checks to the workers
    assert not list(out.glob("news-*")), list(out.iterdir())
