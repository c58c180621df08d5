"""The web UI's chat on a GGUF file: through `make serve`'s server while one serves that very file (found through
the run folder's `serving.json`), loaded in the web UI's process otherwise.

The tests marked `llamacpp` run a real llama-server (`python -m export serve`, with an API key) and
llama-cpp-python on the tiny model (the `exported_run` fixture); the others check the discovery rules on files.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from export.serve import chat_stream, free_port
from trainer.runs import RunFolder, Serving
from trainer.webui import chat_tab

ROOT = Path(__file__).resolve().parents[2]
KEY = "webui-key-9"
QUESTION = "新闻标题：央行宣布降息0.25个百分点"
NO_ANSWER = "_no answer"


@pytest.fixture(scope="module")
def served(exported_run: Path, tmp_path_factory):
    """`python -m export serve` on the run (with an API key), once its run folder says where it serves."""
    log = tmp_path_factory.mktemp("serve") / "serve.out"
    env = {**os.environ, "API_KEY": KEY, "PYTHONPATH": str(ROOT), "NO_PROXY": "127.0.0.1,localhost"}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "export", "serve", str(exported_run),
                                 "--port", str(free_port())], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 900
    while (serving := RunFolder(exported_run).live_server()) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("make serve did not start:\n" + log.read_text()[-3000:])
        time.sleep(0.5)
    yield proc, serving
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


def chat(gguf: Path, max_new_tokens: int = 12) -> tuple[list[dict], str]:
    """The web UI's last frame of one reply (temperature 0: greedy): the chat's messages and who answered."""
    *_, (messages, _, where) = chat_tab.respond(QUESTION, [], str(gguf), "", 0, 1, max_new_tokens)
    return messages, where


def shown(messages: list[dict]) -> tuple[str, str]:
    """(reasoning block, answer bubble) of the last reply."""
    thinking = next(m for m in messages if (m.get("metadata") or {}).get("title") == chat_tab.REASONING_TITLE)
    return thinking["content"], messages[-1]["content"]


@pytest.mark.llamacpp
def test_chat_stream_splits_reasoning_from_answer_as_the_openai_client_sees_it(served, exported_run):
    from openai import OpenAI

    _, serving = served
    request = {"max_tokens": 24, "temperature": 0, "reasoning_budget_tokens": 6}  # the server closes the reasoning
    messages = [{"role": "user", "content": QUESTION}]
    pieces = list(chat_stream(serving.base_url, messages, KEY, **request))
    kinds = [kind for kind, _ in pieces]
    assert kinds.count("reasoning") >= 2 and kinds.count("answer") >= 2  # streamed, not one block
    assert kinds == sorted(kinds, key=["reasoning", "answer"].index)  # all reasoning first
    expected = OpenAI(base_url=serving.base_url, api_key=KEY, max_retries=0).chat.completions.create(
        model=exported_run.name, messages=messages, max_tokens=24, temperature=0,
        extra_body={"reasoning_budget_tokens": 6}).choices[0].message
    assert "".join(text for kind, text in pieces if kind == "reasoning") == expected.reasoning_content
    assert "".join(text for kind, text in pieces if kind == "answer") == expected.content


@pytest.mark.llamacpp
def test_a_refused_request_is_one_line_naming_the_server(served):
    from trainer.errors import UserError

    _, serving = served
    with pytest.raises(UserError, match="401.*Invalid API Key"):
        list(chat_stream(serving.base_url, [{"role": "user", "content": "hi"}], "wrong-key", max_tokens=4))


@pytest.mark.llamacpp
def test_a_served_file_is_chatted_with_through_its_server_then_loaded_here_once_it_stops(served, exported_run,
                                                                                         monkeypatch):
    from openai import OpenAI

    proc, serving = served
    gguf = next((exported_run / "gguf").glob("*.gguf"))

    def not_here(path):
        pytest.fail("the served file was loaded in the web UI's process")

    with monkeypatch.context() as patch:
        patch.setattr(chat_tab, "GGUFModel", not_here)
        messages, where = chat(gguf)
    assert serving.base_url in where
    # Oracle: the same request from the official client, straight to the server.
    expected = OpenAI(base_url=serving.base_url, api_key=KEY, max_retries=0).chat.completions.create(
        model=exported_run.name, messages=[{"role": "user", "content": QUESTION}], max_tokens=12, temperature=0,
        top_p=1).choices[0].message
    reasoning, answer = shown(messages)
    assert reasoning == expected.reasoning_content and reasoning
    assert answer == expected.content if expected.content else answer.startswith(NO_ANSWER)

    # The server stops (so this test comes after the others that use it): its announcement goes, and the file
    # is loaded here.
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0 and RunFolder(exported_run).live_server() is None
    messages, where = chat(gguf)
    assert "loaded here" in where
    # Same file, same greedy decoding in llama-cpp-python: the same reasoning as the server's.
    assert shown(messages)[0].strip() == expected.reasoning_content.strip()


def run_with_gguf(tmp_path: Path) -> tuple[RunFolder, Path]:
    run = RunFolder(tmp_path / "news-20261130-120000")
    run.gguf.mkdir(parents=True)
    run.config.write_text("name: news\n")
    for quant in ("f16", "q8_0"):
        (run.gguf / f"{run.name}-{quant}.gguf").write_bytes(b"GGUF")
    return run, run.gguf / f"{run.name}-f16.gguf"


def test_only_the_file_the_server_serves_goes_to_it(tmp_path):
    run, f16 = run_with_gguf(tmp_path)
    assert chat_tab.served_model(f16) is None  # nothing announced
    key_file = tmp_path / "api-key"
    key_file.write_text("s3cret\n")
    run.announce_server(Serving("http://127.0.0.1:9/v1", f16, key_file))
    try:
        served = chat_tab.served_model(f16)
        assert served.serving.base_url == "http://127.0.0.1:9/v1" and served.api_key == "s3cret"
        assert chat_tab.served_model(run.gguf / f"{run.name}-q8_0.gguf") is None  # another file of the run
        key_file.unlink()  # a key this user cannot read (another user's server): the file is loaded here
        assert chat_tab.served_model(f16) is None
    finally:
        run.withdraw_server()
