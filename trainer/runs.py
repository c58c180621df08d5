"""Run folders: one type (`RunFolder`) that owns every path of a run, its state and `latest`.

A run folder counts as finished only once `COMPLETE` exists; it is written last, so a crash at any point
leaves a folder that eval and export refuse to use. While a training process works in a folder it keeps
`RUNNING` there (its pid); a folder with that file but no live process was stopped or crashed:

    finished  COMPLETE exists
    running   RUNNING names a live process on this machine
    stopped   neither, but a checkpoint exists: `make train RESUME=1` (or the web UI's Resume) continues it
    failed    neither, and nothing to resume from

While `make serve` serves a run's GGUF, `serving.json` says where (its process, URL and file), so the web UI's
chat on that file goes to the same server; it is removed when the server stops, and ignored once its process is
gone.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import UserError

COMPLETE = "COMPLETE"
ADAPTER = "adapter"
"""Subfolder with the trained weights (LoRA adapter, or the whole model) and the tokenizer."""
RUNNING = "RUNNING"
PROGRESS = "progress.json"
SERVING = "serving.json"
STATES = ("running", "stopped", "failed", "finished")
DEFAULT_ROOT = "runs"
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
MARKS = ("config.yaml", "train.log", "checkpoints", RUNNING, COMPLETE, PROGRESS)
"""Files that make a folder a run folder (an empty one was made by a run that failed at once)."""


@dataclass(frozen=True)
class RunFolder:
    """One `runs/<recipe>-<time>/` folder: where each artifact lives, and what state the run is in."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # --- what a run holds -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    config = property(lambda self: self.path / "config.yaml")
    """The fully resolved recipe: every later stage reads it."""
    command = property(lambda self: self.path / "command.json")
    """How training was started (recipe and overrides), so a stopped run can be resumed with the same ones."""
    adapter = property(lambda self: self.path / ADAPTER)
    checkpoints = property(lambda self: self.path / "checkpoints")
    metrics = property(lambda self: self.path / "metrics.json")
    trainer_state = property(lambda self: self.path / "trainer_state.json")
    loss_curve = property(lambda self: self.path / "loss_curve.png")
    train_log = property(lambda self: self.path / "train.log")
    progress = property(lambda self: self.path / PROGRESS)
    eval_data = property(lambda self: self.path / "eval_data.jsonl")
    predictions = property(lambda self: self.path / "predictions.jsonl")
    eval_metrics = property(lambda self: self.path / "eval_metrics.json")
    report = property(lambda self: self.path / "report.md")
    merged = property(lambda self: self.path / "merged")
    gguf = property(lambda self: self.path / "gguf")
    complete_marker = property(lambda self: self.path / COMPLETE)
    running_marker = property(lambda self: self.path / RUNNING)
    server_state = property(lambda self: self.path / SERVING)
    """Written by `make serve` while it serves this run (where, which file); removed when it stops."""

    # --- state ------------------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.complete_marker.is_file()

    def owner_pid(self) -> int | None:
        """The pid of the live training process working here, or None."""
        return _live_pid(_read_json(self.running_marker))

    @property
    def state(self) -> str:
        if self.finished:
            return "finished"
        if self.owner_pid() is not None:
            return "running"
        return "stopped" if self.latest_checkpoint() is not None else "failed"

    def latest_checkpoint(self, readable: bool = True) -> Path | None:
        """The highest-step `checkpoints/checkpoint-N` that the trainer finished writing.

        `readable`: skip checkpoints whose trainer_state.json does not parse (a crash or a full disk while it was
        written), so a resume falls back to the one before."""
        found = [p for p in self.checkpoints.glob("checkpoint-*")
                 if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()
                 and (not readable or _state_readable(p / "trainer_state.json"))]
        return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None

    def read_progress(self) -> dict:
        """The trainer's last progress snapshot (see `trainer.training.progress`), or {} before the first one."""
        return _read_json(self.progress)

    def read_metrics(self) -> dict:
        return _read_json(self.metrics)

    def read_command(self) -> list[str]:
        """The `python -m trainer train` arguments this run was started with (recipe, then overrides)."""
        argv = _read_json(self.command).get("argv")
        return [str(a) for a in argv] if isinstance(argv, list) else []

    def require_finished(self) -> RunFolder:
        """This run, or a UserError saying why its weights cannot be used."""
        if not self.path.is_dir():
            raise UserError("run folder not found", where=str(self.path),
                            fix="pass RUN=runs/<recipe>-<time> from `make train`")
        if not self.finished:
            raise UserError(f"this run did not finish (it is {self.state}; no COMPLETE marker), so its weights "
                            "may be partial", where=str(self.path), fix="train again, or resume it with RESUME=1")
        return self

    # --- changes ----------------------------------------------------------------------------------------
    def claim(self) -> None:
        """Say that this process trains here (removed by `release`; a crash leaves it, but no live pid)."""
        write_json(self.running_marker, {"pid": os.getpid(), "host": socket.gethostname(),
                                         "started": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def release(self) -> None:
        if self.owner_pid() in (os.getpid(), None):
            self.running_marker.unlink(missing_ok=True)

    def mark_complete(self) -> None:
        write_text(self.complete_marker, time.strftime("%Y-%m-%dT%H:%M:%S\n"))

    # --- a server on this run ---------------------------------------------------------------------------
    def announce_server(self, serving: Serving) -> None:
        """Say that this process serves `serving.gguf` of this run at `serving.base_url` (until `withdraw_server`)."""
        write_json(self.server_state, {"pid": os.getpid(), "host": socket.gethostname(),
                                       "base_url": serving.base_url, "gguf": str(Path(serving.gguf).resolve()),
                                       "key_file": str(serving.key_file) if serving.key_file else None})

    def live_server(self) -> Serving | None:
        """Where this run is served now: `make serve`'s announcement while its process lives on this machine.
        (A killed server leaves its file behind; its dead pid makes it count for nothing.)"""
        state = _read_json(self.server_state)
        if _live_pid(state) is None or not isinstance(state.get("base_url"), str) or not state.get("gguf"):
            return None
        key_file = state.get("key_file")
        return Serving(state["base_url"], Path(state["gguf"]), Path(key_file) if key_file else None)

    def withdraw_server(self) -> None:
        """Remove this process's announcement (not another server's that replaced it)."""
        state = _read_json(self.server_state)
        if (state.get("pid"), state.get("host")) == (os.getpid(), socket.gethostname()):
            self.server_state.unlink(missing_ok=True)


@dataclass(frozen=True)
class Serving:
    """A server answering for a run (`make serve`): OpenAI-compatible API at `base_url`, on the file `gguf`."""

    base_url: str
    gguf: Path
    key_file: Path | None = None
    """The file holding its API key (readable by the user who started it only); None: no key needed."""


def runs_under(root: str | Path = DEFAULT_ROOT, recipe_name: str | None = None) -> list[RunFolder]:
    """Every run folder under `root` (optionally of one recipe), oldest first by name (which holds the time)."""
    pattern = f"{recipe_name}-*" if recipe_name else "*"
    return [RunFolder(p) for p in sorted(Path(root).glob(pattern))
            if p.is_dir() and any((p / name).exists() for name in MARKS)]


def run_roots(recipes_dir: Path = RECIPES_DIR) -> list[Path]:
    """Where runs are looked for: `$R1TUNE_RUNS` if set, else `runs` and every other `train.output_dir` that a
    shipped recipe (or one of its profiles) names."""
    if os.environ.get("R1TUNE_RUNS"):
        return [Path(os.environ["R1TUNE_RUNS"])]
    import yaml

    roots = [Path(DEFAULT_ROOT)]
    for path in sorted(Path(recipes_dir).glob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue  # a broken recipe is reported when it is used, not when runs are listed
        sections = [raw, *((raw.get("profiles") or {}).values() if isinstance(raw.get("profiles"), dict) else [])]
        for section in sections:
            train = section.get("train") if isinstance(section, dict) else None
            value = train.get("output_dir") if isinstance(train, dict) else None
            if isinstance(value, str) and value and Path(value) not in roots:
                roots.append(Path(value))
    return roots


def all_runs(roots: list[Path] | None = None) -> list[RunFolder]:
    """Every run folder under the run roots, newest first."""
    found = [run for root in (roots if roots is not None else run_roots()) for run in runs_under(root)]
    return sorted(found, key=lambda r: (_started(r), r.name), reverse=True)


def latest_finished(roots: list[Path] | None = None) -> RunFolder:
    """The most recently completed run under the run roots (what `RUN=latest` means)."""
    roots = roots if roots is not None else run_roots()
    done = [r for r in all_runs(roots) if r.finished]
    if not done:
        raise UserError("no finished run to use for RUN=latest",
                        where=", ".join(str(Path(root).resolve()) for root in roots),
                        fix="train one with `make train`, or pass RUN=path/to/run")
    return max(done, key=lambda r: (r.complete_marker.stat().st_mtime, r.name))


def resolve_run(text: str | Path, root: str | Path | None = None) -> RunFolder:
    """A run folder as given, or for `latest` the newest finished run under `root` (default: `run_roots()`)."""
    if str(text) != "latest":
        return RunFolder(Path(text))
    return latest_finished([Path(root)] if root is not None else None)


def _started(run: RunFolder) -> float:
    try:
        return run.path.stat().st_mtime if not run.config.is_file() else run.config.stat().st_mtime
    except OSError:
        return 0.0


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


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _live_pid(record: dict) -> int | None:
    """The `pid` of a {"pid", "host"} record if that process lives on this machine, else None."""
    pid = record.get("pid")
    if not isinstance(pid, int) or record.get("host") != socket.gethostname():
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not training
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


# The functions below predate `RunFolder` and are kept as thin forms of it for the stages that call them.
def mark_complete(run_dir: Path) -> None:
    RunFolder(run_dir).mark_complete()


def is_complete(run_dir: Path) -> bool:
    return RunFolder(run_dir).finished


def require_complete(run_dir: str | Path) -> Path:
    """The run folder, or a UserError saying why it cannot be used."""
    return RunFolder(run_dir).require_finished().path


def latest_run(output_dir: str | Path, recipe_name: str, complete: bool | None = None,
               with_checkpoint: bool = False) -> Path | None:
    """The newest run folder of a recipe (optionally only finished or unfinished ones, or with a checkpoint);
    a folder another process is training in is never picked to resume."""
    candidates = runs_under(output_dir, recipe_name)
    if complete is not None:
        candidates = [r for r in candidates if r.finished == complete]
    if with_checkpoint:
        candidates = [r for r in candidates if r.latest_checkpoint() is not None and r.state != "running"]
    return candidates[-1].path if candidates else None


def latest_checkpoint(run_dir: Path, readable: bool = True) -> Path | None:
    return RunFolder(run_dir).latest_checkpoint(readable)


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
