"""The parent process: build shapes, make the rows, launch one subprocess per variant, collect, write, print.

The parent never touches the GPU (no CUDA context of its own), so each child starts with a fresh context and its
peak memory is its own. Results are written after every child, so a run stopped by a time limit keeps what it
measured. `--budget-s` skips (and records as skipped) whatever would not finish in time.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import measure
from bench.shapes import get_shape, is_built, shape_dir, shape_facts, tokenizer_path
from bench.variants import ROOT, expand
from bench.workload import SPECS, make_rows, rows_needed, save_rows, statistics

GUESS_S = {"tiny": 40, "qwen-1.5b": 70, "qwen-7b": 100, "llama-8b": 110}
"""First guess of one child's wall time (load, warm-up, timed steps), before any child of that shape has run."""


class Run:
    def __init__(self, args, command: str):
        self.args, self.started = args, time.time()
        self.work = Path(args.work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.cuda = _cuda_available()
        self.report: dict[str, Any] = {
            "command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
            "mfu_formula": measure.MFU_FORMULA, "peak_bf16_flops": None, "card": None, "versions": None,
            "settings": {"steps": args.steps, "warmup": args.warmup, "quantize": self.quantize,
                         "workload": args.workload, "work": str(self.work)},
            "shapes": {}, "results": [], "packing_checks": []}
        self.walls: dict[str, list[float]] = {}

    @property
    def quantize(self) -> bool:
        return not self.args.no_4bit

    def left(self) -> float:
        return self.args.budget_s - (time.time() - self.started) if self.args.budget_s else float("inf")

    def save(self) -> None:
        if self.args.logs_tgz and (self.work / "logs").is_dir():
            import tarfile

            with tarfile.open(self.args.logs_tgz, "w:gz") as tar:
                tar.add(str(self.work / "logs"), arcname="logs")
        if self.args.out:
            path = Path(self.args.out)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(self.report, indent=2, default=str) + "\n", encoding="utf-8")
            os.replace(tmp, path)

    def say(self, text: str) -> None:
        print(f"[bench {time.time() - self.started:6.0f}s] {text}", flush=True)


def run(args, command: str) -> int:
    r = Run(args, command)
    variants = expand(args.variants)
    ready = list(ready_shapes(r, variants))
    for name, path, rows_path in ready if args.packing_check else []:
        for backend in [b.strip() for b in args.packing_check.split(",") if b.strip()]:
            packing_check(r, name, path, rows_path, backend, None)
    # shape order: every variant of the first shape, then the next; variant order: each variant on every shape
    # first, so a tight --budget-s drops the last variants everywhere rather than the last shape entirely.
    pairs = ([(s, v) for s in ready for v in variants] if args.order == "shape"
             else [(s, v) for v in variants for s in ready])
    for (name, path, rows_path), variant in pairs:
        run_variant(r, name, path, rows_path, variant)
    print()
    for name, info in r.report["shapes"].items():
        w = info.get("workload", {})
        if w:
            print(f"{name}: {w['rows']} rows, mean {w['mean_total_tokens']} tokens ({w['mean_trained_tokens']} "
                  f"trained), p50/p90/p99 {w['total_tokens']['p50']}/{w['total_tokens']['p90']}/"
                  f"{w['total_tokens']['p99']}; seed cut at {w['seed_method']['cut_at']} loses "
                  f"{100 * w['seed_method']['share_of_trained_tokens_lost']:.0f}% of trained tokens")
    print_checks(r.report["packing_checks"])
    print(f"card: {r.report['card']}; MFU: {measure.MFU_FORMULA}\n")
    print(measure.table(r.report["results"]))
    return 0 if all(not x.get("error") for x in r.report["results"]) else 1


def check(args, command: str) -> int:
    """`python -m bench packing-check`: the packing check alone, for each shape, backend and attention."""
    r = Run(args, command)
    for name, path, rows_path in ready_shapes(r, []):
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            for attn in [a.strip() for a in args.attn.split(",") if a.strip()] or [None]:
                packing_check(r, name, path, rows_path, backend, attn)
    checks = r.report["packing_checks"]
    return 0 if checks and all(not c.get("error") and c["check"]["verdict"] == "isolated" for c in checks) else 1


