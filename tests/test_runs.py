"""The run-folder type: states from the markers a training process leaves, `latest`, and the run roots."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.errors import UserError
from trainer.runs import RunFolder, Serving, all_runs, latest_run, resolve_run, run_roots


def make_run(root: Path, name: str) -> RunFolder:
    run = RunFolder(root / name)
    run.path.mkdir(parents=True)
    run.config.write_text("name: x\n")
    return run


def add_checkpoint(run: RunFolder, step: int) -> None:
    folder = run.checkpoints / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')


def test_states_follow_the_markers(tmp_path):
    run = make_run(tmp_path, "news-20260101-000000")
    assert run.state == "failed"  # nothing to resume from, nobody training
    (run.checkpoints / "checkpoint-9").mkdir(parents=True)  # half-written: no trainer_state.json
    assert run.state == "failed"
    add_checkpoint(run, 4)
    add_checkpoint(run, 12)
    assert run.state == "stopped"
    assert run.latest_checkpoint().name == "checkpoint-12"
    run.claim()  # this test process is alive, so the run is being trained
    assert run.state == "running" and run.owner_pid() == os.getpid()
    run.release()
    assert not run.running_marker.exists() and run.state == "stopped"
    run.mark_complete()
    assert run.state == "finished"
    assert run.require_finished() is run


def test_a_dead_owner_means_not_running(tmp_path):
    run = make_run(tmp_path, "news-20260101-000000")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid is free
    run.running_marker.write_text(json.dumps({"pid": child.pid, "host": os.uname().nodename}))
    assert run.owner_pid() is None and run.state == "failed"
    run.running_marker.write_text(json.dumps({"pid": os.getpid(), "host": "another-machine"}))
    assert run.state == "failed"  # a pid on another machine cannot be checked here, so it does not count


def test_a_server_is_announced_while_its_process_lives_and_withdrawn_by_it_only(tmp_path):
    run = make_run(tmp_path, "news-20260101-000000")
    assert run.live_server() is None
    gguf = run.gguf / "news-20260101-000000-f16.gguf"
    run.announce_server(Serving("http://127.0.0.1:8123/v1", gguf, tmp_path / "secret" / "api-key"))
    assert run.live_server() == Serving("http://127.0.0.1:8123/v1", gguf.resolve(), tmp_path / "secret" / "api-key")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid is free
    state = json.loads(run.server_state.read_text())
    for pid, host in [(child.pid, os.uname().nodename), (os.getpid(), "another-machine")]:
        run.server_state.write_text(json.dumps({**state, "pid": pid, "host": host}))
        assert run.live_server() is None  # a killed server's file counts for nothing
        run.withdraw_server()
        assert run.server_state.exists()  # not this process's announcement: left alone
    run.announce_server(Serving("http://127.0.0.1:8123/v1", gguf, None))
    assert run.live_server().key_file is None
    run.withdraw_server()
    assert not run.server_state.exists() and run.live_server() is None


def test_unfinished_runs_are_refused_with_their_state(tmp_path):
    run = make_run(tmp_path, "news-20260101-000000")
    add_checkpoint(run, 3)
    with pytest.raises(UserError, match="it is stopped"):
        run.require_finished()
    with pytest.raises(UserError, match="run folder not found"):
        RunFolder(tmp_path / "nowhere").require_finished()


def test_resume_never_picks_a_run_that_is_training(tmp_path):
    older, newer = make_run(tmp_path, "news-20260101-000000"), make_run(tmp_path, "news-20260102-000000")
    add_checkpoint(older, 2)
    add_checkpoint(newer, 2)
    newer.claim()
    assert latest_run(tmp_path, "news", complete=False, with_checkpoint=True) == older.path
    newer.release()
    assert latest_run(tmp_path, "news", complete=False, with_checkpoint=True) == newer.path


def test_latest_looks_in_every_output_dir_the_recipes_name(tmp_path, monkeypatch):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "a.yaml").write_text("train:\n  output_dir: elsewhere\n")
    (recipes / "b.yaml").write_text("profiles:\n  cpu:\n    train: {output_dir: cpu-runs}\n")
    (recipes / "broken.yaml").write_text("train: [\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("R1TUNE_RUNS", raising=False)
    assert run_roots(recipes) == [Path("runs"), Path("elsewhere"), Path("cpu-runs")]
    monkeypatch.setenv("R1TUNE_RUNS", str(tmp_path / "mine"))
    assert run_roots(recipes) == [tmp_path / "mine"]
    run = make_run(tmp_path / "mine", "a-20260101-000000")
    run.mark_complete()
    assert resolve_run("latest").path == run.path
    assert [r.path for r in all_runs()] == [run.path]
