"""From a recipe's data section to tokenized, masked train and eval examples, with a report of what happened.

Order of operations: read (a LLaMA-Factory dataset_info.json entry is resolved first) -> seeded shuffle ->
max_samples -> rows to conversations (bad rows collected, empty ones dropped) -> eval split -> mix in extra
sources by ratio -> render and mask through the chat template -> truncate or drop what is too long.
Nothing is silently lost: every dropped or cut row is counted in `DataReport`, and every bad row is reported.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from trainer.config import DataConfig, Recipe, Source
from trainer.data.dataset_info import describe, is_dataset_info
from trainer.errors import UserError, UserErrors
from trainer.data.formats import Dropped, Message, placeholders, to_conversation
from trainer.runs import write_text
from trainer.data.sources import Row, read_rows
from trainer.data.template import IGNORE, Encoded, encode_turns, render_turns


@dataclass(frozen=True)
class Conversation:
    where: str
    """The row it came from, for messages."""
    messages: list[Message]


@dataclass
class DataReport:
    sources: list[str] = field(default_factory=list)
    """One line per source: rows read, and how many were used after drops."""
    rows_read: int = 0
    dropped: list[tuple[str, str]] = field(default_factory=list)
    """(where, why) of every row left out: an empty question, reasoning or answer, or too long."""
    warnings: list[str] = field(default_factory=list)
    train_examples: int = 0
    eval_examples: int = 0
    truncated: int = 0
    """Examples cut at model.max_seq_length (the end of their reasoning or answer is lost), train and eval."""
    dropped_too_long: int = 0
    """Examples dropped, train and eval: longer than the limit with data.overlong=drop, or a prompt that fills it."""
    lengths: list[int] = field(default_factory=list)
    """Token count of every training example."""
    trained_tokens: int = 0

    def summary(self) -> list[str]:
        lines = [*self.sources, f"examples: {self.train_examples} train, {self.eval_examples} eval"]
        rows = [(w, why) for w, why in self.dropped if not why.startswith("too long")]
        if rows:
            reasons = ", ".join(f"{n} {why}" for why, n in _by_count(why for _, why in rows))
            shown = ", ".join(f"{w} ({why})" for w, why in rows[:3]) + (" ..." if len(rows) > 3 else "")
            lines.append(f"dropped {len(rows)} rows ({reasons}): {shown}")
        lines.append(f"truncated at the length limit: {self.truncated}; dropped as too long: "
                     f"{self.dropped_too_long}")
        if self.lengths:
            p = percentiles(self.lengths, (50, 90, 99, 100))
            lines.append(f"tokens per example: p50 {p[0]}, p90 {p[1]}, p99 {p[2]}, max {p[3]}; "
                         f"trained tokens: {self.trained_tokens:,}")
        return [*lines, *(f"warning: {w}" for w in self.warnings)]

    def as_dict(self) -> dict:
        """The summary as data (`preview --json`): counts, and each dropped row with where and why."""
        return {"rows_read": self.rows_read, "sources": self.sources,
                "examples": {"train": self.train_examples, "eval": self.eval_examples},
                "truncated": self.truncated, "dropped_too_long": self.dropped_too_long,
                "dropped": [{"where": w, "why": why} for w, why in self.dropped],
                "trained_tokens": self.trained_tokens, "warnings": self.warnings}


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
    """Read, validate and split every row used; needs no tokenizer, so bad data fails fast.

    Every bad row of every source is reported at once, before any problem with the split sizes.
    """
    data, seed, report, problems = recipe.data, recipe.train.seed, DataReport(), []
    main, num_samples = _described(data, "data")
    rows = _sampled(read_rows(main.path, name=main.name, split=main.split), data.shuffle, seed, num_samples)
    read = len(rows)
    report.rows_read += read
    rows = rows[: data.max_samples] if data.max_samples else rows
    conversations = _conversations(rows, main, report, problems)
    evals: list[Conversation] = []
    if data.eval_path or data.eval_split:
        key = "data.eval_path" if data.eval_path else "data.eval_split"
        eval_rows = _shuffled(read_rows(data.eval_path or main.path, name=main.name,
                                        split=data.eval_split or "train", key=key), data.shuffle, seed)
        report.rows_read += len(eval_rows)
        evals, train = _conversations(eval_rows, main, report, problems), conversations
    else:
        n_eval = int(round(data.val_size * len(conversations))) if data.val_size < 1 else int(data.val_size)
        if not conversations and not problems:
            problems.append(UserError(f"no training row is left: {_losses(report)}", where=str(data.path),
                                      fix="check the data"))
        elif n_eval >= len(conversations) and not problems:
            problems.append(UserError(f"val_size={data.val_size} leaves no training rows out of "
                                      f"{len(conversations)}", where="data.val_size", fix="lower it or add rows"))
        evals, train = conversations[:n_eval], conversations[n_eval:]
    if data.eval_max_samples:
        evals = evals[: data.eval_max_samples]
    report.sources.append(f"{data.path}: {read} rows read, {len(train)} for training, {len(evals)} for eval"
                          + _after_drops(report))
    train += _mixed(data, seed, len(train), report, problems)
    if problems:
        raise UserErrors(problems)
    return Conversations(train, evals, report)


def encode(conversations: Conversations, tokenizer, recipe: Recipe) -> Prepared:
    """Render and mask every conversation; fills in the report's length and token figures."""
    report = conversations.report
    train_examples = _encode(conversations.train, tokenizer, recipe, report, "train")
    eval_examples = _encode(conversations.eval, tokenizer, recipe, report, "eval")
    if not train_examples:
        raise UserError(f"no training example is left: {_losses(report)}", where="data",
                        fix="raise model.max_seq_length" if report.dropped_too_long else "check the data")
    report.train_examples, report.eval_examples = len(train_examples), len(eval_examples)
    report.lengths = [len(e.input_ids) for e in train_examples]
    report.trained_tokens = sum(sum(1 for x in e.labels if x != IGNORE) for e in train_examples)
    return Prepared(train_examples, eval_examples, conversations.eval, report)


