"""On two or more CUDA GPUs: the sharded strategies (FSDP, DeepSpeed ZeRO-2/3) end where one process ends.

A full fine-tune of the tiny model, in fp32 so that only the order of reductions differs: 2 processes with batch 4
each against 1 process with batch 8 and the same optimizer (AdamW: DeepSpeed's CPU Adam under ZeRO). Run on a
multi-GPU test machine (`pytest -m gpu tests/gpu`); skipped with fewer than two GPUs or without DeepSpeed.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer.fixtures.tiny_qwen import tiny_model_path

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs"),
              pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed")]

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["news", "profile=cpu", "train.method=full", "model.quantization=none", "model.backend=transformers",
        "model.dtype=float32", "train.optimizer=adamw_torch", "train.max_steps=3", "train.gradient_accumulation=1",
        "train.eval_steps=null", "data.val_size=0"]


def train(out: Path, batch: int, *extra: str) -> Path:
    done = subprocess.run([sys.executable, "-m", "trainer", "train", *ARGS, f"train.batch_size={batch}",
                           f"train.output_dir={out}", *extra], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}, timeout=400, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run,) = out.glob("news-*")
    return run


def weights(run: Path) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(str(run / "adapter" / "model.safetensors")).items()}


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("one"), 8)


@pytest.mark.parametrize("strategy", ["fsdp", "zero2", "zero3"])
def test_sharded_full_fine_tune_on_two_gpus_equals_one(tmp_path, one_process, strategy):
    two = train(tmp_path, 4, f"train.strategy={strategy}", "--gpus", "2")
    metrics = json.loads((two / "metrics.json").read_text())
    assert (metrics["engine"], metrics["processes"]) == ("deepspeed" if strategy != "fsdp" else "fsdp", 2)

    base = load_file(str(tiny_model_path() / "model.safetensors"))
    sharded, whole = weights(two), weights(one_process)
    moved = largest_difference(whole, {k: v.float() for k, v in base.items() if k in whole})
    assert moved > 1e-3  # training really changed the weights
    assert largest_difference(sharded, whole) < moved / 100, f"{strategy}: 2 GPUs vs 1 (moved {moved})"
