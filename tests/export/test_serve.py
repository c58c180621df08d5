"""`make serve` on a real (tiny, CPU) model, through the official `openai` client, as a user's program calls it.

Needs llama.cpp's build (llama-server) like the other `llamacpp` tests. `python -m export serve` runs on the
`exported_run` fixture (a finished run folder holding the tiny model's f16 GGUF; the export-first path is tested
without a server in test_serve_settings.py). Requests go through the front (export/front.py) as users' do.

The tiny model is nearly random and would rarely write `</think>` by itself, so requests set llama-server's
`reasoning_budget_tokens`: after that many reasoning tokens the server makes the model write `</think>`, and the
answer follows, as with a trained model. The split is checked against an independent oracle: greedy decoding of
the prompt rendered by the GGUF's template in Python (not by llama-server), whose first tokens must be exactly the
reasoning.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from export.serve import free_port
from served_process import Output
from trainer.runs import RunFolder

pytestmark = pytest.mark.llamacpp

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "NO_PROXY": "127.0.0.1,localhost"}
KEY = "test-key-4f1c"
BUDGET = 6
"""Reasoning tokens before the server closes the think block."""
QUESTION = [{"role": "user", "content": "新闻标题：央行宣布降息0.25个百分点"}]


class Cli(Output):
    """`python -m export serve ...` running in the background, its output collected line by line."""

    @classmethod
    def start(cls, *args: str, env: dict | None = None) -> Cli:
        proc = subprocess.Popen([sys.executable, "-m", "export", "serve", *args], cwd=ROOT, env={**ENV, **(env or {})},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return cls(proc, "serve")

    def banner(self, timeout: float = 1500) -> str:
        return super().banner(timeout)

    def server_pids(self) -> list[int]:
        return [pid for pid in children_of(self.proc.pid) if command_name(pid) == "llama-server"]

    def interrupt(self, sig: int = signal.SIGINT) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def gone(pid: int, timeout: float = 10) -> bool:
    """True once `pid` no longer exists (not even as a zombie waiting to be reaped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True  # dead; only its parent's bookkeeping is left
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def served(exported_run: Path):
    port = free_port()
    cli = Cli.start(str(exported_run), "--port", str(port), env={"API_KEY": KEY})
    banner = cli.banner()
    yield cli, banner, f"http://127.0.0.1:{port}/v1"
    if cli.proc.poll() is None:
        cli.interrupt()


@pytest.fixture(scope="module")
def client(served):
    from openai import OpenAI

    _, _, base_url = served
    return OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=300)


def ask(client, run: Path, **kw):
    return client.chat.completions.create(model=run.name, messages=QUESTION, max_tokens=24, temperature=0,
                                          extra_body={"reasoning_budget_tokens": BUDGET}, **kw)


def post(url: str, body: bytes, key: str | None = KEY) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_banner_names_the_file_and_says_how_to_call_it(served, exported_run):
    cli, banner, base_url = served
    assert f"starting llama-server on {exported_run / 'gguf' / exported_run.name}-f16.gguf" in "".join(cli.err)
    assert base_url in banner and repr(exported_run.name) in banner and 'os.environ["API_KEY"]' in banner
    assert KEY not in banner + "".join(cli.err)
    assert len(cli.server_pids()) == 1


def test_models_lists_the_run_and_health_is_open(client, served, exported_run):
    assert [m.id for m in client.models.list().data] == [exported_run.name]
    _, _, base_url = served
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/health", timeout=10) as reply:
        assert reply.status == 200 and json.loads(reply.read())["status"] == "ok"


def oracle_reasoning(served, exported_run: Path, tiny_path: Path) -> str:
    """Greedy text after the R1 prompt, longer than the reasoning. Independent of llama.cpp's template engine and
    tokenizer: the GGUF's template is rendered by Jinja in Python and tokenized by the Hugging Face tokenizer."""
    from transformers import AutoTokenizer

    from export.chat import GGUFTemplate
    from export.gguf_metadata import read_gguf_metadata

    meta = read_gguf_metadata(next((exported_run / "gguf").glob("*.gguf")))
    tokens = meta["tokenizer.ggml.tokens"]
    template = GGUFTemplate(meta["tokenizer.chat_template"], tokens[meta["tokenizer.ggml.bos_token_id"]])
    prompt = template.apply_chat_template(QUESTION, add_generation_prompt=True)
    assert prompt.endswith("<｜Assistant｜><think>\n")  # the original R1 generation prompt
    ids = AutoTokenizer.from_pretrained(str(tiny_path))(prompt, add_special_tokens=False).input_ids
    _, _, base_url = served
    status, done = post(base_url.removesuffix("/v1") + "/completion",
                        json.dumps({"prompt": ids, "n_predict": 3 * BUDGET, "temperature": 0,
                                    "cache_prompt": False}).encode())
    assert status == 200, done
    return done["content"]


def test_reasoning_comes_apart_from_the_answer(client, served, exported_run, tiny_path):
    message = ask(client, exported_run).choices[0].message
    assert message.reasoning_content and message.content
    assert "<think>" not in message.content and "</think>" not in message.content
    assert "</think>" not in message.reasoning_content
    # Independent oracle: the reasoning is exactly what the model writes first after the R1 prompt.
    assert oracle_reasoning(served, exported_run, tiny_path).strip().startswith(message.reasoning_content.strip())