def save_conversations(conversations: list[Conversation], path: Path) -> None:
    """Held-out conversations as JSONL, so evaluation uses exactly the rows training never saw."""
    lines = [json.dumps({"where": c.where, "messages": [asdict(m) for m in c.messages]}, ensure_ascii=False)
             for c in conversations]
    write_text(path, "".join(line + "\n" for line in lines))


def read_conversations(path: Path) -> list[Conversation]:
    out = []
    for line in Path(path).read_text(encoding="utf-8").split("\n"):  # not splitlines: U+2028 is valid in a row
        if not line.strip():
            continue
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


def _sampled(rows: list[Row], shuffle: bool, seed: int, num_samples: int | None) -> list[Row]:
    """Shuffled rows; with LLaMA-Factory's `num_samples`, that many: a sample, or all plus seeded repeats."""
    rows = _shuffled(rows, shuffle or num_samples is not None, seed)
    if num_samples is None or num_samples == len(rows):
        return rows
    if num_samples < len(rows):
        return rows[:num_samples]
    extra = random.Random(seed + 1).choices(rows, k=num_samples - len(rows))
    return rows + [replace(row, where=f"{row.where} (repeat {i + 1})") for i, row in enumerate(extra)]


def _described(source: Source, key: str) -> tuple[Source, int | None]:
    """The source itself, or the one a LLaMA-Factory dataset_info.json entry describes."""
    if not is_dataset_info(source.path):
        return source, None
    described = describe(source, key)
    return replace(described.source, replace=source.replace, system=source.system), described.num_samples


def _conversations(rows: list[Row], source: Source, report: DataReport,
                   problems: list[UserError]) -> list[Conversation]:
    out, found = [], set()
    for row in rows:
        try:
            messages = to_conversation(row, source)
        except UserError as error:
            problems.append(error)
            continue
        except Dropped as drop:
            report.dropped.append((row.where, drop.why))
            continue
        found |= placeholders(messages)
        out.append(Conversation(row.where, messages))
    if found:
        shown = ", ".join(sorted(found)[:4])
        report.warnings.append(f"{source.path}: the data has placeholders {shown} that will be trained as written; "
                               'fill them in with data.replace, e.g. data.replace={"{{name}}": "MyBot"}')
    return out


def _by_count(reasons) -> list[tuple[str, int]]:
    return sorted(Counter(reasons).items(), key=lambda item: (-item[1], item[0]))


def _after_drops(report: DataReport) -> str:
    return f" (after dropping {len(report.dropped)})" if report.dropped else ""


def _losses(report: DataReport) -> str:
    parts = [f"{n} rows dropped: {why}" for why, n in _by_count(why for _, why in report.dropped)]
    if report.dropped_too_long:
        parts.append(f"{report.dropped_too_long} examples longer than model.max_seq_length")
    return "; ".join(parts) or "no rows"


def _mixed(data: DataConfig, seed: int, n_main: int, report: DataReport,
           problems: list[UserError]) -> list[Conversation]:
    """Rows of each `data.mix` source, `ratio` of them per main training row."""
    out: list[Conversation] = []
    for i, mix in enumerate(data.mix):
        key = f"data.mix.{i}"
        source, num_samples = _described(mix, key)
        rows = _sampled(read_rows(source.path, name=source.name, split=source.split, key=f"{key}.path"), True,
                        seed + i + 1, num_samples)
        report.rows_read += len(rows)
        rows = rows[: mix.max_samples] if mix.max_samples else rows
        wanted = max(1, int(round(mix.ratio * n_main)))
        dropped_before = len(report.dropped)
        taken = _conversations(rows[:wanted], source, report, problems)
        short = f" (only {len(rows)} available)" if len(rows) < wanted else ""
        lost = len(report.dropped) - dropped_before
        report.sources.append(f"{mix.path}{'[' + mix.name + ']' if mix.name else ''}: mixed in {len(taken)} rows "
                              f"at ratio {mix.ratio}{short}" + (f" (after dropping {lost})" if lost else ""))
        out += taken
    return out


def _encode(conversations: list[Conversation], tokenizer, recipe: Recipe, report: DataReport,
            split: str) -> list[Encoded]:
    turns_of = recipe.data.train_turns
    pairs = [(c.where, t) for c in conversations for t in render_turns(c.messages, tokenizer, turns_of)]
    encoded = encode_turns([t for _, t in pairs], tokenizer, recipe.model.max_seq_length, recipe.data.overlong)
    kept = [replace(e, where=where) for (where, _), e in zip(pairs, encoded) if e is not None]
    report.truncated += sum(e.truncated for e in kept)
    report.dropped_too_long += len(encoded) - len(kept)
    report.dropped += [(where, f"too long ({split})") for (where, _), e in zip(pairs, encoded) if e is None]
    return kept
