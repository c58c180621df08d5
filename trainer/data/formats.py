"""Turn a raw row of any supported layout into one conversation: a list of `Message`s.

Assistant messages keep their reasoning apart from the answer, whether it came from its own column
(medical-o1's Complex_CoT), a `reasoning_content` field (DeepSeek's API) or an inline `<think>...</think>`
block (sharegpt / alpaca exports). A row that does not fit its format raises `UserError` naming the row and
the field.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from trainer.config import Source
from trainer.errors import UserError
from trainer.r1 import split_reasoning
from trainer.data.sources import Row

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}
MESSAGE_ROLES = {"system", "user", "assistant"}
MEDIA_COLUMNS = ("images", "videos", "audios")
MEDIA_TAGS = ("<image>", "<video>", "<audio>")
PLACEHOLDER = re.compile(r"\{\{[^{}]*\}\}")
"""`{{name}}`-style placeholders, as in LLaMA-Factory's identity.json, that `data.replace` should fill in."""


@dataclass(frozen=True)
class Message:
    role: str
    """system, user or assistant."""
    content: str
    """The text; for an assistant, the answer alone."""
    reasoning: str | None = None
    """Assistant only: the chain of thought that precedes the answer (None if the row had none)."""


class Dropped(Exception):
    """A well-formed row that is left out on purpose (an empty question, reasoning or answer): counted, not fatal."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


def to_conversation(row: Row, source: Source) -> list[Message]:
    """Map `row` to messages according to `source.format`; a system prompt is put first if there is one.

    Raises `UserError` for a row that does not fit the format, `Dropped` for one with nothing to learn from.
    """
    _refuse_media(row)
    messages = _FORMATS[source.format](row, source)
    system = _optional_text(row, source.columns.system) or source.system
    if system and not any(m.role == "system" for m in messages):
        messages = [Message("system", system), *messages]
    if source.replace:
        messages = [_replaced(m, source.replace) for m in messages]
    _check_order(messages, row)
    _refuse_media_tags(messages, row)
    _check_not_empty(messages)
    return messages


def placeholders(messages: list[Message]) -> set[str]:
    """The `{{...}}` placeholders left in a conversation's text."""
    return {p for m in messages for part in (m.content, m.reasoning or "") for p in PLACEHOLDER.findall(part)}


def _reasoning(row: Row, source: Source) -> list[Message]:
    c = source.columns
    question, reasoning, answer = (_text(row, col, key) for col, key in (
        (c.question, "columns.question"), (c.reasoning, "columns.reasoning"), (c.answer, "columns.answer")))
    if not reasoning.strip():
        raise Dropped("empty reasoning")
    return [Message("user", question), Message("assistant", answer.strip(), reasoning.strip())]


def _alpaca(row: Row, source: Source) -> list[Message]:
    c = source.columns
    instruction = _scalar_text(row, c.instruction, "columns.instruction")
    extra = _optional_text(row, c.input)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    output = _scalar_text(row, c.output, "columns.output")
    return [*_history(row, c.history), Message("user", prompt), _assistant(output)]


def _history(row: Row, column: str) -> list[Message]:
    """Alpaca's earlier turns: a list of [instruction, response] pairs, oldest first."""
    value = row.data.get(column)
    if value is None or value == "":
        return []
    if not isinstance(value, list):
        raise _field_error(row, column, f"must be a list of [instruction, response] pairs, got "
                                        f"{type(value).__name__}")
    out = []
    for i, pair in enumerate(value):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise _field_error(row, f"{column}[{i}]", "must be a pair of texts [instruction, response]")
        out += [Message("user", pair[0]), _assistant(pair[1])]
    return out


