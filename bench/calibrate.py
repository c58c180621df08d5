"""Measure training peaks and speed under simulated card memory, next to the planner's prediction.

`python -m bench.calibrate run CASE [CASE ...] --out FILE` runs each case in its own process with the caching
allocator capped at the case's GiB (bench/device/capsite/sitecustomize.py reads CAP_GIB), so an allocation past
the cap fails as on a real card of that size. A case is `shape:cap_gib:variant:batch:accum:length:ckpt:rank`,
optionally followed by `:keep` (layers kept under checkpointing) and `:row` (single:CARD's row length):
    variant  project   the product's own calls on Unsloth (recipes/medical.yaml, packing on), these settings
             bare      bare Unsloth as its notebooks set it up, with `packing=True` in SFTConfig (loss on every
                       token, gradient checkpointing "unsloth"): the best a bare-Unsloth user gets with one flag
             plan:CARD the product with the settings `trainer.plan` chooses for CARD (batch, accum, length and
                       ckpt of the case are ignored)
             single:CARD the product on single rows of exactly `row` tokens (default: `length`; packing off),
                       checkpointing as `trainer.plan` chooses for CARD: does one long row train on that card,
                       and what do rows much shorter than `length` (labels, headlines) peak at?
    ckpt     1 or 0 (gradient checkpointing)
Rows: the bench's synthetic medical-reasoning workload (bench/workload.py). Each result holds the measured peak
(`torch.cuda.max_memory_allocated`), the memory after loading, tokens/s and the planner's predicted peak.
`python -m bench.calibrate table FILE...` prints predicted against measured.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CAPSITE = Path(__file__).resolve().parent / "device" / "capsite"


@dataclasses.dataclass(frozen=True)
class Case:
    shape: str
    cap_gib: float
    variant: str
    batch: int
    accum: int
    length: int
    ckpt: bool
    rank: int
    keep: int = 0
    """Layers that keep their activations under checkpointing (train.checkpoint_keep_layers)."""
    row: int = 0
    """single:CARD: every row has exactly this many tokens (0: `length`)."""

    @classmethod
    def parse(cls, text: str) -> Case:
        parts = text.split(":")
        if parts[2] in ("plan", "single"):  # plan:CARD and single:CARD take two fields
            parts[2:4] = [f"{parts[2]}:{parts[3]}"]
        shape, cap, variant, batch, accum, length, ckpt, rank, *extra = parts
        keep, row = (list(map(int, extra)) + [0, 0])[:2]
        return cls(shape, float(cap), variant, int(batch), int(accum), int(length), ckpt == "1", int(rank), keep, row)

    @property
    def label(self) -> str:
        return (f"{self.shape}-cap{self.cap_gib:g}-{self.variant.replace(':', '')}-{self.batch}x{self.accum}-"
                f"L{self.length}-{'ckpt' if self.ckpt else 'nockpt'}{self.keep or ''}-r{self.rank}"
                f"{f'-row{self.row}' if self.row else ''}")


def planned(case: Case, base: str) -> tuple[Case, dict]:
    """The case with the planner's settings (for `plan:CARD`) and the planner's prediction of its peak."""
    from trainer.plan import Settings, Setup, arch_for, choose, make_plan, parse_card

    setup = Setup(arch_for(base)[0], rank=case.rank)
    if case.variant.startswith(("plan:", "single:")):
        card, gb = parse_card(case.variant.split(":", 1)[1])
        packing = case.variant.startswith("plan:")
        plan = choose(setup, Settings(case.batch, case.accum, case.length, True), packing, card, gb)
        t = plan.settings
        case = dataclasses.replace(case, batch=t.batch_size, accum=t.gradient_accumulation, length=t.max_seq_length,
                                   ckpt=t.gradient_checkpointing, keep=t.checkpoint_keep_layers)
        if 0 < case.row < case.length:  # the peak for these short rows (trainer.plan.for_rows)
            plan = make_plan(setup, dataclasses.replace(t, longest_row=case.row), card, gb)
    else:
        plan = make_plan(setup, Settings(case.batch, case.accum, case.length, case.ckpt, case.keep))
    return case, plan.as_json()


# --- parent -------------------------------------------------------------------------------------------------------

def run(args) -> int:
    from bench.shapes import get_shape, is_built, shape_dir, tokenizer_path

    work = Path(args.work).resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    results: list[dict] = json.loads(out.read_text()) if out.is_file() else []
    started = time.time()
    for text in args.cases:
        case = Case.parse(text)
        shape = get_shape(case.shape)
        case, prediction = planned(case, shape.hub_id if shape.name != "tiny" else "tiny")
        entry: dict[str, Any] = {"case": dataclasses.asdict(case), "label": case.label, "predicted": prediction}
        left = args.budget_s - (time.time() - started) if args.budget_s else 1e9
        if left < 40:
            entry["error"] = f"skipped: {left:.0f} s of budget left"
        else:
            path = shape_dir(case.shape, work)
            if not is_built(case.shape, work):
                say(started, f"building {case.shape}")
                built = child(work, {"kind": "build", "shape": case.shape, "dest": str(path), "tokenizer":
                                     str(tokenizer_path(shape.family, args.tokenizers, work))},
                              f"build-{case.shape}", None, 600)
                if built.get("error"):
                    entry["error"] = "build failed: " + built["error"]
            if "error" not in entry:
                single = case.variant.startswith("single:")
                rows = rows_file(work, case.shape, path, (case.row or case.length) if single else 0)
                job = {"kind": "calibrate", "case": dataclasses.asdict(case), "shape_dir": str(path),
                       "rows": str(rows), "steps": args.steps, "warmup": args.warmup, "work": str(work)}
                begun = time.time()
                entry.update(child(work, job, case.label, case.cap_gib, min(args.child_timeout, left)))
                entry["wall_s"] = round(time.time() - begun, 1)
        results.append(entry)
        out.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
        say(started, line(entry))
    return 0


def rows_file(work: Path, shape: str, path: Path, single_length: int = 0) -> Path:
    """The workload's rows for this shape; with `single_length`, rows of exactly that many tokens."""
    from bench.workload import MEDICAL, TINY, long_rows, make_rows, save_rows
    from trainer.config import ModelConfig
    from trainer.model import load_tokenizer

    rows_path = work / "rows" / f"calibrate-{shape}{f'-single{single_length}' if single_length else ''}.json"
    if not rows_path.is_file():
        rows_path.parent.mkdir(parents=True, exist_ok=True)
        spec, n = (TINY, 64) if shape == "tiny" else (MEDICAL, 700)
        if single_length:
            spec, n = long_rows(single_length), 48
        save_rows(make_rows(spec, n, load_tokenizer(ModelConfig(base=str(path)))), spec, rows_path)
    return rows_path


