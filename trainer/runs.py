"""Run folders: naming, atomic writes, the completion marker, and the log every stage appends to.

A run folder counts as finished only once `COMPLETE` exists; it is written last, so a crash at any point
leaves a folder that eval and export refuse to use.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from trainer.errors import UserError

COMPLETE = "COMPLETE"
ADAPTER = "adapter"
"""Subfolder with the trained weights (LoRA adapter, or the whole model) and the tokenizer."""


def new_run_dir(output_dir: str | Path, recipe_name: str) -> Path:
    """`<output_dir>/<recipe>-<YYYYmmdd-HHMMSS>`, made unique if two runs start in the same second."""
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(100):
        path = root / (f"{recipe_name}-{stamp}" + (f"-{n}" if n else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UserError("cannot create a unique run folder", where=str(root))


def write_text(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def mark_complete(run_dir: Path) -> None:
    write_text(Path(run_dir) / COMPLETE, time.strftime("%Y-%m-%dT%H:%M:%S\n"))


def is_complete(run_dir: Path) -> bool:
    return (Path(run_dir) / COMPLETE).is_file()


def require_complete(run_dir: str | Path) -> Path:
    """The run folder, or a UserError saying why it cannot be used."""
    path = Path(run_dir)
    if not path.is_dir():
        raise UserError("run folder not found", where=str(path), fix="pass RUN=runs/<recipe>-<time> from `make train`")
    if not is_complete(path):
        raise UserError("this run did not finish (no COMPLETE marker), so its weights may be partial",
                        where=str(path), fix="train again, or resume it with RESUME=1")
    return path


def latest_run(output_dir: str | Path, recipe_name: str, complete: bool | None = None,
               with_checkpoint: bool = False) -> Path | None:
    """The newest run folder of a recipe (optionally only finished or unfinished ones, or with a checkpoint)."""
    candidates = sorted(p for p in Path(output_dir).glob(f"{recipe_name}-*") if p.is_dir())
    if complete is not None:
        candidates = [p for p in candidates if is_complete(p) == complete]
    if with_checkpoint:
        candidates = [p for p in candidates if latest_checkpoint(p) is not None]
    return candidates[-1] if candidates else None


def latest_checkpoint(run_dir: Path, readable: bool = True) -> Path | None:
    """The highest-step `checkpoints/checkpoint-N` that the trainer finished writing.

    `readable`: skip checkpoints whose trainer_state.json does not parse (a crash or a full disk while it was
    written), so a resume falls back to the one before."""
    found = [p for p in (Path(run_dir) / "checkpoints").glob("checkpoint-*")
             if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()
             and (not readable or _state_readable(p / "trainer_state.json"))]
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


def _state_readable(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")).get("global_step"), int)
    except (OSError, ValueError, AttributeError):
        return False


class RunLog:
    """Prints to the console and appends the same lines to `train.log` once the run folder exists.

    A quiet log (the processes other than rank 0 of a multi-GPU run) says and writes nothing."""

    def __init__(self, quiet: bool = False) -> None:
        self.path: Path | None = None
        self.pending: list[str] = []
        self.quiet = quiet

    def attach(self, path: Path) -> None:
        if self.quiet:
            return
        self.path = Path(path)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.writelines(line + "\n" for line in self.pending)
        self.pending.clear()

    def say(self, text: str = "", console: bool = True) -> None:
        if self.quiet:
            return
        if console:
            print(text, file=sys.stdout, flush=True)
        for line in text.splitlines() or [""]:
            self.record(line)

    def record(self, line: str) -> None:
        if self.quiet:
            return
        if self.path is None:
            self.pending.append(line)
        else:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")
