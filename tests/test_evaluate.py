"""`python -m trainer eval`: metric aggregation by hand, and the whole stage on one tiny trained run."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from trainer.evaluation import evaluate as ev
from trainer.cli import main
from trainer.errors import UserError
from trainer.runs import resolve_run
from trainer.evaluation.metrics import corpus_scores
from trainer.data.template import Encoded

EVAL_ROWS = 6


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One finished tiny run: a few steps, 6 eval rows, short generations (shared by this module).

    Training batches of 6 make its final evaluation one batch of all 6 eval rows, so its eval loss is the
    token mean that `eval` computes.
    """
    root = tmp_path_factory.mktemp("runs")
    code = main(["train", "news", "profile=cpu", f"train.output_dir={root}", "train.max_steps=4",
                 "train.batch_size=6", "train.eval_steps=null", f"data.val_size={EVAL_ROWS}",
                 f"eval.samples={EVAL_ROWS}", "eval.max_new_tokens=12", "eval.batch_size=4"])
    assert code == 0
    (run,) = [p for p in root.iterdir() if p.is_dir()]
    return run


@pytest.fixture(scope="module")
def first_eval(tiny_run, tmp_path_factory):
    """The first evaluation, with the base-model cache in a fresh folder; records every model load."""
    cache = tmp_path_factory.mktemp("eval-cache")
    loads: list = []
    real = ev.load_for_inference
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ev, "before_cache_dir", lambda: cache)
        mp.setattr(ev, "load_for_inference", lambda r, h, w=None: loads.append(w) or real(r, h, w))
        metrics = ev.evaluate(tiny_run)
    return metrics, loads, cache


# ---- aggregation on fixed predictions, computed by hand ---------------------------------------------------------

COMPLETIONS = [
    "think a\n</think>\n\n经济",  # closed, correct
    "think b</think>",  # closed, empty answer: bad format, wrong
    "never closed",  # unclosed: all reasoning, no answer
    "<think>x</think>\n\n**Sports**.",  # echoed <think> dropped; label match ignores case and edge punctuation
]
REFERENCES = ["经济", "体育", "教育", "sports"]


def test_score_row_and_aggregate_by_hand():
    rows = [ev.score_row(c, r, len) for c, r in zip(COMPLETIONS, REFERENCES)]  # "tokens" = characters here
    assert [r["reasoning"] for r in rows] == ["think a", "think b", "never closed", "x"]
    assert [r["answer"] for r in rows] == ["经济", "", "", "**Sports**."]
    assert [r["match"] for r in rows] == [True, False, False, True]
    assert [r["format_ok"] for r in rows] == [True, False, False, True]
    assert [r["closed"] for r in rows] == [True, True, False, True]
    assert rows[0]["rouge-1"] == pytest.approx(100, abs=1e-4) and rows[1]["bleu-4"] == 0

    result = ev.aggregate(rows, REFERENCES, loss=2.0)
    assert result["accuracy"] == 0.5
    assert result["think_format_rate"] == 0.5
    assert result["reasoning_tokens"] == (7 + 7 + 12 + 1) / 4
    assert result["answer_tokens"] == (2 + 0 + 0 + 11) / 4
    assert result["eval_loss"] == 2.0 and result["perplexity"] == pytest.approx(math.exp(2.0))
    expected = corpus_scores(["经济", "", "", "**Sports**."], REFERENCES)
    assert {k: result[k] for k in expected} == expected

    no_loss = ev.aggregate(rows[:1], REFERENCES[:1], loss=None)
    assert no_loss["eval_loss"] is None and no_loss["perplexity"] is None and no_loss["accuracy"] == 1.0
    assert ev.deltas({"a": 1.0, "b": None}, {"a": 3.0, "b": 2.0}) == {"a": 2.0, "b": None}


def test_loss_batches_respect_batch_size_and_token_budget():
    examples = [Encoded([1] * n, [1] * n, False) for n in (10, 50, 30, 20, 40)]
    batches = ev.loss_batches(examples, batch_size=2, budget=10_000)
    assert [[len(e.input_ids) for e in b] for b in batches] == [[50, 40], [30, 20], [10]]
    tight = ev.loss_batches(examples, batch_size=8, budget=80)
    assert [[len(e.input_ids) for e in b] for b in tight] == [[50], [40, 30], [20, 10]]


# ---- the stage on a tiny run ---------------------------------------------------------------------------------------

