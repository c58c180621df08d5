"""Which of a run's GGUF files to run, and with what context: one answer for chat-gguf, serve and the printed commands.

The default is the file the last `make gguf` made last (its main quantization, the one it verified and wrote the
Modelfile for, as `gguf/export.json` records); `QUANT=` picks another. The context is the recipe's
`model.max_seq_length`: the longest text the model was trained on.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from export.gguf import check_quant_type
from trainer.config import Recipe
from trainer.errors import UserError
from trainer.runs import RunFolder

EXPORT_SUMMARY = "export.json"


@dataclass(frozen=True)
class Chosen:
    path: Path
    why: str
    """Why this file, for the line that says which file runs ("the file `make gguf` wrote last", ...)."""
    verified: bool | None = None
    """The last export's verdict when this is its file (None: not checked, or another file)."""


def context_length(recipe: Recipe) -> int:
    """Tokens of context to run a run's model with: what it was trained on (prompt, reasoning and answer)."""
    return recipe.model.max_seq_length


def gguf_for_quant(run_dir: Path, quant: str) -> Path:
    """Where `make gguf` writes the `quant` file of this run (it may not exist yet)."""
    return RunFolder(run_dir).gguf / f"{run_dir.name}-{check_quant_type(quant)}.gguf"


def choose_gguf(run_dir: Path, quant: str | None = None) -> Chosen | None:
    """The GGUF to run for this run folder, or None when there is none yet."""
    if quant:
        path = gguf_for_quant(run_dir, quant)
        return Chosen(path, f"QUANT={quant}") if path.is_file() else None
    summary = _last_export(run_dir)
    if summary is not None:
        files = summary.get("files") or []
        if files:
            # Paths are stored absolute; take the name, so a moved or copied run folder still works.
            path = RunFolder(run_dir).gguf / Path(str(files[-1].get("path", ""))).name
            if path.is_file():
                passed = summary.get("passed") if summary.get("checks") else None
                return Chosen(path, "the file `make gguf` wrote last", passed)
    found = sorted((RunFolder(run_dir).gguf).glob("*.gguf"), key=lambda p: p.stat().st_mtime)
    return Chosen(found[-1], "the newest GGUF in the run") if found else None


def require_gguf(run_dir: Path, quant: str | None = None) -> Chosen:
    chosen = choose_gguf(run_dir, quant)
    if chosen is None:
        what = f"no {quant} GGUF" if quant else "no GGUF"
        fix = f"make gguf RUN={run_dir}" + (f" QUANT={quant}" if quant else "")
        raise UserError(f"{what} in this run yet", where=str(RunFolder(run_dir).gguf), fix=f"run `{fix}` first")
    return chosen


def describe(chosen: Chosen) -> str:
    """One line naming the file and why it was picked, with the export's verdict when it is known."""
    verdict = {True: ", verified", False: ", which FAILED its checks (see gguf/export.json)", None: ""}
    return f"{chosen.path} ({chosen.why}{verdict[chosen.verified]})"


def run_of_gguf(gguf: Path) -> Path | None:
    """The run folder a `runs/<run>/gguf/<file>.gguf` belongs to, if it is one."""
    run = RunFolder(gguf.resolve().parent.parent)
    return run.path if gguf.resolve().parent == run.gguf and run.config.is_file() else None


def _last_export(run_dir: Path) -> dict | None:
    path = RunFolder(run_dir).gguf / EXPORT_SUMMARY
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
