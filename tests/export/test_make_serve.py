"""`make serve RUN=... PORT=...` through make, as a user types it, on the tiny exported run (`exported_run`):
called with the official client, then stopped; nothing it started may be left running.

Ctrl-C in a terminal sends SIGINT to the foreground process group: make and everything under it. GNU make does not
pass SIGINT on by itself (it leaves that to the terminal), so the test signals the group, as the terminal does.
(Seen with GNU make 4.3: SIGINT to make's pid alone leaves make waiting for its command, which never got the
signal, and the server keeps serving until Ctrl-C or SIGTERM; nothing is orphaned.) `kill <make's pid>`
(SIGTERM) is the other usual way to stop make; make passes that one on to its command.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from export.serve import free_port
from served_process import Output
from trainer.runs import RunFolder

pytestmark = pytest.mark.llamacpp

ROOT = Path(__file__).resolve().parents[2]
QUESTION = [{"role": "user", "content": "新闻标题：央行宣布降息0.25个百分点"}]


class Make(Output):
    """`make serve ...` in a session of its own (a terminal's job), its output collected line by line."""

    def __init__(self, *variables: str):
        venv = Path(sys.prefix)  # this test's environment; make's own default is ./.venv, the same under `make test`
        # `-o`: the set-up stamps count as done. The test already runs inside that set-up, and make would otherwise
        # reinstall the environment it runs from whenever pyproject.toml is newer than the stamp.
        cmd = ["make", "--no-print-directory", "serve", *variables, f"VENV={venv}",
               "-o", f"{venv}/.core", "-o", f"{venv}/.export"]
        env = {k: v for k, v in os.environ.items()
               if k not in ("API_KEY", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # not an outer make's (`make test`)
        env["NO_PROXY"] = "127.0.0.1,localhost"
        super().__init__(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, start_new_session=True), "make serve")

    def banner(self, timeout: float = 900) -> str:
        return super().banner(timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def session(self) -> dict[int, str]:
        """pid -> command name of every live process of make's session (make and all it started)."""
        found = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                name = (stat.parent / "comm").read_text().strip()
            except OSError:
                continue
            if int(fields[3]) == self.proc.pid and fields[0] != "Z":  # fields: state ppid pgrp session ...
                found[int(stat.parent.name)] = name
        return found

    def stop(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        self.proc.wait(60)


def left_after(make: Make, timeout: float = 60) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while (left := make.session()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def post_not_json(base_url: str) -> tuple[int, dict]:
    request = urllib.request.Request(base_url + "/chat/completions", b"not json",
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_make_serve_answers_the_openai_client_and_ctrl_c_leaves_nothing(exported_run: Path):
    from openai import OpenAI

    port = free_port()
    make = Make(f"RUN={exported_run}", f"PORT={port}")
    try:
        banner = make.banner()
        base_url = f"http://127.0.0.1:{port}/v1"
        assert base_url in banner and repr(exported_run.name) in banner
        assert "llama-server" in make.session().values()  # so "nothing left" below is a real check
        client = OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=300)
        assert [m.id for m in client.models.list().data] == [exported_run.name]
        message = client.chat.completions.create(model=exported_run.name, messages=QUESTION, max_tokens=24,
                                                 temperature=0, extra_body={"reasoning_budget_tokens": 6},
                                                 ).choices[0].message
        assert message.reasoning_content and message.content and "</think>" not in message.content
        status, reply = post_not_json(base_url)
        assert status == 400 and reply["error"]["type"] == "invalid_request_error"
        assert RunFolder(exported_run).live_server().base_url == base_url

        os.killpg(make.proc.pid, signal.SIGINT)  # Ctrl-C
        make.proc.wait(120)
        assert left_after(make) == {}
        assert "llama-server stopped." in "".join(make.err)
        assert not RunFolder(exported_run).server_state.exists()
        with pytest.raises(OSError):
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(base_url + "/models", timeout=5)
    finally:
        if make.proc.poll() is None or make.session():
            make.stop(signal.SIGKILL)


def test_kill_of_make_alone_stops_the_server_too(exported_run: Path):
    make = Make(f"RUN={exported_run}", f"PORT={free_port()}")
    try:
        make.banner()
        assert "llama-server" in make.session().values()
        make.proc.terminate()  # SIGTERM to make only, as `kill <pid>` or a process supervisor sends it
        make.proc.wait(120)
        assert left_after(make) == {}
    finally:
        if make.proc.poll() is None or make.session():
            make.stop(signal.SIGKILL)
