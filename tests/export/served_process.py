"""A serving process started by a test, its stdout and stderr read line by line in the background.

Both serve tests (`python -m export serve` and `make serve`) wait for the banner that serving prints once
llama-server answers, and then look at what the process said on stderr.
"""
from __future__ import annotations

import queue
import subprocess
import threading
import time

import pytest

BANNER_END = "m = client"
"""The banner's last line: the end of its example of calling the server with the openai client."""


class Output:
    """The lines `proc` prints: stdout in a queue (read as they come), stderr in a list."""

    def __init__(self, proc: subprocess.Popen, name: str):
        self.proc, self.name = proc, name
        self.out: queue.Queue[str] = queue.Queue()
        self.err: list[str] = []
        threading.Thread(target=lambda: [self.out.put(x) for x in proc.stdout], daemon=True).start()
        threading.Thread(target=lambda: [self.err.append(x) for x in proc.stderr], daemon=True).start()

    def banner(self, timeout: float) -> str:
        """stdout up to the banner's end; fails with the output so far if the process ends first or time runs out
        (then it is killed)."""
        lines, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                lines.append(self.out.get(timeout=1))
            except queue.Empty:
                if self.proc.poll() is not None:
                    pytest.fail(f"{self.name} ended ({self.proc.returncode}): {''.join(lines + self.err)[-3000:]}")
                continue
            if lines[-1].startswith(BANNER_END):
                return "".join(lines)
        self.kill()
        pytest.fail(f"no banner from {self.name} in time: " + "".join(lines + self.err)[-3000:])

    def kill(self) -> None:
        self.proc.kill()
