"""`python -m bench scaling`: the steady-state rate from train.log, efficiency, and a real 1-vs-2-process run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scaling import efficiencies, parse_cases, steady_rate

ROOT = Path(__file__).resolve().parents[2]


def write_log(path: Path, elapsed: list[float], per_step: int) -> Path:
    """A train.log as ProgressBar writes it: cumulative rates since training began, one line per step."""
    lines = ["loading the model", "run folder: x"]
    for step, seconds in enumerate(elapsed, start=1):
        done = step * per_step
        lines.append(json.dumps({"step": step, "loss": 1.0, "trained_tokens_per_s": done / seconds,
                                 "tokens_per_s": 2 * done / seconds, "elapsed_s": seconds}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_steady_rate_leaves_out_the_slow_first_steps(tmp_path):
    # the first step takes 10 s (compilation), every later one 1 s, 100 trained tokens each
    log = write_log(tmp_path / "train.log", [10.0, 11.0, 12.0, 13.0, 14.0], per_step=100)
    steady = steady_rate(log, warmup=1)
    assert steady["trained_tokens_per_s"] == pytest.approx(100.0)
    assert steady["tokens_per_s"] == pytest.approx(200.0)
    assert steady["step_s"] == pytest.approx(1.0) and steady["timed_steps"] == 4
    assert steady_rate(log, warmup=0)["trained_tokens_per_s"] == pytest.approx(500 / 14, rel=1e-3)


def test_steady_rate_needs_steps_after_the_warm_up(tmp_path):
    log = write_log(tmp_path / "train.log", [10.0, 11.0], per_step=100)
    with pytest.raises(ValueError, match="no steps after the 2 warm-up steps"):
        steady_rate(log, warmup=2)


def test_efficiency_is_against_the_same_case_on_one_gpu():
    runs = [{"shape": "s", "method": "lora", "strategy": "ddp", "gpus": 1, "trained_tokens_per_s": 100.0},
            {"shape": "s", "method": "lora", "strategy": "ddp", "gpus": 2, "trained_tokens_per_s": 180.0},
            {"shape": "s", "method": "full", "strategy": "zero2", "gpus": 2, "trained_tokens_per_s": 150.0}]
    efficiencies(runs)
    assert runs[1]["speedup"] == 1.8 and runs[1]["efficiency"] == 0.9
    assert "efficiency" not in runs[2]  # no 1-GPU run of that case to compare with


def test_cases_are_shape_method_strategy():
    assert parse_cases("qwen-7b:lora:ddp, tiny:full:zero2") == [("qwen-7b", "lora", "ddp"),
                                                                 ("tiny", "full", "zero2")]
    with pytest.raises(ValueError, match="shape:method:strategy"):
        parse_cases("qwen-7b:lora")


@pytest.mark.integration
def test_two_processes_train_twice_the_rows_of_one(tmp_path):
    out = tmp_path / "scaling.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "scaling", "--cases", "tiny:lora:ddp", "--gpus", "1,2", "--steps", "3",
         "--warmup", "1", "--no-4bit", "--work", str(tmp_path / "work"), "--out", str(out), "--set",
         "train.packing=false", "model.max_seq_length=160", "train.batch_size=2", "train.gradient_accumulation=1",
         "train.gradient_checkpointing=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    one, two = json.loads(out.read_text())["runs"]
    assert (one["processes"], two["processes"]) == (1, 2)
    # the per-process batch is fixed, so the global batch (and the trained tokens of the run) doubles
    assert two["trained_tokens"] == pytest.approx(2 * one["trained_tokens"], rel=0.15)
    assert two["timed_steps"] == one["timed_steps"] == 3
    assert two["efficiency"] == pytest.approx(two["trained_tokens_per_s"] / (2 * one["trained_tokens_per_s"]),
                                              abs=1e-3)
    assert "| tiny | lora | ddp | 2 |" in done.stdout
