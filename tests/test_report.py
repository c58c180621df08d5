"""report.md's before/after table: the scores that fit the recipe's answers, and perplexity as a ratio."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.evaluation.report import answer_kind, metric_table

SAMPLES = Path(__file__).resolve().parent.parent / "recipes" / "samples"


def _side(**values) -> dict:
    base = {"accuracy": 0.5, "rouge-1": 40.0, "rouge-2": 20.0, "rouge-l": 35.0, "bleu-4": 10.0, "eval_loss": 2.0,
            "perplexity": 7.39, "think_format_rate": 1.0, "reasoning_tokens": 30.0, "answer_tokens": 5.0}
    return {**base, **values}


def _answers(sample: str, key) -> list[str]:
    rows = [json.loads(line) for line in (SAMPLES / sample).read_text(encoding="utf-8").splitlines()[:40]]
    return [key(row) for row in rows]


@pytest.mark.parametrize("data_format, sample, key, kind", [
    ("classification", "imdb.jsonl", lambda r: "positive" if r["label"] else "negative", "labels"),
    ("sharegpt", "news.jsonl", lambda r: r["conversations"][-1]["value"].split("</think>")[-1].strip(), "labels"),
    ("alpaca", "alpaca.jsonl", lambda r: r["output"], "short"),
    ("reasoning", "medical.jsonl", lambda r: r["Response"], "text"),
])
def test_the_bundled_recipes_answers_are_scored_by_what_they_are(data_format, sample, key, kind):
    assert answer_kind(data_format, _answers(sample, key)) == kind


def _rows(table: str) -> list[str]:
    return [line.split("|")[1].strip() for line in table.splitlines()[2:]]


def test_labels_get_accuracy_and_free_text_gets_rouge_and_bleu_without_exact_match():
    metrics = {"before": _side(), "after": _side()}
    labels = _rows(metric_table({**metrics, "answers": "labels"}))
    assert "accuracy (exact match)" in labels and not any(r.startswith(("ROUGE", "BLEU")) for r in labels)
    short = _rows(metric_table({**metrics, "answers": "short"}))
    assert {"accuracy (exact match)", "ROUGE-1", "ROUGE-L"} <= set(short)
    assert "ROUGE-2" not in short and "BLEU-4" not in short
    text = _rows(metric_table({**metrics, "answers": "text"}))
    assert {"ROUGE-1", "ROUGE-2", "ROUGE-L", "BLEU-4"} <= set(text) and "accuracy (exact match)" not in text
    for rows in (labels, short, text):
        assert {"eval loss", "perplexity", "think format ok"} <= set(rows)


def _perplexity_row(before: float, after: float) -> list[str]:
    table = metric_table({"before": _side(perplexity=before), "after": _side(perplexity=after), "answers": "text"})
    (row,) = [line for line in table.splitlines() if line.startswith("| perplexity |")]
    return [cell.strip() for cell in row.split("|")[2:5]]


def test_perplexity_change_is_a_ratio_not_a_difference():
    # The tiny model's base has a perplexity in the tens of millions: the difference would read -39,037,041.12.
    before, after = 39_037_050.12, 9.0
    cells = _perplexity_row(before, after)
    assert cells == ["3.9e+07", "9.00", f"÷{round(before / after):,} ▲"]
    assert "39,037,041" not in " ".join(cells)
    assert _perplexity_row(20.0, 10.0)[2] == "×0.5 ▲"
    assert _perplexity_row(10.0, 12.5)[2] == "×1.25 ▼"