def _sharegpt(row: Row, source: Source) -> list[Message]:
    tags = source.tags
    turns = _list(row, source.columns.conversations, "columns.conversations")
    _refuse_tools(row, source)
    roles = {**SHAREGPT_ROLES, tags.user_tag: "user", tags.assistant_tag: "assistant", tags.system_tag: "system"}
    messages = []
    for i, turn in enumerate(turns):
        where = f"{source.columns.conversations}[{i}]"
        if not isinstance(turn, dict) or not isinstance(turn.get(tags.role_tag), str) or tags.content_tag not in turn:
            raise _field_error(row, where, f"each turn must be an object with `{tags.role_tag}` and "
                                           f"`{tags.content_tag}`")
        speaker, value = turn[tags.role_tag], turn[tags.content_tag]
        if speaker in (tags.observation_tag, tags.function_tag):
            raise _field_error(row, f"{where}.{tags.role_tag}", f"tool-call turns ('{speaker}') are not supported",
                               "leave such rows out")
        role = roles.get(speaker)
        if role is None:
            raise _field_error(row, f"{where}.{tags.role_tag}", f"unsupported speaker '{speaker}'",
                               f"use one of {', '.join(dict.fromkeys(roles))}")
        if not isinstance(value, str):
            raise _field_error(row, f"{where}.{tags.content_tag}", f"must be text, got {type(value).__name__}")
        messages.append(_assistant(value) if role == "assistant" else Message(role, value))
    return messages


def _messages(row: Row, source: Source) -> list[Message]:
    turns = _list(row, source.columns.messages, "columns.messages")
    _refuse_tools(row, source)
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
    """An inline reply: `<think>R</think>A` or R1-distilled `R\\n</think>\\n\\nA` split; no `</think>`: all answer."""
    split = split_reasoning(text, stop_at_eos=False)
    return Message("assistant", split.answer, split.reasoning) if split.closed else Message("assistant", text.strip())


def _replaced(message: Message, table: dict[str, str]) -> Message:
    def fill(text: str) -> str:
        for old, new in table.items():
            text = text.replace(old, new)
        return text

    return replace(message, content=fill(message.content),
                   reasoning=None if message.reasoning is None else fill(message.reasoning))


def _check_not_empty(messages: list[Message]) -> None:
    for m in messages:
        if m.role == "user" and not m.content.strip():
            raise Dropped("empty question")
        if m.role == "assistant" and not m.content.strip():
            raise Dropped("empty answer")


def _refuse_media(row: Row) -> None:
    for column in MEDIA_COLUMNS:
        if row.data.get(column):
            raise _field_error(row, column, "images, videos and audio are not supported: R1-Distill models read "
                                            "text only", "use a text-only dataset")


def _refuse_media_tags(messages: list[Message], row: Row) -> None:
    for i, m in enumerate(messages):
        tag = next((t for t in MEDIA_TAGS if t in m.content or t in (m.reasoning or "")), None)
        if tag:
            raise _field_error(row, f"{m.role} turn {i}", f"{tag} marks a multimodal row: R1-Distill models read "
                                                          "text only", "use a text-only dataset")


def _refuse_tools(row: Row, source: Source) -> None:
    if row.data.get(source.columns.tools):
        raise _field_error(row, source.columns.tools, "tool definitions (tool calls) are not supported",
                           "leave such rows out")


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


def _scalar_text(row: Row, column: str, key: str) -> str:
    """A required text field where a number is taken as its text (`"input": 25` means "25")."""
    if row.data.get(column) is None:
        return _text(row, column, key)
    return _optional_text(row, column)


def _optional_text(row: Row, column: str) -> str:
    """An optional text field: missing is empty, a number becomes its text, a list or object is an error."""
    value = row.data.get(column)
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise _field_error(row, column, f"must be text or a number, got {type(value).__name__}")
    return value


def _list(row: Row, column: str, key: str) -> list[Any]:
    value = row.data.get(column)
    if value is None:
        raise _field_error(row, column, "missing field", f"set data.{key}")
    if not isinstance(value, list) or not value:
        raise _field_error(row, column, "must be a non-empty list of turns")
    return value


def _field_error(row: Row, field: str, message: str, fix: str | None = None) -> UserError:
    return UserError(f"field '{field}': {message}", where=row.where, fix=fix)