def test_eval_writes_predictions_metrics_and_report(first_eval, tiny_run):
    metrics, loads, _ = first_eval
    assert loads == [None, tiny_run / "adapter"]  # base ("before"), then the trained model
    lines = (tiny_run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == EVAL_ROWS
    eval_rows = [json.loads(line) for line in (tiny_run / "eval_data.jsonl").read_text("utf-8").splitlines()]
    for i, line in enumerate(lines):
        row = json.loads(line)
        assert {"index", "where", "prompt", "reference", "before", "after"} <= row.keys()
        assert row["index"] == i and row["prompt"] == eval_rows[i]["messages"][-2]["content"]
        assert row["reference"] == eval_rows[i]["messages"][-1]["content"]
        for side in ("before", "after"):
            assert {"reasoning", "answer", "closed", "match", "format_ok", "rouge-1", "rouge-2", "rouge-l",
                    "bleu-4", "reasoning_tokens", "answer_tokens"} <= row[side].keys()

    saved = json.loads((tiny_run / "eval_metrics.json").read_text(encoding="utf-8"))
    assert saved["samples"] == EVAL_ROWS and saved["before"] == metrics["before"]
    for side in ("before", "after"):
        assert {"accuracy", "rouge-1", "rouge-2", "rouge-l", "bleu-4", "eval_loss", "perplexity",
                "think_format_rate", "reasoning_tokens", "answer_tokens"} <= saved[side].keys()
    # Teacher-forced loss over the same rows as training's final evaluation (one batch of 6): the same number.
    trained = json.loads((tiny_run / "metrics.json").read_text(encoding="utf-8"))
    assert saved["after"]["eval_loss"] == pytest.approx(trained["eval_loss"], rel=1e-4)
    assert saved["before"]["eval_loss"] > saved["after"]["eval_loss"]

    report = (tiny_run / "report.md").read_text(encoding="utf-8")
    assert "| metric | before (base) | after (trained) | change |" in report
    assert "| eval loss |" in report and "| accuracy (exact match) |" in report
    assert "![loss](loss_curve.png)" in report and (tiny_run / "loss_curve.png").is_file()
    assert f"| steps | {trained['steps']} |" in report
    assert "| reference | before (base) | after (trained) |" in report
    for row in map(json.loads, lines[:5]):
        assert row["prompt"] in report
    assert report.count("\n### ") == 5
    assert not list(tiny_run.glob(".*.tmp*")) and not list(tiny_run.glob(".report.md.*"))


def test_second_eval_uses_the_before_cache(first_eval, tiny_run, monkeypatch, capsys):
    metrics, _, cache = first_eval
    assert len(list(cache.glob("*.json"))) == 1
    loads: list = []
    real = ev.load_for_inference
    monkeypatch.setattr(ev, "before_cache_dir", lambda: cache)
    monkeypatch.setattr(ev, "load_for_inference", lambda r, h, w=None: loads.append(w) or real(r, h, w))
    assert main(["eval", str(tiny_run), "--samples", str(EVAL_ROWS)]) == 0
    assert loads == [tiny_run / "adapter"]  # the base model was not loaded again
    captured = capsys.readouterr()
    assert "from the cache" in captured.err
    assert "| metric | before (base) | after (trained) | change |" in captured.out  # the table is printed
    again = json.loads((tiny_run / "eval_metrics.json").read_text(encoding="utf-8"))
    assert again["before"] == metrics["before"] and again["after"] == metrics["after"]


def test_eval_refuses_an_unfinished_run(tiny_run, tmp_path, capsys):
    partial = tmp_path / "news-partial"
    partial.mkdir()
    for name in ("config.yaml", "eval_data.jsonl"):
        shutil.copy(tiny_run / name, partial / name)
    assert main(["eval", str(partial)]) == 2
    assert "did not finish" in capsys.readouterr().err
    assert not (partial / "report.md").exists()
    assert main(["eval", str(tmp_path / "nowhere")]) == 2
    assert "run folder not found" in capsys.readouterr().err


def test_latest_is_the_newest_finished_run(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    for i, name in enumerate(["news-20250101-000000", "medical-20250102-000000", "news-20250103-000000"]):
        (runs / name).mkdir(parents=True)
        if i < 2:
            (runs / name / "COMPLETE").write_text("x")
            os.utime(runs / name / "COMPLETE", (1_000 + i, 1_000 + i))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("R1TUNE_RUNS", raising=False)
    assert resolve_run("latest").path == Path("runs") / "medical-20250102-000000"  # the third never finished
    assert resolve_run("some/folder").path == Path("some/folder")
    with pytest.raises(UserError, match="no finished run"):
        resolve_run("latest", root=tmp_path / "empty")
