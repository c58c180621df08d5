"""Crash safety: a run killed with SIGKILL resumes from its checkpoint and ends where an uninterrupted run ends."""
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
ARGS = ["news", "profile=cpu", "train.max_steps=16", "train.checkpoint_steps=4", "train.eval_steps=null",
        "train.keep_checkpoints=2"]


def trainer(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "trainer", "train", *ARGS, f"train.output_dir={out}", *extra],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def final_loss(out: Path) -> float:
    (run,) = out.glob("news-*")
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h][-1]


def test_sigkill_midway_then_resume_matches_an_uninterrupted_run(tmp_path):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    process = trainer(killed)
    deadline = time.time() + 600
    while not list(killed.glob("news-*/checkpoints/checkpoint-8/trainer_state.json")):
        assert process.poll() is None, process.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (run,) = killed.glob("news-*")
    assert not (run / "COMPLETE").exists() and not (run / "adapter").exists()

    refused = subprocess.run([sys.executable, "-m", "trainer", "eval", str(run)], cwd=ROOT, capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert refused.returncode == 2 and "did not finish" in refused.stderr

    resumed = trainer(killed, "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert (run / "COMPLETE").exists() and "resuming" in (run / "train.log").read_text()
    assert trainer(whole).wait(timeout=600) == 0
    assert final_loss(killed) == pytest.approx(final_loss(whole), abs=1e-4)


def test_resume_with_nothing_to_resume_or_a_changed_recipe(tmp_path, capsys):
    from trainer.cli import main

    assert main(["train", *ARGS, f"train.output_dir={tmp_path}", "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    stale = tmp_path / "news-20000101-000000"
    (stale / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (stale / "checkpoints" / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4}')
    from trainer.hardware import Hardware
    from trainer.recipe import find_recipe, load_recipe, save_resolved

    recipe = load_recipe(find_recipe("news", ROOT / "recipes"), [*ARGS[1:], f"train.output_dir={tmp_path}"],
                         Hardware(False))
    save_resolved(recipe, stale / "config.yaml")
    # the learning rate and the step count may change on a resume; the adapter's shape may not
    assert main(["train", *ARGS, f"train.output_dir={tmp_path}", "lora.rank=8", "--resume"]) == 2
    assert "lora.rank (was 32, now 8)" in capsys.readouterr().err
