"""From a recipe's data section to tokenized, masked train and eval examples, with a report of what happened.

Order of operations: read -> seeded shuffle -> max_samples -> eval split -> rows to conversations -> mix in
extra sources by ratio -> render and mask through the chat template -> truncate or drop what is too long.
Nothing is silently lost: every dropped or cut row is counted in `DataReport`.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from trainer.config import DataConfig, Recipe, Source
from trainer.errors import UserError
from trainer.formats import Message, stray_think_tags, to_conversation
from trainer.runs import write_text
from trainer.sources import Row, read_rows
from trainer.template import IGNORE, Encoded, encode_turns, render_turns


@dataclass(frozen=True)
class Conversation:
    where: str
    """The row it came from, for messages."""
    messages: list[Message]


@dataclass
class DataReport:
    sources: list[str] = field(default_factory=list)
    """One line per source: how many rows were read and used."""
    stray_think: list[str] = field(default_factory=list)
    """Rows dropped because a think tag sat inside a reasoning or an answer."""
    train_examples: int = 0
    eval_examples: int = 0
    truncated: int = 0
    """Examples cut at model.max_seq_length (the end of their reasoning or answer is lost)."""
    dropped_too_long: int = 0
    """Examples dropped: longer than the limit with data.overlong=drop, or a prompt that fills it alone."""
    lengths: list[int] = field(default_factory=list)
    """Token count of every training example."""
    trained_tokens: int = 0

    def summary(self) -> list[str]:
        lines = [*self.sources, f"examples: {self.train_examples} train, {self.eval_examples} eval"]
        if self.stray_think:
            shown = ", ".join(self.stray_think[:3]) + (" ..." if len(self.stray_think) > 3 else "")
            lines.append(f"dropped {len(self.stray_think)} rows with a stray <think>/</think> inside the "
                         f"reasoning or answer: {shown}")
        lines.append(f"truncated at the length limit: {self.truncated}; dropped as too long: "
                     f"{self.dropped_too_long}")
        if self.lengths:
            p = percentiles(self.lengths, (50, 90, 99, 100))
            lines.append(f"tokens per example: p50 {p[0]}, p90 {p[1]}, p99 {p[2]}, max {p[3]}; "
                         f"trained tokens: {self.trained_tokens:,}")
        return lines


@dataclass(frozen=True)
class Prepared:
    train: list[Encoded]
    eval: list[Encoded]
    eval_conversations: list[Conversation]
    """Held-out conversations, kept whole for generation-based evaluation."""
    report: DataReport


@dataclass(frozen=True)
class Conversations:
    train: list[Conversation]
    eval: list[Conversation]
    report: DataReport


def prepare(recipe: Recipe, tokenizer) -> Prepared:
    """Everything `train` and `preview` need from the data section."""
    return encode(load_conversations(recipe), tokenizer, recipe)


def load_conversations(recipe: Recipe) -> Conversations:
    """Read, split and validate every row used; needs no tokenizer, so bad data fails fast."""
    report = DataReport()
    train_rows, eval_rows = load_rows(recipe.data, recipe.train.seed, report)
    train = _conversations(train_rows, recipe.data, report)
    train += _mixed(recipe.data, recipe.train.seed, len(train), report)
    evals = _conversations(eval_rows, recipe.data, report)
    return Conversations(train, evals, report)


def encode(conversations: Conversations, tokenizer, recipe: Recipe) -> Prepared:
    """Render and mask every conversation; fills in the report's length and token figures."""
    report = conversations.report
    train_examples = _encode(conversations.train, tokenizer, recipe, report)
    eval_examples = _encode(conversations.eval, tokenizer, recipe, None)
    if not train_examples:
        raise UserError("no training example is left after rendering and the length limit",
                        where="data", fix="raise model.max_seq_length or check the data")
    report.train_examples, report.eval_examples = len(train_examples), len(eval_examples)
    report.lengths = [len(e.input_ids) for e in train_examples]
    report.trained_tokens = sum(sum(1 for x in e.labels if x != IGNORE) for e in train_examples)
    return Prepared(train_examples, eval_examples, conversations.eval, report)


