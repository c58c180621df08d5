"""Background commands: `python -m trainer ...` and `python -m export ...` started as the terminal would.

Training runs in its own session (start_new_session), so it outlives the page and the UI server; its state is
read back from the run folder (`trainer.runs.RunFolder`), never from this process. Evaluation and export are
followed through their output while the page waits for them.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from trainer.errors import UserError
from trainer.runs import RunFolder, all_runs

CONSOLE_DIR = ".webui"
"""Under the runs folder: the console output of commands the UI started (a run folder exists only later)."""
_lock = threading.Lock()
_launched: dict[str, subprocess.Popen] = {}


def python_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def training_now() -> RunFolder | None:
    """A run some process is training right now, if any (started from here, the terminal or an earlier UI)."""
    return next((run for run in all_runs() if run.state == "running"), None)


def start_training(argv: list[str], root: str = "runs") -> Path:
    """Start `python -m trainer train ARGV` in the background; refused while another training runs.

    Returns the file that receives its console output until it has made its run folder."""
    with _lock:
        starting = _launched.get("train")
        if starting is not None and starting.poll() is None and not _has_claimed(starting.pid):
            raise UserError("a training is starting already (one at a time)", where="Start",
                            fix="wait for it, or stop it first")
        busy = training_now()
        if busy is not None:
            raise UserError(f"{busy.name} is training (one at a time)", where="Start",
                            fix="wait for it to finish, or Stop it first")
        console = _console_file(root, "train")
        with console.open("wb") as out:
            _launched["train"] = subprocess.Popen(python_command("trainer", "train", *argv), stdout=out,
                                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                  start_new_session=True, env=_child_env())
        return console


def last_console(root: str = "runs") -> Path | None:
    found = sorted((Path(root) / CONSOLE_DIR).glob("train-*.log"))
    return found[-1] if found else None


def launched_training_alive() -> bool:
    process = _launched.get("train")
    return process is not None and process.poll() is None


def stop(run: RunFolder) -> str:
    """Ask the run's training process to stop: it finishes the step, saves a checkpoint and exits."""
    pid = run.owner_pid()
    if pid is None:
        raise UserError(f"{run.name} is not training (it is {run.state})", where="Stop")
    os.kill(pid, signal.SIGTERM)
    return f"asked {run.name} to stop (pid {pid}): it saves a checkpoint after the current step"


def follow(argv: list[str], label: str, root: str = "runs"):
    """Run a command to its end, yielding (output so far, exit code or None) about twice a second."""
    console = _console_file(root, label)
    with console.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env=_child_env())
    while True:
        code = process.poll()
        yield tail(console), code
        if code is not None:
            return
        time.sleep(0.5)


LOG_LINES = 14
"""Lines the log boxes show and hold: a box given more lines than it shows opened at their top, not at the
latest line."""


def tail(path: Path | None, lines: int = LOG_LINES) -> str:
    """The last lines of a text file (progress bars' carriage returns resolved to their last state)."""
    if path is None or not Path(path).is_file():
        return ""
    with Path(path).open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(handle.tell() - 64_000, 0))
        text = handle.read().decode("utf-8", errors="replace")
    shown = [line.split("\r")[-1] for line in text.replace("\r\n", "\n").strip("\n").split("\n")]
    return "\n".join(shown[-lines:])


def _has_claimed(pid: int) -> bool:
    return any(run.owner_pid() == pid for run in all_runs())


def _console_file(root: str, label: str) -> Path:
    folder = Path(root) / CONSOLE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 1000:03d}.log"


def _child_env() -> dict:
    # Unbuffered, so the page shows output as it comes; no colours, so it reads as plain text.
    return {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "TERM": "dumb"}