def ready_shapes(r: Run, variants):
    """(name, folder, rows file) of each requested shape that could be built here."""
    for name in [s.strip() for s in r.args.shapes.split(",") if s.strip()]:
        shape = get_shape(name)
        if shape.name != "tiny" and not r.cuda and not r.args.allow_cpu_shapes:
            r.say(f"{name}: skipped (random-init real shapes are built on a CUDA GPU)")
            continue
        path = prepare_shape(r, shape)
        if path is not None:
            yield name, path, prepare_rows(r, name, path, variants)


def prepare_shape(r: Run, shape) -> Path | None:
    path = shape_dir(shape.name, r.work)
    info = r.report["shapes"].setdefault(shape.name, {"copies": shape.hub_id, "path": str(path)})
    if not is_built(shape.name, r.work):
        tokenizer = tokenizer_path(shape.family, r.args.tokenizers, r.work)
        r.say(f"{shape.name}: building random-init bf16 weights with the {shape.family} tokenizer")
        started = time.time()
        job = {"kind": "build", "shape": shape.name, "dest": str(path), "tokenizer": str(tokenizer)}
        outcome = child(r, job, f"{shape.name}-build", timeout=max(60.0, min(r.left(), 600.0)))
        info["build_s"] = round(time.time() - started, 1)
        if outcome.get("error"):
            info["error"] = outcome["error"]
            r.say(f"{shape.name}: build failed: {outcome['error']}")
            r.save()
            return None
    info["facts"] = shape_facts(path)
    return path


def prepare_rows(r: Run, name: str, path: Path, variants) -> Path:
    from trainer.config import ModelConfig
    from trainer.model import load_tokenizer

    spec = SPECS[r.args.workload if r.args.workload != "auto" else ("tiny" if name == "tiny" else "medical")]
    tokenizer = load_tokenizer(ModelConfig(base=str(path)))
    per_step = max((v.batch_size * v.grad_accum for v in variants), default=8)
    n = r.args.rows or rows_needed(r.args.warmup + r.args.steps, per_step)
    rows = make_rows(spec, n, tokenizer)
    rows_path = r.work / "rows" / f"{name}-{spec.name}-{n}.json"
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    save_rows(rows, spec, rows_path)
    r.report["shapes"][name]["workload"] = statistics(rows, spec, tokenizer)
    r.save()
    return rows_path


def run_variant(r: Run, shape: str, path: Path, rows_path: Path, variant) -> None:
    entry: dict[str, Any] = {"shape": shape, "variant": variant.name, "summary": variant.summary}
    guess = max(r.walls.get(shape, [GUESS_S.get(shape, 90)]))
    if variant.cuda_only and not r.cuda:
        entry["error"] = "skipped: needs CUDA"
    elif r.left() < 0.8 * guess:
        entry["error"] = f"skipped: {r.left():.0f} s of budget left, about {guess:.0f} s needed"
    else:
        job = {"kind": "variant", "shape": shape, "shape_dir": str(path), "variant": variant.name,
               "rows": str(rows_path), "steps": r.args.steps, "warmup": r.args.warmup, "quantize": r.quantize,
               "work": str(r.work), "batch_size": r.args.batch_size, "grad_accum": r.args.grad_accum}
        started = time.time()
        outcome = child(r, job, f"{shape}-{variant.name}",
                        timeout=min(r.args.child_timeout, max(30.0, r.left())))
        entry["wall_s"] = round(time.time() - started, 1)
        r.walls.setdefault(shape, []).append(entry["wall_s"])
        entry.update(outcome)
        if not outcome.get("error"):
            r.report["card"] = outcome.get("card")
            r.report["versions"] = outcome.get("versions")
            peak = r.args.peak_tflops * 1e12 if r.args.peak_tflops else measure.peak_flops(outcome.get("card"))
            r.report["peak_bf16_flops"] = peak
            entry["derived"] = measure.derive(outcome["result"], outcome["facts"], peak)
    r.report["results"].append(entry)
    r.save()
    d = entry.get("derived") or {}
    if d:
        res = entry["result"]
        memory = f", peak {res['peak_gib']:.2f} GiB" if "peak_gib" in res else ""
        r.say(f"{shape}/{variant.name}: {d['tokens_per_s']:,.0f} tok/s, {d['trained_tokens_per_s']:,.0f} trained "
              f"tok/s{memory} ({entry['wall_s']:.0f} s)")
    else:
        r.say(f"{shape}/{variant.name}: {(entry.get('error') or 'no timing').splitlines()[0][:200]}")


