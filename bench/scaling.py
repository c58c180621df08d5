"""`python -m bench scaling`: one recipe on 1 and on N GPUs through the product's own `--gpus N`; scaling efficiency.

Each run is `python -m trainer train medical ... --gpus N` (what `make train GPUS=N` runs) on a shape's random
weights, with the bench workload written as a JSONL file in the medical recipe's format. Throughput comes from the
run's train.log, which has cumulative trained tokens/s and elapsed seconds at every step: the rate between the end of
the warm-up steps and the last step, so loading, compilation and DeepSpeed's start-up are left out. Peak memory is
rank 0's (metrics.json). The per-GPU batch is the same for every N, so the global batch grows with N:
    efficiency(N) = trained tokens/s on N GPUs / (N * trained tokens/s on 1 GPU)
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.runner import Run, child_env, log_tail, ready_shapes
from bench.variants import ROOT
from bench.workload import load_rows

GUESS_S = {"tiny": 60, "qwen-1.5b": 150, "qwen-7b": 110, "llama-8b": 120}
"""One run's wall time with 8 steps, start-up included (two H200s: 1.5B ZeRO-2 108-142 s, the first compiling
DeepSpeed's CPU Adam; 7B DDP 82-97 s), for skipping what the budget cannot fit."""


def parse_cases(text: str) -> list[tuple[str, str, str]]:
    """`qwen-1.5b:full:zero2,qwen-7b:lora:ddp` -> [(shape, method, strategy), ...]."""
    cases = []
    for item in [c.strip() for c in text.split(",") if c.strip()]:
        parts = item.split(":")
        if len(parts) != 3:
            raise ValueError(f"case {item!r}: write shape:method:strategy, e.g. qwen-7b:lora:ddp")
        cases.append((parts[0], parts[1], parts[2]))
    return cases


def write_medical_jsonl(rows_path: Path, dest: Path) -> Path:
    """The bench rows in the medical recipe's columns (Question, Complex_CoT, Response)."""
    _, rows = load_rows(rows_path)
    with dest.open("w", encoding="utf-8") as out:
        for r in rows:
            out.write(json.dumps({"Question": r["question"], "Complex_CoT": r["reasoning"],
                                  "Response": r["answer"]}, ensure_ascii=False) + "\n")
    return dest


def train_overrides(shape_dir: Path, data: Path, method: str, strategy: str, quantize: bool, steps: int,
                    output_dir: Path, extra: list[str]) -> list[str]:
    quantization = "4bit" if quantize and method == "lora" else "none"
    return ["profile=none", f"model.base={shape_dir}", f"model.quantization={quantization}",
            f"data.path={data}", "data.name=null", "data.val_size=0", f"train.method={method}",
            f"train.strategy={strategy}", f"train.max_steps={steps}", "train.eval_steps=null",
            "train.checkpoint_steps=null", "train.logging_steps=1", f"train.output_dir={output_dir}", *extra]


def steady_rate(log_path: Path, warmup: int) -> dict[str, float]:
    """Trained and input tokens/s between the log line of step `warmup` and the last step's."""
    lines = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines()
             if line.startswith("{") and '"elapsed_s"' in line]
    if not lines:
        raise ValueError(f"{log_path}: no step lines with elapsed_s")
    start = next((x for x in lines if x["step"] >= warmup), lines[0]) if warmup > 0 else None
    end = lines[-1]
    if start is end:
        raise ValueError(f"{log_path}: no steps after the {warmup} warm-up steps")

    def at(line, key):  # cumulative count at that line; before the first step nothing was counted
        return line[key] * line["elapsed_s"] if line is not None else 0.0

    seconds = end["elapsed_s"] - (start["elapsed_s"] if start else 0.0)
    steps = end["step"] - (start["step"] if start else 0)
    return {"trained_tokens_per_s": round((at(end, "trained_tokens_per_s") - at(start, "trained_tokens_per_s"))
                                          / seconds, 1),
            "tokens_per_s": round((at(end, "tokens_per_s") - at(start, "tokens_per_s")) / seconds, 1),
            "step_s": round(seconds / steps, 3), "timed_steps": steps}


