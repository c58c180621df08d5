"""Show what training will see: each example's prompt, and its trained span marked."""
from __future__ import annotations

import json
import sys

from trainer.data.dataset import Prepared
from trainer.data.template import IGNORE, Encoded

OPEN, CLOSE = "\u27e6", "\u27e7"  # ⟦ ⟧ around trained spans when colour is unavailable
GREEN, RESET = "\033[32m", "\033[0m"


def print_examples(prepared: Prepared, tokenizer, limit: int, as_json: bool, ids: bool = False) -> None:
    """Rendered examples on stdout, then the data summary (as JSON: a last `{"summary": {...}}` line)."""
    for index, example in enumerate(prepared.train[: max(limit, 0)]):
        if as_json:
            print(json.dumps(example_record(example, tokenizer, ids), ensure_ascii=False))
        else:
            print(render(index, example, tokenizer, colour=sys.stdout.isatty()))
    if as_json:
        print(json.dumps({"summary": prepared.report.as_dict()}, ensure_ascii=False))
    else:
        print("\n".join(["summary:", *("  " + line for line in prepared.report.summary())]))


def example_record(example: Encoded, tokenizer, ids: bool = False) -> dict:
    """`prompt_text` is everything before the first trained token; `trained_text` the label tokens in order.

    With `ids`, the exact `input_ids` and `labels` (-100 where masked) that training receives.
    """
    first = next(i for i, label in enumerate(example.labels) if label != IGNORE)
    trained = [label for label in example.labels if label != IGNORE]
    record = {"where": example.where,
              "prompt_text": tokenizer.decode(example.input_ids[:first], skip_special_tokens=False),
              "trained_text": tokenizer.decode(trained, skip_special_tokens=False),
              "n_tokens": len(example.input_ids), "n_trained": len(trained), "truncated": example.truncated}
    if ids:
        record.update(input_ids=example.input_ids, labels=example.labels)
    return record


def render(index: int, example: Encoded, tokenizer, colour: bool) -> str:
    """The whole sequence with each run of trained tokens wrapped in ⟦ ⟧ (or shown in green)."""
    pieces, run, trained_run = [], [], False
    for token, label in zip(example.input_ids, example.labels):
        trained = label != IGNORE
        if trained != trained_run and run:
            pieces.append(_span(tokenizer.decode(run, skip_special_tokens=False), trained_run, colour))
            run = []
        run.append(token)
        trained_run = trained
    if run:
        pieces.append(_span(tokenizer.decode(run, skip_special_tokens=False), trained_run, colour))
    n_trained = sum(label != IGNORE for label in example.labels)
    cut = ", truncated" if example.truncated else ""
    head = f"--- example {index + 1} ({example.where}): {len(example.input_ids)} tokens, {n_trained} trained{cut}"
    return f"{head}\n{''.join(pieces)}\n"


def _span(text: str, trained: bool, colour: bool) -> str:
    if not trained:
        return text
    return f"{GREEN}{text}{RESET}" if colour else f"{OPEN}{text}{CLOSE}"
