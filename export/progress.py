"""One progress line for a long compile: percent done and time spent, kept alive while the compiler is silent.

A big C++ file can take a minute with no output, which reads like a hang; the line redraws every second on a
terminal. Into a pipe or a log (make's output captured by a CI job), it writes a line every 10% and every minute.
"""
from __future__ import annotations

import re
import sys
import threading
import time
from typing import TextIO

_NINJA = re.compile(r"^\[(\d+)/(\d+)\]")
_MAKE = re.compile(r"^\[\s*(\d+)%\]")


def percent_of(line: str) -> int | None:
    """The percentage a build tool's output line reports: ninja `[12/345]` or make `[ 40%]`; else None."""
    match = _NINJA.match(line)
    if match:
        done, total = int(match.group(1)), int(match.group(2))
        return 100 * done // total if total else None
    match = _MAKE.match(line)
    return int(match.group(1)) if match else None


class BuildProgress:
    """`with BuildProgress("llama.cpp build") as p: p.feed(line)`: shows the highest percentage seen so far.

    Make prints each target's own percentage, so the numbers can step back; the maximum reads better.
    """

    def __init__(self, label: str, stream: TextIO | None = None, interval: float = 1.0,
                 quiet_interval: float = 60.0):
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval
        self.quiet_interval = quiet_interval
        self.percent: int | None = None
        self.started = time.monotonic()
        self._last_line_at = self.started
        self._last_tenth = -1
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)

    def __enter__(self) -> BuildProgress:
        self._show(first=True)
        self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._ticker.join()
        if self.tty:
            with self._lock:
                self.stream.write("\n")
                self.stream.flush()

    def feed(self, line: str) -> None:
        value = percent_of(line)
        if value is not None and (self.percent is None or value > self.percent):
            self.percent = value
            self._show()

    def text(self) -> str:
        spent = int(time.monotonic() - self.started)
        done = "" if self.percent is None else f"{self.percent}% done, "
        return f"  {self.label}: {done}{spent // 60} min {spent % 60:02d} s"

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self._show()

    def _show(self, first: bool = False) -> None:
        with self._lock:
            if self.tty:
                self.stream.write("\r" + self.text().ljust(60))
            else:
                tenth = -1 if self.percent is None else self.percent // 10
                now = time.monotonic()
                if not first and tenth == self._last_tenth and now - self._last_line_at < self.quiet_interval:
                    return
                self._last_tenth, self._last_line_at = tenth, now
                self.stream.write(self.text() + "\n")
            self.stream.flush()
