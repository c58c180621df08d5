"""Render a conversation through the R1 chat template and mask it for training.

The rule: for each trained assistant turn, the prompt is exactly what the model sees at inference
(`apply_chat_template(history, add_generation_prompt=True)`, which ends `<｜Assistant｜><think>\\n` and, like
the original template, drops the reasoning of earlier assistant turns), and the trained tokens are exactly
what the model must then produce: `{reasoning}\\n</think>\\n\\n{answer}<｜end▁of▁sentence｜>`.

Prompt and completion are tokenized separately, so the token boundary at `<think>\\n` is the same as at
inference (tokenizing the joined text could merge `\\n` with the first reasoning characters).
"""
from __future__ import annotations

import importlib.metadata
import importlib.resources
from dataclasses import dataclass
from functools import cache

from trainer.errors import UserError
from trainer.formats import THINK_CLOSE, THINK_OPEN, Message

IGNORE = -100
GENERATION_PROMPT = "<｜Assistant｜><think>\n"


@cache
def r1_chat_template() -> str:
    """The original (inference) DeepSeek-R1-Distill chat template, as shipped inside the installed trl."""
    resource = importlib.resources.files("trl") / "chat_templates" / "deepseek_r1_distill.jinja"
    if not resource.is_file():
        raise UserError("trl has no chat_templates/deepseek_r1_distill.jinja",
                        where=f"trl {importlib.metadata.version('trl')}",
                        fix="install the trl version pinned by the project (make setup)")
    return resource.read_text(encoding="utf-8")


@dataclass(frozen=True)
class Turn:
    prompt: str
    """Everything before the trained span: system, history, user turn, generation prompt."""
    completion: str
    """What the model must generate after the prompt, without the end-of-sequence token."""


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    """`IGNORE` on prompt positions, the token id on trained positions."""
    truncated: bool
    where: str = ""
    """The data row it came from (filled in by `trainer.data`)."""


def assistant_text(message: Message) -> str:
    """The full assistant reply as the model writes it: think block, then the answer."""
    return f"{THINK_OPEN}\n{(message.reasoning or '').strip()}\n{THINK_CLOSE}\n\n{message.content.strip()}"


def render_turns(messages: list[Message], tokenizer, train_turns: str = "all") -> list[Turn]:
    """One (prompt, completion) pair per trained assistant turn; `train_turns="last"` keeps the final one."""
    positions = [i for i, m in enumerate(messages) if m.role == "assistant"]
    if train_turns == "last":
        positions = positions[-1:]
    return [_turn(messages[:i], messages[i], tokenizer) for i in positions]


def prompt_text(history: list[Message], tokenizer) -> str:
    """The inference prompt for `history` (ending with a user turn), generation prompt included."""
    chat = [{"role": m.role, "content": assistant_text(m) if m.role == "assistant" else m.content}
            for m in history]
    return tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)


def _turn(history: list[Message], reply: Message, tokenizer) -> Turn:
    prompt = prompt_text(history, tokenizer)
    full = assistant_text(reply)
    opened = _opened_prefix(prompt, full)
    return Turn(prompt=prompt, completion=full[len(opened):])


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
    prompts = tokenizer([t.prompt for t in turns], add_special_tokens=False)["input_ids"]
    completions = tokenizer([t.completion for t in turns], add_special_tokens=False)["input_ids"]
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


def encode_conversation(messages: list[Message], tokenizer, max_length: int, train_turns: str = "all",
                        overlong: str = "truncate") -> list[Encoded | None]:
    """The whole rule in one pure call: conversation -> masked token sequences, one per trained turn."""
    return encode_turns(render_turns(messages, tokenizer, train_turns), tokenizer, max_length, overlong)