def child(work: Path, job: dict, label: str, cap_gib: float | None, timeout: float) -> dict[str, Any]:
    """One process per case, its allocator capped (CAP_GIB), its log in work/logs/<label>.log."""
    jobs = work / "jobs"
    jobs.mkdir(exist_ok=True)
    job_path, result_path = jobs / f"{label}.json", jobs / f"{label}.result.json"
    log_path = work / "logs" / f"{label}.log"
    result_path.unlink(missing_ok=True)
    job_path.write_text(json.dumps(dict(job, result_path=str(result_path))), encoding="utf-8")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    inherited = filter(None, env.get("PYTHONPATH", "").split(os.pathsep))
    env["PYTHONPATH"] = os.pathsep.join([str(CAPSITE), str(ROOT), *inherited])
    if cap_gib:
        env["CAP_GIB"] = str(cap_gib)
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen([sys.executable, "-m", "bench.calibrate", "_child", str(job_path)], cwd=str(work),
                                   stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return {"error": f"timeout after {timeout:.0f} s", "log_tail": tail(log_path)}
    if not result_path.is_file():
        return {"error": f"exited with {process.returncode} and no result", "log_tail": tail(log_path)}
    outcome = json.loads(result_path.read_text(encoding="utf-8"))
    if outcome.get("error"):
        outcome["log_tail"] = tail(log_path)
    return outcome


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def say(started: float, text: str) -> None:
    print(f"[calibrate {time.time() - started:5.0f}s] {text}", flush=True)


def line(entry: dict) -> str:
    p = entry["predicted"]["peak_gib"]
    if entry.get("error"):
        oom = " (OOM)" if "OutOfMemory" in entry["error"] else ""
        return f"{entry['label']}: predicted {p:.2f} GiB; failed{oom}: {entry['error'].splitlines()[0][:160]}"
    r = entry["result"]
    return (f"{entry['label']}: predicted {p:.2f} GiB, measured {r['peak_gib']:.2f} (loaded {r['loaded_gib']:.2f}), "
            f"{r['tokens_per_s']:,.0f} tok/s, {r['trained_tokens_per_s']:,.0f} trained tok/s ({entry['wall_s']:.0f} s)")


# --- child --------------------------------------------------------------------------------------------------------

def child_main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    try:
        if job["kind"] == "build":
            from bench.child import build_job

            body, code = build_job(job), 0
        else:
            body, code = measure_case(job), 0
    except BaseException as exc:  # noqa: BLE001  (reported to the parent, which goes on)
        body, code = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}, 1
    from bench.measure import versions

    body["versions"] = versions()
    Path(job["result_path"]).write_text(json.dumps(body, indent=2, default=str), encoding="utf-8")
    return code


