"""The whole loop through the web UI in a real Chromium: train the tiny model, stop, resume, evaluate, chat,
export q8_0; and the page's refusals (a bad knob, broken data, a second Start) that start nothing.

Needs Debian's Chromium at /usr/bin/chromium (`apt-get install chromium`; .ci/run does it) and playwright from
PyPI; never `playwright install`. Screenshots of every tab are kept in the test's tmp_path (and copied to
trainer/webui/screenshots/ with WEBUI_SCREENSHOTS=1, for the README).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.runs import RunFolder, runs_under

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "trainer" / "webui" / "screenshots"
pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.llamacpp,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")]
# Few steps, few eval rows, short answers: the test checks the loop, not the model (2 shared CPU cores in CI).
TRAIN_ARGS = "data.val_size=4 eval.max_new_tokens=16 train.eval_steps=none train.logging_steps=1"
STEPS = "16"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python -m trainer.webui` in an empty folder (its runs/ lands there), as `make webui` starts it."""
    work = tmp_path_factory.mktemp("webui")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_PROXY": "127.0.0.1,localhost",
           "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    env.pop("R1TUNE_RUNS", None)
    log = (work / "server.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "trainer.webui", "--port", str(port)], cwd=work, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 600  # importing torch and gradio takes minutes on a busy 2-core machine
    while time.time() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("the web UI did not start:\n" + (work / "server.log").read_text())
    yield url, work
    process.terminate()
    process.wait(30)
    for run in runs_under(work / "runs"):  # never leave a training behind
        if run.owner_pid():
            os.kill(run.owner_pid(), 15)


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    with sync_playwright() as p:
        yield p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])


