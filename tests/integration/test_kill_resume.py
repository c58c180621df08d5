"""The README's crash recovery, for real: `make train` is killed (SIGKILL, like a power cut) after a checkpoint,
and `make train ... RESUME=1` finishes the same run folder. Small settings keep it short: the tiny model, LoRA on
q_proj only, short rows, a checkpoint every step."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4


def make_train(out: Path, resume: bool) -> subprocess.Popen:
    args = (f"train.max_steps={STEPS} train.checkpoint_steps=1 train.keep_checkpoints=2 train.eval_steps=null "
            f"data.val_size=0 model.max_seq_length=48 train.batch_size=2 lora.target_modules=[q_proj] "
            f"train.output_dir={out}")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    env["PYTHONPATH"] = str(ROOT)
    cmd = ["make", "-s", "-C", str(ROOT), "-o", ".venv/.core", f"PY={sys.executable}", "train",
           "RECIPE=medical", "GPU=cpu", f"ARGS={args}", *(["RESUME=1"] if resume else [])]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: the kill reaches make's children


def test_killed_make_train_resumes_through_make(tmp_path):
    first = make_train(tmp_path, resume=False)
    deadline = time.time() + 600
    checkpoint = None
    while time.time() < deadline and first.poll() is None:
        found = sorted(tmp_path.glob("medical-*/checkpoints/checkpoint-*/totals.json"))
        if found:
            checkpoint = found[0].parent
            break
        time.sleep(0.5)
    assert checkpoint is not None, f"no checkpoint before the deadline or the run ended: {first.poll()}"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    (run_dir,) = tmp_path.glob("medical-*")
    assert not (run_dir / "COMPLETE").exists()
    killed_at = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    assert killed_at < STEPS

    second = make_train(tmp_path, resume=True)
    output, _ = second.communicate(timeout=900)
    assert second.returncode == 0, output[-3000:]
    assert "resuming" in output and [p.name for p in tmp_path.glob("medical-*")] == [run_dir.name]
    assert (run_dir / "COMPLETE").is_file()
    state = json.loads((run_dir / "trainer_state.json").read_text())
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps == list(range(1, STEPS + 1)), steps  # each step trained once: none lost, none repeated
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == STEPS
    # TRL counts input tokens on its own; the run's count must agree with it over both parts of the run
    assert metrics["input_tokens"] == max(h.get("num_tokens", 0) for h in state["log_history"])
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert metrics["train_loss_mean"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