def measure_case(job: dict) -> dict[str, Any]:
    case = Case(**job["case"])
    import torch

    if torch.cuda.is_available():  # Unsloth before transformers, TRL and PEFT, as the notebooks and the CLI do
        import unsloth  # noqa: F401

    from bench.measure import derive, make_meter, peak_flops
    from bench.shapes import shape_facts
    from bench.workload import load_rows

    spec, rows = load_rows(Path(job["rows"]))
    spec = dataclasses.replace(spec, max_length=case.length)
    run_dir = Path(job["work"]) / "runs" / "calibrate"
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    build = bare_trainer if case.variant == "bare" else project_trainer
    trainer, info = build(job, case, spec, rows, run_dir)
    cuda = torch.cuda.is_available()
    loaded = torch.cuda.memory_allocated() if cuda else 0
    meter = make_meter(job["warmup"], job["steps"], cuda)
    meter.attach(trainer)
    trainer.train()
    result = meter.result()
    card = torch.cuda.get_device_name(0) if cuda else "cpu"
    facts = shape_facts(Path(job["shape_dir"]))
    result.update(derive(result, facts, peak_flops(card)))
    result.setdefault("peak_gib", 0.0)
    result["loaded_gib"] = round(loaded / 2**30, 3)
    result["cap_fraction"] = os.environ.get("CAP_GIB")
    return {"result": result, "info": info, "card": card}


def project_trainer(job: dict, case: Case, spec, rows, run_dir: Path):
    from bench.variants import Variant
    from bench.variants import project_trainer as build

    import torch

    cuda = torch.cuda.is_available()  # on a CPU (dry runs with the tiny shape): transformers, 16/32-bit
    packing = not case.variant.startswith("single:")
    variant = Variant("calibrate", "project", "project", "unsloth" if cuda else "transformers", batch_size=case.batch,
                      grad_accum=case.accum, overrides=(
                          f"train.packing={str(packing).lower()}", f"train.gradient_checkpointing={str(case.ckpt).lower()}",
                          f"lora.rank={case.rank}", f"lora.alpha={case.rank}", "train.planner=false",
                          f"train.checkpoint_keep_layers={case.keep}"))
    job = dict(job, quantize=cuda, batch_size=case.batch, grad_accum=case.accum)
    return build(job, variant, spec, rows, run_dir)


