"""`--gpus 2 --resume` on a CPU: two gloo processes restore a checkpoint (the optimizer state used to be mapped
to `cpu:0`, which torch.load cannot restore to) and finish the run with whole-run metrics."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["profile=cpu", "train.checkpoint_steps=1", "train.eval_steps=null", "data.val_size=0",
            "model.max_seq_length=48", "train.batch_size=2", "lora.target_modules=[q_proj]",
            f"train.output_dir={out}"]
    return subprocess.run([sys.executable, "-m", "trainer", "train", "medical", *args, *extra], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=900)


def test_two_cpu_processes_resume_a_checkpoint(tmp_path):
    first = train(tmp_path, "train.max_steps=2", "--gpus", "2")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    (run_dir,) = tmp_path.glob("medical-*")
    (run_dir / "COMPLETE").unlink()  # as if it had stopped after its last checkpoint
    second = train(tmp_path, "train.max_steps=3", "--gpus", "2", "--resume")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "train.max_steps (was 2, now 3)" in second.stdout
    state = json.loads((run_dir / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["processes"] == 2
    assert metrics["input_tokens"] == max(h.get("num_tokens", 0) for h in state["log_history"])
