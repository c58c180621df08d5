"""Render a conversation through the R1 chat template and mask it for training.

The rule: for each trained assistant turn, the prompt is exactly what the model sees at inference
(`apply_chat_template(history, add_generation_prompt=True)`, which ends `<｜Assistant｜><think>\\n` and, like
the original template, drops the reasoning of earlier assistant turns), and the trained tokens are exactly
what the model must then produce: `{reasoning}\\n</think>\\n\\n{answer}<｜end▁of▁sentence｜>`.

Prompt and completion are tokenized separately, so the token boundary at `<think>\\n` is the same as at
inference (tokenizing the joined text could merge `\\n` with the first reasoning characters).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from tokenizers import Tokenizer

from trainer.data.formats import Message
from trainer.r1 import reply_text

IGNORE = -100

Part = tuple[str, bool]
"""A piece of rendered text and whether it came from the data (True) or from the template (False)."""

_MARK = "\ue000{}\ue001"  # private-use characters: a placeholder for data text while the template renders
_MARK_RE = re.compile("\ue000(\\d+)\ue001")


@dataclass(frozen=True)
class Turn:
    prompt_parts: tuple[Part, ...]
    """Everything before the trained span: system, history, user turn, generation prompt."""
    completion_parts: tuple[Part, ...]
    """What the model must generate after the prompt, without the end-of-sequence token."""

    @property
    def prompt(self) -> str:
        return "".join(text for text, _ in self.prompt_parts)

    @property
    def completion(self) -> str:
        return "".join(text for text, _ in self.completion_parts)


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    """`IGNORE` on prompt positions, the token id on trained positions."""
    truncated: bool
    where: str = ""
    """The data row it came from (filled in by `trainer.data.dataset`)."""


def assistant_text(message: Message) -> str:
    """The full assistant reply as the model writes it: think block, then the answer."""
    return reply_text(message.reasoning, message.content)


def render_turns(messages: list[Message], tokenizer, train_turns: str = "all") -> list[Turn]:
    """One (prompt, completion) pair per trained assistant turn; `train_turns="last"` keeps the final one."""
    positions = [i for i, m in enumerate(messages) if m.role == "assistant"]
    if train_turns == "last":
        positions = positions[-1:]
    return [_turn(messages[:i], messages[i], tokenizer) for i in positions]


def prompt_text(history: list[Message], tokenizer) -> str:
    """The inference prompt for `history` (ending with a user turn), generation prompt included."""
    return "".join(text for text, _ in prompt_parts(history, tokenizer))


def prompt_parts(history: list[Message], tokenizer) -> list[Part]:
    """The inference prompt, each piece marked as data or template text.

    The template renders placeholders instead of the data's text, which is put back afterwards: so the template
    cannot act on what the data says (the R1 template cuts an assistant turn at a `</think>` in its text), and
    encoding knows which `<think>` or `<｜User｜>` the template wrote (a token) and which the data quoted (text).
    """
    texts: list[str] = []

    def mark(text: str) -> str:
        texts.append(text)
        return _MARK.format(len(texts) - 1)

    chat = [{"role": m.role, "content": reply_text(mark((m.reasoning or "").strip()), mark(m.content.strip()))
             if m.role == "assistant" else mark(m.content)} for m in history]
    rendered = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    parts: list[Part] = []
    for i, piece in enumerate(_MARK_RE.split(rendered)):
        if piece:
            parts.append((texts[int(piece)], True) if i % 2 else (piece, False))
    return parts


def _turn(history: list[Message], reply: Message, tokenizer) -> Turn:
    prompt = prompt_parts(history, tokenizer)
    head, middle = reply_text(_MARK, _MARK).split(_MARK)[:2]  # `<think>\n`, `\n</think>\n\n`
    opened = _opened_prefix("".join(text for text, _ in prompt), head)
    completion = [(head[len(opened):], False), ((reply.reasoning or "").strip(), True), (middle, False),
                  (reply.content.strip(), True)]
    return Turn(tuple(prompt), tuple(p for p in completion if p[0]))


def _opened_prefix(prompt: str, reply: str) -> str:
    """The part of `reply` that the generation prompt already wrote (`<think>\\n` for R1)."""
    for size in range(min(len(prompt), len(reply)), 0, -1):
        if prompt.endswith(reply[:size]):
            return reply[:size]
    return ""


def encode_turns(turns: list[Turn], tokenizer, max_length: int,
                 overlong: str = "truncate") -> list[Encoded | None]:
    """Tokenize and mask; examples with no trained token left (or too long with `overlong="drop"`) are None."""
    if not turns:
        return []
    prompts = encode_parts([t.prompt_parts for t in turns], tokenizer)
    completions = encode_parts([t.completion_parts for t in turns], tokenizer)
    eos = tokenizer.eos_token_id
    out = []
    for prompt_ids, completion_ids in zip(prompts, completions):
        ids = prompt_ids + completion_ids + [eos]
        labels = [IGNORE] * len(prompt_ids) + completion_ids + [eos]
        truncated = len(ids) > max_length
        if truncated and overlong == "drop":
            out.append(None)
            continue
        ids, labels = ids[:max_length], labels[:max_length]
        out.append(Encoded(ids, labels, truncated) if any(x != IGNORE for x in labels) else None)
    return out


def encode_parts(sequences: list[tuple[Part, ...]], tokenizer) -> list[list[int]]:
    """Token ids of each sequence of parts: only template text yields special tokens, data text never does.

    The text between two of the template's tokens (template and data text together) is encoded in one go, as
    the tokenizer itself does around its added tokens, so the ids equal ordinary encoding whenever the data
    quotes no token; a quoted `</think>` becomes the ordinary pieces of that text.
    """
    tokens = tokenizer.get_added_vocab()
    splitter = re.compile("(" + "|".join(map(re.escape, sorted(tokens, key=len, reverse=True))) + ")")
    layouts: list[list[int | str]] = []
    for parts in sequences:
        layout: list[int | str] = [""]
        for text, from_data in parts:
            for i, piece in enumerate([text] if from_data else splitter.split(text)):
                if i % 2:
                    layout += [tokens[piece], ""]
                else:
                    layout[-1] += piece
        layouts.append([item for item in layout if item != ""])
    runs = [item for layout in layouts for item in layout if isinstance(item, str)]
    encoded = iter(e.ids for e in _plain_backend(tokenizer).encode_batch(runs, add_special_tokens=False))
    return [[i for item in layout for i in ([item] if isinstance(item, int) else next(encoded))]
            for layout in layouts]


def _plain_backend(tokenizer) -> Tokenizer:
    """The tokenizer's backend without its added tokens: text in, ordinary pieces out, never a special token."""
    plain = getattr(tokenizer, "_r1_plain_backend", None)
    if plain is None:
        spec = json.loads(tokenizer.backend_tokenizer.to_str())
        spec["added_tokens"] = []
        plain = Tokenizer.from_str(json.dumps(spec))
        tokenizer._r1_plain_backend = plain
    return plain


def encode_conversation(messages: list[Message], tokenizer, max_length: int, train_turns: str = "all",
                        overlong: str = "truncate") -> list[Encoded | None]:
    """The whole rule in one pure call: conversation -> masked token sequences, one per trained turn."""
    return encode_turns(render_turns(messages, tokenizer, train_turns), tokenizer, max_length, overlong)