def test_train_evaluate_chat_export_in_the_browser(server, chromium, tmp_path):
    url, work = server
    shots = Shots(tmp_path)
    page = open_page(chromium, url)

    # A bad knob: the CLI's one-line message, inline, and Start starts nothing.
    fill(page, "knob-train-learning-rate", "-1")
    expect_text(page, "#train-message", "train.learning_rate: must be above 0")
    page.click("#start")
    expect_text(page, "#train-message", "error, nothing started: command line (train.learning_rate=-1)")
    fill(page, "knob-train-learning-rate", "5e-3")
    expect_text(page, "#train-message", "recipe ok")
    # Broken data: the file and line, and nothing starts.
    broken = work / "broken.jsonl"
    broken.write_text('{"conversations": [{"from": "human", "value": "hi"}]}\n{"conversations": [\n')
    fill(page, "data-path", str(broken))
    page.click("#start")
    expect_text(page, "#train-message", f"error, nothing started: {broken}:2")
    assert not runs_under(work / "runs"), "a refused Start must not make a run folder"
    shots.take(page, "train-error")

    # Start for real; a second Start while it trains is refused.
    fill(page, "data-path", str(REPO / "recipes" / "samples" / "news.jsonl"))
    fill(page, "knob-train-max-steps", STEPS)
    fill(page, "knob-train-batch-size", "2")
    fill(page, "extra", TRAIN_ARGS)
    expect_text(page, "#command", "make train RECIPE=news")
    page.click("#start")
    expect_text(page, "#train-message", "started: make train RECIPE=news")
    page.click("#start")
    expect_text(page, "#train-message", "one at a time")
    run = wait_for(lambda: _only_run(work), 300, "the run folder")

    # Stop as soon as a step is done: the run ends after a step with a checkpoint, stopped and resumable.
    wait_for(lambda: run.read_progress().get("step"), 600, "the first step")
    page.click("#stop")
    expect_text(page, "#train-message", "asked")
    wait_for(lambda: run.state == "stopped", 300, "the stop")
    stopped_at = int(run.latest_checkpoint().name.split("-")[-1])
    assert 1 <= stopped_at < int(STEPS)
    expect_text(page, "#progress", f"resumable from checkpoint-{stopped_at}", timeout=30)
    assert ": stopped" in page.inner_text("#progress")
    shots.take(page, "train-stopped")

    # Resume, then close the browser: the training goes on to the end with no page open.
    page.click("#resume")
    expect_text(page, "#train-message", f"resuming {run.name}")
    page.context.close()
    wait_for(lambda: run.state == "finished", 900, "the resumed run to finish")
    assert run.read_metrics()["steps"] == int(STEPS)
    assert json.loads(run.command.read_text())["argv"][0] == "news"
    page = open_page(chromium, url)
    expect_text(page, "#progress", "finished")
    wait_for(lambda: "done in" in field(page, "log").input_value(), 60, "the end of the log in the page")
    page.wait_for_selector("#loss-plot canvas, #loss-plot svg", timeout=30_000)
    shots.take(page, "train")

    page.get_by_role("tab", name="Evaluate").click()
    # opening the tab lists the finished runs and picks the newest: wait for it before clicking
    wait_for(lambda: run.name in field(page, "eval-run").input_value(), 60, "the run in the Evaluate tab")
    fill(page, "eval-samples", "2")
    page.click("#evaluate")
    expect_text(page, "#eval-table", "before (base)", timeout=600)
    assert "after (trained)" in page.inner_text("#eval-answers")
    assert run.eval_metrics.is_file()
    shots.take(page, "evaluate")

    page.get_by_role("tab", name="Chat").click()
    choose(page, "chat-model", f"{run.name} (adapter)")
    fill(page, "chat-max-new", "24")
    fill(page, "chat-input", "新闻分类:「大学招生」最新进展公布")
    page.click("#chat-send")
    expect_text(page, "#chatbot", "Reasoning", timeout=300)  # the collapsible reasoning block
    wait_for(lambda: len(page.inner_text("#chatbot")) > 40, 120, "a streamed answer")
    shots.take(page, "chat")

    page.get_by_role("tab", name="Export").click()
    wait_for(lambda: run.name in field(page, "export-run").input_value(), 60, "the run in the Export tab")
    page.click("#export")
    expect_text(page, "#export-checks", "export ok", timeout=1500)
    checks = page.inner_text("#export-checks")
    assert "top-1" in checks or "agree" in checks, checks
    assert "FAIL" not in checks
    expect_text(page, "#export-commands", "ollama create")
    assert (run.gguf / f"{run.name}-q8_0.gguf").is_file()
    expect_text(page, "#export-files", "-q8_0.gguf")
    shots.take(page, "export")

    page.get_by_role("tab", name="Runs").click()
    expect_text(page, "#runs-table", "finished")
    shots.take(page, "runs")
    page.context.close()


class Shots:
    def __init__(self, folder: Path):
        self.folder = folder

    def take(self, page, name: str) -> None:
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000
        if os.environ.get("WEBUI_SCREENSHOTS"):
            SHOTS.mkdir(exist_ok=True)
            shutil.copy(path, SHOTS / path.name)


def open_page(chromium, url: str):
    page = chromium.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    # The page is ready once the recipe's values are in the knobs.
    page.wait_for_function("() => { const e = document.querySelector('#knob-train-learning-rate textarea, "
                           "#knob-train-learning-rate input'); return e && e.value !== ''; }", timeout=120_000)
    return page


def field(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def fill(page, elem_id: str, text: str) -> None:
    box = field(page, elem_id)
    box.fill(text)
    box.press("Tab")  # commit the value, as a user leaving the field does


def choose(page, elem_id: str, option: str) -> None:
    field(page, elem_id).click()
    page.get_by_role("option", name=option).click()


def expect_text(page, selector: str, text: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    seen = ""
    while time.time() < deadline:
        seen = page.inner_text(selector)
        if text in seen:
            return
        time.sleep(0.3)
    raise AssertionError(f"{selector} never showed {text!r}; it shows {seen!r}")


def wait_for(probe, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _only_run(work: Path) -> RunFolder | None:
    runs = runs_under(work / "runs")
    assert len(runs) <= 1, "one Start must make one run"
    return runs[0] if runs else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
