"""What the page shows, read from run folders: plain data (lists, dicts, text), no Gradio here."""
from __future__ import annotations

import json
import math
from pathlib import Path

from trainer.runs import RunFolder, all_runs


def losses(run: RunFolder) -> list[dict]:
    """(step, loss) of every logged training step, from the JSON lines of `train.log`."""
    points = []
    if not run.train_log.is_file():
        return points
    for line in run.train_log.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        loss = entry.get("loss")
        if isinstance(loss, (int, float)) and math.isfinite(loss) and isinstance(entry.get("step"), int):
            points.append({"step": entry["step"], "loss": float(loss)})
    return points


def progress_line(run: RunFolder) -> str:
    """`run: state, step 12/40 (30%), loss 2.31, 1,234 tok/s, 1 min 10 s left`."""
    state, p = run.state, run.read_progress()
    parts = [f"**{run.name}**: {state}"]
    if p.get("total"):
        parts.append(f"step {p.get('step', 0)}/{p['total']} ({100 * p.get('step', 0) / p['total']:.0f}%)")
    if isinstance(p.get("loss"), (int, float)):
        parts.append(f"loss {p['loss']:.4f}")
    if p.get("tokens_per_s"):
        parts.append(f"{p['tokens_per_s']:,.0f} tok/s")
    if state == "running" and p.get("eta_s") is not None:
        parts.append(f"{duration(p['eta_s'])} left")
    if state == "running" and p.get("state") not in (None, "training"):
        parts.append(f"({p['state']})")
    if state == "failed" and p.get("error"):
        parts.append(f"error: {p['error']}")
    if state == "stopped":
        parts.append("resumable from " + run.latest_checkpoint().name)
    return ", ".join(parts)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


RUN_COLUMNS = ["run", "state", "step", "final loss", "eval loss", "trained tok/s", "accuracy after", "GGUF"]


def runs_table(runs: list[RunFolder] | None = None) -> list[list]:
    """One row per run folder, newest first, with its state and key metrics."""
    rows = []
    for run in runs if runs is not None else all_runs():
        m, p = run.read_metrics(), run.read_progress()
        evals = _read(run.eval_metrics).get("after", {})
        step = m.get("steps") if m else p.get("step")
        total = p.get("total")
        rows.append([str(run.path), run.state, f"{step}/{total}" if total else (step if step is not None else ""),
                     _round(m.get("final_loss", p.get("loss"))), _round(m.get("eval_loss")),
                     _round(m.get("trained_tokens_per_s"), 0), _round(evals.get("accuracy")),
                     ", ".join(sorted(f.name for f in run.gguf.glob("*.gguf")))])
    return rows


def finished_runs() -> list[str]:
    return [str(run.path) for run in all_runs() if run.finished]


def gguf_files(run: RunFolder) -> list[str]:
    return [str(path) for path in sorted(run.gguf.glob("*.gguf"))]


def side_by_side(run: RunFolder, limit: int = 50) -> list[list[str]]:
    """Question, reference, and the base and trained answers of each eval row."""
    rows = []
    if not run.predictions.is_file():
        return rows
    for line in run.predictions.read_text(encoding="utf-8").splitlines()[:limit]:
        p = json.loads(line)
        rows.append([p.get("prompt", ""), p.get("reference", ""), p.get("before", {}).get("answer", ""),
                     p.get("after", {}).get("answer", "")])
    return rows


def files_table(folder: Path) -> list[list]:
    return [[path.name, f"{path.stat().st_size / 2**20:.1f} MiB"] for path in sorted(Path(folder).glob("*"))
            if path.is_file() and not path.name.startswith(".")]


def _read(path: Path) -> dict:
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _round(value, digits: int = 4):
    return round(value, digits) if isinstance(value, (int, float)) and math.isfinite(value) else ""
