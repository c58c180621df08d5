"""The web UI's pure parts: knobs from the schema, overrides, the make command, the login rule, run views."""
from __future__ import annotations

import json
import shlex

import pytest

from trainer.config import Recipe, TrainConfig
from trainer.errors import UserError
from trainer.recipe import parse_override
from trainer.runs import RunFolder
from trainer.webui import knobs, views
from trainer.webui.app import auth_for


def test_knob_docs_are_the_schema_docstrings():
    assert knobs.knob("train.learning_rate").doc == "Peak learning rate."
    assert knobs.knob("data.path").doc.startswith("Data file (.jsonl")  # declared on a base class
    assert knobs.knob("train.method").choices == ("lora", "full", "freeze")
    assert knobs.knob("lora.rank").choices == ()
    assert all(knobs.knob(key).doc for key in knobs.MAIN_KEYS if key != "profile") and knobs.knob("profile").doc


def test_only_changed_values_become_overrides():
    recipe = Recipe(train=TrainConfig(learning_rate=2e-4, max_steps=None))
    made = knobs.overrides(recipe, {"train.learning_rate": "2e-4", "train.max_steps": "none",
                                    "train.batch_size": "4", "lora.target_modules": "[q_proj, v_proj]",
                                    "train.epochs": ""})
    assert made == ["train.batch_size=4", "lora.target_modules=[q_proj, v_proj]"]


def test_the_make_command_reads_back_as_the_same_arguments():
    args = ["profile=cpu", "train.max_steps=5", "data.system=You are kind; answer briefly."]
    line = knobs.make_command("news", args)
    words = shlex.split(line)
    assert words[:4] == ["make", "train", "RECIPE=news", "GPU=cpu"]
    passed = shlex.split(words[4].removeprefix("ARGS="))  # make hands ARGS to the CLI split like a shell
    assert passed == ["train.max_steps=5", "data.system=You are kind; answer briefly."]
    assert parse_override(passed[1]) == ("data.system", "You are kind; answer briefly.")


def test_any_address_but_loopback_needs_a_login():
    assert auth_for("127.0.0.1", None) is None
    with pytest.raises(UserError, match="needs a login"):
        auth_for("0.0.0.0", None)
    assert auth_for("0.0.0.0", "me:pa:ss") == ("me", "pa:ss")
    with pytest.raises(UserError, match="user:password"):
        auth_for("0.0.0.0", "me")


def test_run_views_read_the_log_and_progress(tmp_path):
    run = RunFolder(tmp_path / "news-20260101-000000")
    run.path.mkdir()
    run.train_log.write_text("run folder: x\n" + "\n".join(json.dumps(e) for e in [
        {"step": 1, "loss": 3.5}, {"step": 2, "loss": "nan"}, {"step": 2, "eval_loss": 3.0}, {"step": 3, "loss": 2.0},
    ]) + "\n")
    assert views.losses(run) == [{"step": 1, "loss": 3.5}, {"step": 3, "loss": 2.0}]
    run.progress.write_text(json.dumps({"state": "failed", "step": 3, "total": 12, "loss": 2.0,
                                        "error": "boom"}))
    line = views.progress_line(run)
    assert "failed" in line and "step 3/12 (25%)" in line and "boom" in line
    assert views.duration(3725) == "1 h 2 min" and views.duration(75) == "1 min 15 s"
    row = views.runs_table([run])[0]
    assert row[1] == "failed" and row[2] == "3/12"


def test_the_form_passes_only_what_the_user_changed_and_checks_like_the_cli(tmp_path):
    from trainer.webui import train_tab

    values = train_tab.prefill("news")  # data path, format, then the knobs, as the page shows them
    data_path, data_format, knob_values = values[0], values[1], values[2:]
    unchanged = [data_path, None, data_format, "", "", *knob_values]
    assert train_tab.form_args("news", *unchanged) == []
    changed = dict(zip(knobs.MAIN_KEYS, knob_values))
    changed["train.learning_rate"] = "-1"
    form = [data_path, None, data_format, "question=Q", "eval.samples=3", *changed.values()]
    assert train_tab.form_args("news", *form) == ["data.columns.question=Q", "train.learning_rate=-1",
                                                  "eval.samples=3"]
    message, command = train_tab.check("news", *form)
    assert message == "error: command line (train.learning_rate=-1): train.learning_rate: must be above 0, got -1.0"
    assert command == ""
    missing = str(tmp_path / "nope.jsonl")
    assert train_tab.start("news", missing, None, data_format, "", "", *knob_values).startswith(
        f"error, nothing started: command line (data.path={missing}): data.path: file not found")


def test_the_train_tab_shows_the_planners_peak_for_the_chosen_card():
    from trainer.hardware import Hardware
    from trainer.plan import plan_recipe
    from trainer.recipe import find_recipe, load_recipe
    from trainer.webui.train_tab import RECIPES_DIR, predicted_memory

    def on_gpu(*overrides):  # as the page loads it on a CUDA machine
        return load_recipe(find_recipe("medical", RECIPES_DIR), ["profile=4090", *overrides], Hardware(cuda=True))

    recipe = on_gpu()
    shown = predicted_memory(recipe)
    assert f"{plan_recipe(recipe, '4090', choose_settings=False).peak_gib:.2f} GiB" in shown and ": fits" in shown
    too_big = predicted_memory(on_gpu("model.max_seq_length=16384", "train.batch_size=16",
                                      "train.gradient_checkpointing=false"))
    assert too_big.startswith("memory:") and "cannot fit" in too_big
    assert predicted_memory(load_recipe(find_recipe("medical", RECIPES_DIR), ["profile=cpu"],
                                        Hardware(cuda=False))) == ""  # the tiny model: no GPU plan


def test_log_boxes_show_the_latest_lines(tmp_path):
    # A box holding more lines than it shows opened at the top of them, so the page showed old lines while
    # training went on: each box now gets exactly as many lines as it shows, ending with the newest.
    from trainer.webui import jobs
    from trainer.webui.app import build

    log = tmp_path / "train.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)) + "step 1/9\rstep 2/9\rstep 3/9\n", encoding="utf-8")
    shown = jobs.tail(log).splitlines()
    assert len(shown) == jobs.LOG_LINES and shown[-1] == "step 3/9" and shown[-2] == "line 99"
    boxes = {c.elem_id: c for c in build().blocks.values() if getattr(c, "elem_id", None) in
             ("log", "eval-log", "export-log")}
    assert set(boxes) == {"log", "eval-log", "export-log"}
    assert all(box.max_lines == jobs.LOG_LINES for box in boxes.values())
