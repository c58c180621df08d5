"""`report.md` of an evaluated run: the before/after table, the training summary and answers side by side.

Markdown only, so it reads the same in a terminal, on GitHub and in an editor; the loss curve is linked,
not embedded, and sits next to the report in the run folder.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from trainer.config import Recipe
from trainer.runs import RunFolder

# (key in eval_metrics.json, label, kind, which way is better: +1 higher, -1 lower, 0 neither)
ROWS = (
    ("accuracy", "accuracy (exact match)", "rate", 1),
    ("rouge-1", "ROUGE-1", "score", 1),
    ("rouge-2", "ROUGE-2", "score", 1),
    ("rouge-l", "ROUGE-L", "score", 1),
    ("bleu-4", "BLEU-4", "score", 1),
    ("eval_loss", "eval loss", "loss", -1),
    ("perplexity", "perplexity", "ppl", -1),
    ("think_format_rate", "think format ok", "rate", 1),
    ("reasoning_tokens", "reasoning length (tokens)", "length", 0),
    ("answer_tokens", "answer length (tokens)", "length", 0),
)
ANSWER_SCORES = {
    "labels": ("accuracy",),
    "short": ("accuracy", "rouge-1", "rouge-l"),
    "text": ("rouge-1", "rouge-2", "rouge-l", "bleu-4"),
}
"""Answer scores shown for each kind of reference answer: a label is right or wrong (n-gram overlap of one word
says nothing more); short free answers (a word, a number) get exact match and unigram/longest-common overlap,
but not bigram or 4-gram scores they are too short for; longer text gets ROUGE and BLEU, never exact match."""
SHORT_WORDS, SHORT_CHARS = 3, 32
"""A reference answer is short when it is one line of at most this many words and characters."""
SIDE_BY_SIDE = 5
"""Eval rows shown with their answers in the report (the first ones, not picked)."""
REASONING_CHARS = 160
ANSWER_CHARS = 400
QUESTION_CHARS = 300


def answer_kind(data_format: str, references: list[str]) -> str:
    """`labels` (classification, or a few short answers repeated), `short` (short but varied) or `text`."""
    if data_format == "classification":
        return "labels"
    short = all("\n" not in r.strip() and len(r.split()) <= SHORT_WORDS and len(r.strip()) <= SHORT_CHARS
                for r in references)
    if not short:
        return "text"
    return "labels" if 2 * len(set(r.strip().lower() for r in references)) <= len(references) else "short"


def shown_rows(kind: str | None) -> list[tuple]:
    """The table's rows for a kind of answer (all of them for metrics written before kinds existed)."""
    scores = {key for keys in ANSWER_SCORES.values() for key in keys}
    keep = set(ANSWER_SCORES.get(kind, scores))
    return [row for row in ROWS if row[0] not in scores or row[0] in keep]


def metric_table(metrics: dict) -> str:
    """The before/after table as Markdown, one row per metric, with the change and whether it helped."""
    before, after = metrics["before"], metrics["after"]
    lines = ["| metric | before (base) | after (trained) | change |", "|---|---:|---:|---:|"]
    for key, label, kind, better in shown_rows(metrics.get("answers")):
        b, a = before.get(key), after.get(key)
        lines.append(f"| {label} | {_value(b, kind)} | {_value(a, kind)} | {_change(b, a, kind, better)} |")
    return "\n".join(lines)


def render_report(run_dir: Path, recipe: Recipe, metrics: dict, predictions: list[dict]) -> str:
    run = RunFolder(run_dir)
    training = _read_json(run.metrics)
    parts = [
        f"# Evaluation of {run.name}",
        "",
        (f"Recipe `{recipe.name}`, base model `{recipe.model.base}`, {metrics['samples']} held-out rows "
         f"(`eval_data.jsonl`), greedy decoding up to {metrics['max_new_tokens']} new tokens. Scores compare the "
         "answer after `</think>` with the reference answer; the reasoning is not scored."),
        "",
        "## Before and after training",
        "",
        metric_table(metrics),
        "",
        _notes(recipe, metrics.get("answers")),
        "",
        "## Training",
        "",
        f"![loss]({run.loss_curve.name})" if run.loss_curve.is_file() else "_No loss curve was written._",
        "",
        _training_table(training),
        "",
        f"## Answers side by side (first {min(SIDE_BY_SIDE, len(predictions))} eval rows)",
        "",
        "Reasoning is shortened; `predictions.jsonl` has every row in full. ✓ marks an exact match.",
    ]
    for p in predictions[:SIDE_BY_SIDE]:
        parts += ["", *_example(p)]
    return "\n".join(parts).rstrip() + "\n"


