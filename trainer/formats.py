"""Turn a raw row of any supported layout into one conversation: a list of `Message`s.

Assistant messages keep their reasoning apart from the answer, whether it came from its own column
(medical-o1's Complex_CoT), a `reasoning_content` field (DeepSeek's API) or an inline `<think>...</think>`
block (sharegpt / alpaca exports). A row that does not fit its format raises `UserError` naming the row and
the field.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer.config import Source
from trainer.errors import UserError
from trainer.sources import Row

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}
MESSAGE_ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True)
class Message:
    role: str
    """system, user or assistant."""
    content: str
    """The text; for an assistant, the answer alone."""
    reasoning: str | None = None
    """Assistant only: the chain of thought that precedes the answer (None if the row had none)."""


def to_conversation(row: Row, source: Source) -> list[Message]:
    """Map `row` to messages according to `source.format`; a system prompt is put first if there is one."""
    messages = _FORMATS[source.format](row, source)
    system = _optional_text(row, source.columns.system) or source.system
    if system and not any(m.role == "system" for m in messages):
        messages = [Message("system", system), *messages]
    _check_order(messages, row)
    return messages


def split_think(text: str) -> tuple[str | None, str]:
    """`<think>\\nR\\n</think>\\n\\nA` -> (R, A); text without a leading think block -> (None, text)."""
    stripped = text.lstrip()
    if not stripped.startswith(THINK_OPEN) or THINK_CLOSE not in stripped:
        return None, text.strip()
    reasoning, _, answer = stripped[len(THINK_OPEN):].partition(THINK_CLOSE)
    return reasoning.strip(), answer.strip()


def stray_think_tags(messages: list[Message]) -> bool:
    """True if a think tag is left inside a reasoning or an answer, where the model would learn it as text."""
    return any(THINK_OPEN in part or THINK_CLOSE in part
               for m in messages for part in (m.content, m.reasoning or ""))


def _reasoning(row: Row, source: Source) -> list[Message]:
    c = source.columns
    question, reasoning, answer = (_text(row, col, key) for col, key in (
        (c.question, "columns.question"), (c.reasoning, "columns.reasoning"), (c.answer, "columns.answer")))
    return [Message("user", question), Message("assistant", answer.strip(), reasoning.strip())]


def _alpaca(row: Row, source: Source) -> list[Message]:
    c = source.columns
    instruction = _text(row, c.instruction, "columns.instruction")
    extra = _optional_text(row, c.input)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [Message("user", prompt), _assistant(_text(row, c.output, "columns.output"))]


def _sharegpt(row: Row, source: Source) -> list[Message]:
    turns = _list(row, source.columns.conversations, "columns.conversations")
    messages = []
    for i, turn in enumerate(turns):
        where = f"{source.columns.conversations}[{i}]"
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or "value" not in turn:
            raise _field_error(row, where, "each turn must be an object with `from` and `value`")
        role = SHAREGPT_ROLES.get(turn["from"])
        if role is None:
            raise _field_error(row, f"{where}.from", f"unsupported speaker '{turn['from']}'",
                               f"use one of {', '.join(SHAREGPT_ROLES)}")
        if not isinstance(turn["value"], str):
            raise _field_error(row, f"{where}.value", f"must be text, got {type(turn['value']).__name__}")
        messages.append(_assistant(turn["value"]) if role == "assistant" else Message(role, turn["value"]))
    return messages


def _messages(row: Row, source: Source) -> list[Message]:
    turns = _list(row, source.columns.messages, "columns.messages")
    messages = []
    for i, turn in enumerate(turns):
        where = f"{source.columns.messages}[{i}]"
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise _field_error(row, where, "each message must be an object with `role` and `content`")
        role, content = turn["role"], turn["content"]
        if role not in MESSAGE_ROLES:
            raise _field_error(row, f"{where}.role", f"unsupported role '{role}'",
                               "use system, user or assistant")
        if not isinstance(content, str):
            raise _field_error(row, f"{where}.content", f"must be text, got {type(content).__name__}")
        reasoning = turn.get("reasoning_content", turn.get("reasoning"))
        if role == "assistant" and isinstance(reasoning, str):
            messages.append(Message("assistant", content.strip(), reasoning.strip()))
        else:
            messages.append(_assistant(content) if role == "assistant" else Message(role, content))
    return messages


def _classification(row: Row, source: Source) -> list[Message]:
    text = _text(row, source.columns.text, "columns.text")
    label = row.data.get(source.columns.label)
    if label is None:
        raise _field_error(row, source.columns.label, "missing label", "set data.columns.label")
    if isinstance(label, int) and not isinstance(label, bool):
        if not 0 <= label < len(source.labels):
            raise _field_error(row, source.columns.label, f"label index {label} is out of range",
                               f"data.labels has {len(source.labels)} names")
        name = source.labels[label]
    elif isinstance(label, str) and label.strip() in source.labels:
        name = label.strip()
    elif isinstance(label, str) and label.strip().isdigit() and int(label) < len(source.labels):
        name = source.labels[int(label)]  # CSV files give every value as text
    else:
        raise _field_error(row, source.columns.label, f"unknown label {label!r}",
                           f"expected an index or one of {', '.join(source.labels)}")
    return [Message("user", source.prompt.replace("{text}", text)), Message("assistant", name, "")]


_FORMATS = {"reasoning": _reasoning, "alpaca": _alpaca, "sharegpt": _sharegpt, "messages": _messages,
            "classification": _classification}


def _assistant(text: str) -> Message:
    reasoning, answer = split_think(text)
    return Message("assistant", answer, reasoning)


def _check_order(messages: list[Message], row: Row) -> None:
    body = [m for m in messages if m.role != "system"]
    if any(m.role == "system" for m in messages[1:]):
        raise _field_error(row, "system", "a system message may only come first")
    if not any(m.role == "assistant" for m in body):
        raise _field_error(row, "conversation", "has no assistant turn to learn from")
    expected = "user"
    for i, message in enumerate(body):
        if message.role != expected:
            raise _field_error(row, "conversation", f"turn {i} is '{message.role}', expected '{expected}'",
                               "turns must alternate user, assistant, user, ...")
        expected = "assistant" if expected == "user" else "user"


def _text(row: Row, column: str, key: str) -> str:
    value = row.data.get(column)
    if value is None:
        present = ", ".join(sorted(map(str, row.data))[:8])
        raise _field_error(row, column, "missing field", f"set data.{key}; this row has: {present}")
    if not isinstance(value, str):
        raise _field_error(row, column, f"must be text, got {type(value).__name__}")
    return value


def _optional_text(row: Row, column: str) -> str:
    value = row.data.get(column)
    return value if isinstance(value, str) else ""


def _list(row: Row, column: str, key: str) -> list[Any]:
    value = row.data.get(column)
    if value is None:
        raise _field_error(row, column, "missing field", f"set data.{key}")
    if not isinstance(value, list) or not value:
        raise _field_error(row, column, "must be a non-empty list of turns")
    return value


def _field_error(row: Row, field: str, message: str, fix: str | None = None) -> UserError:
    return UserError(f"field '{field}': {message}", where=row.where, fix=fix)
