"""A hub id on a machine that cannot reach the Hub: one line and exit code 2 at once, or the cached copy."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainer import hub
from trainer.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", CLOSED)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # recorded, so a test that turns it on is undone afterwards
    hub.hub_reachable.cache_clear()
    yield tmp_path / "hub"
    hub.hub_reachable.cache_clear()


def test_an_uncached_model_without_the_hub_is_one_error_saying_what_to_do(no_hub):
    with pytest.raises(UserError) as caught:
        hub.require_hub("someorg/some-model", "model.base")
    assert "cannot reach the Hugging Face Hub" in caught.value.message and caught.value.where == "model.base"
    assert "model.base=/path/to/folder" in caught.value.fix


def test_a_cached_model_is_used_offline(no_hub, monkeypatch):
    snapshot = no_hub / "models--someorg--some-model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (no_hub / "models--someorg--some-model" / "refs").mkdir()
    (no_hub / "models--someorg--some-model" / "refs" / "main").write_text("abc123")
    hub.require_hub("someorg/some-model", "model.base")
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_training_on_a_hub_id_without_the_hub_fails_in_one_line_before_loading_anything(no_hub, tmp_path, capsys,
                                                                                       monkeypatch):
    from trainer import model
    from trainer.cli import main

    monkeypatch.setattr(model, "load_tokenizer", lambda *a: pytest.fail("the check must come before loading"))
    argv = ["train", "news", "profile=cpu", "model.base=someorg/some-model", f"train.output_dir={tmp_path / 'runs'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.strip()]
    assert len(errors) == 1 and "cannot reach the Hugging Face Hub" in errors[0] and "Traceback" not in err
    assert "someorg/some-model" in err and "model.base=/path/to/folder" in err
    assert not (tmp_path / "runs").exists()


def test_a_hub_dataset_without_the_hub_is_refused_the_same_way(no_hub, tmp_path, capsys):
    from trainer.cli import main

    assert main(["train", "news", "profile=cpu", "data.path=someorg/some-data"]) == 2
    err = capsys.readouterr().err
    assert "data.path" in err and "dataset 'someorg/some-data'" in err and "/path/to/file.jsonl" in err