def load_rows(data: DataConfig, seed: int, report: DataReport) -> tuple[list[Row], list[Row]]:
    """Read the main source, shuffle, cap, and split off (or read) the eval rows."""
    rows = _shuffled(read_rows(data.path, name=data.name, split=data.split), data.shuffle, seed)
    read = len(rows)
    rows = rows[: data.max_samples] if data.max_samples else rows
    if data.eval_path or data.eval_split:
        eval_source = data.eval_path or data.path
        key = "data.eval_path" if data.eval_path else "data.eval_split"
        eval_rows = _shuffled(read_rows(eval_source, name=data.name, split=data.eval_split or "train", key=key),
                              data.shuffle, seed)
    else:
        n_eval = int(round(data.val_size * len(rows))) if data.val_size < 1 else int(data.val_size)
        if n_eval >= len(rows):
            raise UserError(f"val_size={data.val_size} leaves no training rows out of {len(rows)}",
                            where="data.val_size", fix="lower it or add rows")
        eval_rows, rows = rows[:n_eval], rows[n_eval:]
    if data.eval_max_samples:
        eval_rows = eval_rows[: data.eval_max_samples]
    report.sources.append(f"{data.path}: {read} rows read, {len(rows)} for training, {len(eval_rows)} for eval")
    return rows, eval_rows


def save_conversations(conversations: list[Conversation], path: Path) -> None:
    """Held-out conversations as JSONL, so evaluation uses exactly the rows training never saw."""
    lines = [json.dumps({"where": c.where, "messages": [asdict(m) for m in c.messages]}, ensure_ascii=False)
             for c in conversations]
    write_text(path, "".join(line + "\n" for line in lines))


def read_conversations(path: Path) -> list[Conversation]:
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        out.append(Conversation(record["where"], [Message(**m) for m in record["messages"]]))
    return out


def percentiles(values: list[int], qs: tuple[int, ...]) -> list[int]:
    ordered = sorted(values)
    return [ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered))) - 1))] for q in qs]


def _shuffled(rows: list[Row], shuffle: bool, seed: int) -> list[Row]:
    if shuffle:
        rows = list(rows)
        random.Random(seed).shuffle(rows)
    return rows


def _conversations(rows: list[Row], source: Source, report: DataReport) -> list[Conversation]:
    out = []
    for row in rows:
        messages = to_conversation(row, source)
        if stray_think_tags(messages):
            report.stray_think.append(row.where)
            continue
        out.append(Conversation(row.where, messages))
    return out


def _mixed(data: DataConfig, seed: int, n_main: int, report: DataReport) -> list[Conversation]:
    """Rows of each `data.mix` source, `ratio` of them per main training row."""
    out: list[Conversation] = []
    for i, source in enumerate(data.mix):
        key = f"data.mix.{i}.path"
        rows = _shuffled(read_rows(source.path, name=source.name, split=source.split, key=key), True, seed + i + 1)
        rows = rows[: source.max_samples] if source.max_samples else rows
        wanted = max(1, int(round(source.ratio * n_main)))
        taken = rows[:wanted]
        short = f" (only {len(rows)} available)" if len(taken) < wanted else ""
        report.sources.append(f"{source.path}: mixed in {len(taken)} rows at ratio {source.ratio}{short}")
        out += _conversations(taken, source, report)
    return out


def _encode(conversations: list[Conversation], tokenizer, recipe: Recipe,
            report: DataReport | None) -> list[Encoded]:
    turns_of = recipe.data.train_turns
    pairs = [(c.where, t) for c in conversations for t in render_turns(c.messages, tokenizer, turns_of)]
    encoded = encode_turns([t for _, t in pairs], tokenizer, recipe.model.max_seq_length, recipe.data.overlong)
    kept = [replace(e, where=where) for (where, _), e in zip(pairs, encoded) if e is not None]
    if report is not None:
        report.truncated += sum(e.truncated for e in kept)
        report.dropped_too_long += len(encoded) - len(kept)
    return kept