def bare_trainer(job: dict, case: Case, spec, rows, run_dir: Path):
    """Bare Unsloth as the notebooks set it up, plus `packing=True` (see the module docstring)."""
    from unsloth import FastLanguageModel  # noqa: I001
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from bench.variants import ALL_LINEAR

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=job["shape_dir"], max_seq_length=case.length, dtype=None, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(
        model, r=case.rank, target_modules=ALL_LINEAR, lora_alpha=case.rank, lora_dropout=0, bias="none",
        use_gradient_checkpointing="unsloth" if case.ckpt else False, random_state=3407, use_rslora=False)
    args = SFTConfig(
        dataset_text_field="text", max_length=case.length, packing=True,
        per_device_train_batch_size=case.batch, gradient_accumulation_steps=case.accum, warmup_steps=5,
        max_steps=job["warmup"] + job["steps"], learning_rate=2e-4, logging_steps=1, optim="adamw_8bit",
        weight_decay=0.01, lr_scheduler_type="linear", seed=3407, output_dir=str(run_dir), report_to="none",
        bf16=True, save_strategy="no")
    trainer = SFTTrainer(model=model, processing_class=tokenizer, args=args,
                         train_dataset=Dataset.from_dict({"text": [r["text"] for r in rows]}))
    return trainer, {"backend": "unsloth", "packing": True, "padding_free": getattr(trainer.args, "padding_free", None),
                     "loss_on": "all tokens"}


# --- reading results ----------------------------------------------------------------------------------------------

def predict_now(case: dict) -> float:
    """The current planner's prediction for a recorded case (its cap as the budget)."""
    from bench.shapes import SHAPES
    from trainer.plan import Settings, Setup, arch_for, peak_gib

    setup = Setup(arch_for(SHAPES[case["shape"]].hub_id)[0], rank=case["rank"])
    settings = Settings(case["batch"], case["accum"], case["length"], case["ckpt"], case.get("keep", 0),
                        case.get("row", 0))
    return peak_gib(setup, settings, budget=case["cap_gib"])


def table(paths: list[str]) -> int:
    """Measured peaks against the planner's prediction at the time of the run and now."""
    print("| case | cap GiB | predicted then | predicted now | measured GiB | error now | tok/s | trained tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for path in paths:
        for e in json.loads(Path(path).read_text()):
            then, now = e["predicted"]["peak_gib"], predict_now(e["case"])
            r = e.get("result") or {}
            if e.get("error") or not r.get("peak_gib"):
                why = (e.get("error") or "no peak").splitlines()[0][:50]
                print(f"| {e['label']} | {e['case']['cap_gib']} | {then:.2f} | {now:.2f} | {why} | | | |")
                continue
            print(f"| {e['label']} | {e['case']['cap_gib']} | {then:.2f} | {now:.2f} | {r['peak_gib']:.2f} | "
                  f"{100 * (now / r['peak_gib'] - 1):+.1f}% | {r['tokens_per_s']:,.0f} | "
                  f"{r['trained_tokens_per_s']:,.0f} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.calibrate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("cases", nargs="+")
    r.add_argument("--out", required=True)
    r.add_argument("--work", default="/tmp/calibrate")
    r.add_argument("--tokenizers")
    r.add_argument("--steps", type=int, default=3)
    r.add_argument("--warmup", type=int, default=1)
    r.add_argument("--budget-s", type=float, default=0)
    r.add_argument("--child-timeout", type=float, default=200)
    t = sub.add_parser("table")
    t.add_argument("files", nargs="+")
    c = sub.add_parser("_child")
    c.add_argument("job")
    args = parser.parse_args(argv)
    if args.command == "_child":
        return child_main(args.job)
    if args.command == "table":
        return table(args.files)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