def test_streaming_sends_token_by_token_and_adds_up_to_the_same_reply(client, exported_run):
    whole = ask(client, exported_run).choices[0].message
    reasoning, content = [], []
    for chunk in ask(client, exported_run, stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if getattr(delta, "reasoning_content", None):
            reasoning.append(delta.reasoning_content)
        if delta.content:
            content.append(delta.content)
    assert len(reasoning) >= 2 and len(content) >= 2  # pieces as they are made, not one block
    assert "".join(reasoning) == whole.reasoning_content and "".join(content) == whole.content


def test_a_wrong_or_missing_key_is_refused_with_401(served, exported_run):
    import openai

    _, _, base_url = served
    with pytest.raises(openai.AuthenticationError) as err:
        ask(openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0), exported_run)
    assert err.value.status_code == 401
    status, body = post(base_url + "/chat/completions", json.dumps({"messages": QUESTION}).encode(), key=None)
    assert status == 401 and "error" in body


@pytest.mark.parametrize("body", [b'{"messages": "not a list"}', b'{"model": "x"}'])
def test_a_malformed_request_gets_a_4xx_json_error(served, body):
    _, _, base_url = served
    status, reply = post(base_url + "/chat/completions", body)
    assert 400 <= status < 500 and reply["error"]["message"]


@pytest.mark.parametrize("body", [b"not json", b'{"messages": [{"role": "user"}]', b"", b'{"max_tokens": NaN}',
                                  b'{"messages": "\xff"}'])
def test_a_body_that_is_not_json_gets_400_with_an_openai_error(served, body):
    # llama-server alone answers these 500 server_error; the front turns that into the client's mistake
    _, _, base_url = served
    status, reply = post(base_url + "/chat/completions", body)
    assert status == 400, reply
    assert reply["error"]["type"] == "invalid_request_error" and reply["error"]["code"] == 400
    assert reply["error"]["message"].startswith("the request body is not JSON")


def test_a_body_that_is_not_json_without_the_key_is_still_401(served):
    _, _, base_url = served
    for key in (None, "wrong"):
        status, reply = post(base_url + "/chat/completions", b"not json", key=key)
        assert status == 401 and reply["error"]["type"] == "authentication_error"


def test_the_run_folder_says_where_it_is_served(served, exported_run):
    _, _, base_url = served
    serving = RunFolder(exported_run).live_server()
    assert serving.base_url == base_url and serving.gguf == next((exported_run / "gguf").glob("*.gguf")).resolve()
    assert serving.key_file.read_text().strip() == KEY


def test_eight_concurrent_requests_are_all_answered(client, exported_run):
    def one(i: int):
        return client.chat.completions.create(
            model=exported_run.name, messages=[{"role": "user", "content": f"第{i}条新闻"}], max_tokens=12,
            temperature=0.6, seed=i, extra_body={"reasoning_budget_tokens": 4})

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(one, range(8)))
    assert len(replies) == 8
    for reply in replies:
        message = reply.choices[0].message
        assert reply.choices[0].finish_reason in ("stop", "length") and (message.reasoning_content or message.content)


def test_ctrl_c_stops_the_server_and_leaves_no_process(served, exported_run):
    cli, _, base_url = served
    (server_pid,) = cli.server_pids()
    key_file = RunFolder(exported_run).live_server().key_file
    assert cli.interrupt(signal.SIGINT) == 0
    assert gone(server_pid)
    with pytest.raises(OSError):
        urllib.request.urlopen(base_url.removesuffix("/v1") + "/health", timeout=5)
    assert not RunFolder(exported_run).server_state.exists() and not key_file.exists()


def test_sigterm_stops_it_too(exported_run):
    cli = Cli.start(str(exported_run), "--port", str(free_port()))
    banner = cli.banner(timeout=300)
    assert "requests need the API_KEY" not in banner
    (server_pid,) = cli.server_pids()
    assert cli.interrupt(signal.SIGTERM) == 0
    assert gone(server_pid)


def test_llama_server_does_not_outlive_a_killed_serve(exported_run):
    cli = Cli.start(str(exported_run), "--port", str(free_port()))
    cli.banner(timeout=300)
    (server_pid,) = cli.server_pids()
    cli.proc.kill()  # SIGKILL: serve cannot stop its server itself
    cli.proc.wait(timeout=60)
    assert gone(server_pid)


def test_the_network_without_a_key_is_refused_before_anything_starts(exported_run):
    done = subprocess.run([sys.executable, "-m", "export", "serve", str(exported_run), "--host", "0.0.0.0"],
                          cwd=ROOT, env={k: v for k, v in ENV.items() if k != "API_KEY"}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "needs API_KEY" in done.stderr and "Traceback" not in done.stderr


def test_the_library_context_manager_serves_and_cleans_up(exported_run):
    from openai import OpenAI

    from export import serve

    gguf = sorted((exported_run / "gguf").glob("*.gguf"))[-1]
    server = serve.start_server(gguf)
    try:
        models = OpenAI(base_url=server.base_url, api_key="none").models.list().data
        assert [m.id for m in models] == [exported_run.name]
    finally:
        server.stop()
    assert server.process.poll() is not None and gone(server.process.pid)
    with pytest.raises(RuntimeError):
        with serve.serving(gguf) as base_url:
            assert base_url.startswith("http://127.0.0.1:")
            raise RuntimeError("the caller fails")
    assert not [p for p in children_of(os.getpid()) if command_name(p) == "llama-server"]