def packing_check(r: Run, shape: str, path: Path, rows_path: Path, backend: str, attn: str | None) -> None:
    entry: dict[str, Any] = {"shape": shape, "backend": backend, "attn": attn}
    if backend == "unsloth" and not r.cuda:
        entry["error"] = "skipped: Unsloth needs CUDA"
    else:
        job = {"kind": "packing-check", "shape": shape, "shape_dir": str(path), "rows": str(rows_path),
               "backend": backend, "attn": attn, "quantize": r.quantize, "work": str(r.work),
               "n_rows": r.args.check_rows}
        entry.update(child(r, job, f"{shape}-check-{backend}-{attn or 'default'}",
                           timeout=min(r.args.child_timeout, max(30.0, r.left()))))
    r.report["packing_checks"].append(entry)
    r.save()
    print_checks([entry])


def print_checks(checks: list[dict]) -> None:
    for c in checks:
        head = f"packing check {c['shape']}/{c['backend']}/{c.get('attn_implementation') or c.get('attn')}"
        if c.get("error"):
            print(f"{head}: {c['error'].splitlines()[0][:200]}", flush=True)
            continue
        v = c["check"]
        print(f"{head}: {v['verdict']} (max |packed - alone| {v['max_packed_diff']:.2e}, leaky control "
              f"{v['max_leaky_diff']:.2e}, tolerance {v['tolerance']:.2e}; batch {','.join(c['batch_keys'])} "
              f"from {c['batch_source']})", flush=True)


def child(r: Run, job: dict, label: str, timeout: float) -> dict[str, Any]:
    """Run `python -m bench _child JOB` in a new process group; its output goes to work/logs/<label>.log."""
    logs, jobs = r.work / "logs", r.work / "jobs"
    logs.mkdir(exist_ok=True)
    jobs.mkdir(exist_ok=True)
    job_path, result_path, log_path = jobs / f"{label}.json", jobs / f"{label}.result.json", logs / f"{label}.log"
    result_path.unlink(missing_ok=True)
    job_path.write_text(json.dumps(dict(job, result_path=str(result_path))), encoding="utf-8")
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen([sys.executable, "-m", "bench", "_child", str(job_path)], cwd=str(r.work),
                                   stdout=log, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return {"error": f"timeout after {timeout:.0f} s", "log_tail": log_tail(log_path)}
    if not result_path.is_file():
        return {"error": f"child exited with {process.returncode} and no result", "log_tail": log_tail(log_path)}
    outcome = json.loads(result_path.read_text(encoding="utf-8"))
    if outcome.get("error"):
        outcome["log_tail"] = log_tail(log_path)
    return outcome


def child_env() -> dict[str, str]:
    """This environment, unbuffered, with the project first on PYTHONPATH (children run `-m bench`/`-m trainer`)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    return env


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def merge(paths: list[str], out: str | None) -> int:
    """Combine the JSON of several runs (e.g. the two H100 calls) into one report and print one table."""
    reports = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    merged = dict(reports[0], command=[r["command"] for r in reports], date=[r["date"] for r in reports],
                  results=[x for r in reports for x in r["results"]],
                  packing_checks=[x for r in reports for x in r["packing_checks"]],
                  shapes={k: v for r in reports for k, v in r["shapes"].items()})
    if out:
        Path(out).write_text(json.dumps(merged, indent=2, default=str) + "\n", encoding="utf-8")
    print_checks(merged["packing_checks"])
    print(measure.table(merged["results"]))
    return 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