def run_one(r: Run, case: tuple[str, str, str], shape_dir: Path, data: Path, gpus: int) -> dict[str, Any]:
    shape, method, strategy = case
    label = f"{shape}-{method}-{strategy}-{gpus}"
    output_dir = r.work / "scaling" / label
    entry: dict[str, Any] = {"shape": shape, "method": method, "strategy": strategy, "gpus": gpus}
    guess = GUESS_S.get(shape, 200)
    if r.left() < 0.8 * guess:
        return dict(entry, error=f"skipped: {r.left():.0f} s of budget left, about {guess} s needed")
    overrides = train_overrides(shape_dir, data, method, strategy, r.quantize, r.args.warmup + r.args.steps,
                                output_dir, r.args.set or [])
    command = [sys.executable, "-m", "trainer", "train", "medical", *overrides, "--gpus", str(gpus)]
    entry["command"] = " ".join(command[1:])
    log_path = r.work / "logs" / f"scaling-{label}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    code = _run(command, log_path, timeout=min(r.args.child_timeout, max(30.0, r.left())))
    entry["wall_s"] = round(time.time() - started, 1)
    runs = sorted(output_dir.glob("medical-*"))
    if code != 0 or not runs or not (runs[-1] / "metrics.json").is_file():
        return dict(entry, error=f"exit {code}", log_tail=log_tail(log_path))
    metrics = json.loads((runs[-1] / "metrics.json").read_text(encoding="utf-8"))
    entry.update(steady_rate(runs[-1] / "train.log", r.args.warmup))
    entry.update({k: metrics.get(k) for k in ("processes", "engine", "backend", "device", "peak_gpu_memory_gib",
                                               "first_loss", "final_loss", "trained_tokens")})
    return entry


def _run(command: list[str], log_path: Path, timeout: float) -> int:
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT, env=child_env(),
                                   start_new_session=True)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return -9


def efficiencies(runs: list[dict[str, Any]]) -> None:
    """Adds `efficiency` (and `speedup`) to each multi-GPU run whose case has a 1-GPU run."""
    ones = {(x["shape"], x["method"], x["strategy"]): x for x in runs if x["gpus"] == 1 and not x.get("error")}
    for x in runs:
        one = ones.get((x["shape"], x["method"], x["strategy"]))
        if one and not x.get("error") and x["gpus"] > 1:
            x["speedup"] = round(x["trained_tokens_per_s"] / one["trained_tokens_per_s"], 3)
            x["efficiency"] = round(x["speedup"] / x["gpus"], 3)


def table(runs: list[dict[str, Any]]) -> str:
    columns = ["shape", "method", "strategy", "GPUs", "trained tok/s", "tok/s", "step s", "peak GiB (rank 0)",
               "speedup", "efficiency"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for x in runs:
        if x.get("error"):
            why = x["error"].splitlines()[0][:80]
            lines.append(f"| {x['shape']} | {x['method']} | {x['strategy']} | {x['gpus']} | failed: {why} |"
                         " | | | | |")
            continue
        peak = x.get("peak_gpu_memory_gib")
        lines.append(f"| {x['shape']} | {x['method']} | {x['strategy']} | {x['gpus']} | "
                     f"{x['trained_tokens_per_s']:,.0f} | {x['tokens_per_s']:,.0f} | {x['step_s']:.2f} | "
                     f"{peak if peak is not None else '-'} | {x.get('speedup', '-')} | {x.get('efficiency', '-')} |")
    return "\n".join(lines)


def scaling(args, command: str) -> int:
    from bench.measure import versions

    gpus = [int(n) for n in args.gpus.split(",")]
    # rows for every step on the most GPUs, about three rows to a packed 2,048-token sequence, per-GPU batch 8
    args.rows = args.rows or (args.warmup + args.steps + 2) * 8 * max(gpus) * 3
    r = Run(args, command)
    r.report.update(runs=[], versions=versions(), gpus=gpus, cases=args.cases,
                    efficiency_formula="trained tok/s on N GPUs / (N * trained tok/s on 1 GPU), same per-GPU batch")
    cases = parse_cases(args.cases)
    r.args.shapes = ",".join(dict.fromkeys(shape for shape, _, _ in cases))  # each shape built once
    ready = {name: (path, rows) for name, path, rows in ready_shapes(r, [])}
    for case in [c for c in cases if c[0] in ready]:
        shape_dir, rows_path = ready[case[0]]
        data = write_medical_jsonl(rows_path, rows_path.with_suffix(".medical.jsonl"))
        for n in gpus:
            entry = run_one(r, case, shape_dir, data, n)
            r.report["runs"].append(entry)
            efficiencies(r.report["runs"])
            r.save()
            r.say(f"{case[0]} {case[1]} {case[2]} x{n}: " + (entry["error"].splitlines()[0] if entry.get("error")
                  else f"{entry['trained_tokens_per_s']:,.0f} trained tok/s, {entry['step_s']:.2f} s/step, "
                       f"peak {entry.get('peak_gpu_memory_gib')} GiB ({entry['wall_s']:.0f} s)"))
    print("\n" + table(r.report["runs"]))
    return 0 if r.report["runs"] and all(not x.get("error") for x in r.report["runs"]) else 1