def _notes(recipe: Recipe, kind: str | None) -> str:
    notes = [("Rates and ROUGE/BLEU are percentages; the change of a rate is in percentage points; "
              "▲ marks a change for the better, ▼ for the worse."),
             "Eval loss is the mean cross-entropy over the trained tokens (reasoning and answer) of the same rows.",
             ("The perplexity change is a ratio (after / before): perplexities span orders of magnitude, so their "
              "difference says little.")]
    notes.append({
        "labels": "Answers are labels: exact match (after normalising case and edge punctuation) is the score.",
        "short": ("Answers are short: exact match, plus ROUGE-1 and ROUGE-L for partly right answers (bigram and "
                  "4-gram scores are left out: the answers are too short for them)."),
        "text": ("Answers are free text: ROUGE and BLEU measure overlap with the reference; exact match is left "
                 "out (a correct free-form answer rarely equals the reference word for word)."),
    }.get(kind, "Exact match compares the whole answer with the reference: meaningful for short labels; for "
                "free-form answers read ROUGE and BLEU."))
    if recipe.model.base == "tiny":
        notes.append("This run used the embedded tiny test model: the numbers prove the pipeline, "
                     "not the model.")
    return "\n".join(f"- {n}" for n in notes)


def _training_table(training: dict) -> str:
    if not training:
        return "_metrics.json is missing: no training figures._"
    rows = [
        ("steps", training.get("steps")),
        ("first / final train loss", _pair(training.get("first_loss"), training.get("final_loss"))),
        ("eval loss at the end of training", _num(training.get("eval_loss"), 4)),
        ("trained tokens per second", _num(training.get("trained_tokens_per_s"), 1)),
        ("input tokens per second", _num(training.get("tokens_per_s"), 1)),
        ("training time", f"{training['train_runtime_s']:.0f} s" if training.get("train_runtime_s") else "n/a"),
        ("engine / device", f"{training.get('backend', 'n/a')} / {training.get('device', 'n/a')}"),
    ]
    if training.get("peak_gpu_memory_gib") is not None:
        rows.append(("peak GPU memory", f"{training['peak_gpu_memory_gib']:.2f} GiB"))
    return "\n".join(["| | |", "|---|---:|", *(f"| {k} | {v if v is not None else 'n/a'} |" for k, v in rows)])


def _example(p: dict) -> list[str]:
    reference = _cell(p["reference"], ANSWER_CHARS)
    if p.get("reference_reasoning"):
        reference = f"<sub>thinking: {_cell(p['reference_reasoning'], REASONING_CHARS)}</sub><br>{reference}"
    return [f"### {p['index'] + 1}. {_cell(p['prompt'], QUESTION_CHARS)}", "",
            "| reference | before (base) | after (trained) |", "|---|---|---|",
            f"| {reference} | {_answer_cell(p['before'])} | {_answer_cell(p['after'])} |"]


def _answer_cell(side: dict) -> str:
    reasoning = _cell(side["reasoning"], REASONING_CHARS) if side["reasoning"] else "(empty)"
    if not side["closed"]:
        return f"<sub>thinking: {reasoning}</sub><br>_(no `</think>`: no answer)_"
    answer = _cell(side["answer"], ANSWER_CHARS) if side["answer"] else "_(empty answer)_"
    mark = " ✓" if side["match"] else ""
    return f"<sub>thinking: {reasoning}</sub><br>**{answer}**{mark}"


def _cell(text: str, limit: int) -> str:
    """Text made safe for one Markdown table cell: shortened, one line, pipes and tags escaped."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit].rstrip() + f" … (+{len(text) - limit} chars)"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _value(value, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "rate":
        return f"{100 * value:.1f}%"
    if kind == "score":
        return f"{value:.2f}"
    if kind == "loss":
        return f"{value:.4f}"
    if kind == "ppl":
        if not math.isfinite(value):
            return "inf"
        return f"{value:,.2f}" if value < 1e5 else f"{value:.3g}"
    return f"{value:.1f}"


def _change(before, after, kind: str, better: int) -> str:
    if before is None or after is None or not (math.isfinite(before) and math.isfinite(after)):
        return "n/a"
    diff = after - before
    if kind == "ppl":
        return _ratio(before, after, better)
    if kind == "rate":
        text = f"{100 * diff:+.1f} pts"
    elif kind == "loss":
        text = f"{diff:+.4f}"
    elif kind == "score":
        text = f"{diff:+.2f}"
    else:
        text = f"{diff:+.1f}"
    if better and abs(diff) > 1e-12:
        text += " ▲" if diff * better > 0 else " ▼"
    return text


def _ratio(before: float, after: float, better: int) -> str:
    """`×0.52` (after / before), or `÷8,130` when after is under a hundredth of before."""
    if before <= 0 or after <= 0:
        return "n/a"
    ratio = after / before
    text = f"÷{1 / ratio:,.0f}" if ratio < 0.01 else f"×{ratio:,.3g}"
    if better and abs(ratio - 1) > 1e-12:
        text += " ▲" if (ratio - 1) * better > 0 else " ▼"
    return text


def _pair(first, final) -> str:
    return f"{_num(first, 4)} → {_num(final, 4)}"


def _num(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
