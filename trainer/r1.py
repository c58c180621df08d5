"""The DeepSeek-R1-Distill protocol in one place: special tokens, generation prompt, chat template, reasoning split.

Everything that writes or reads R1 text (data rendering, evaluation, chat, the tiny model, the Ollama Modelfile,
the server and the web UI) takes these from here, so the protocol cannot drift between stages.

R1 replies look like `<think>\\nreasoning\\n</think>\\n\\nanswer<｜end▁of▁sentence｜>`; because the generation
prompt already opens `<think>\\n`, a completion starts inside the reasoning. `split_reasoning` cuts a whole text,
`ReasoningStream` cuts the same way while pieces arrive (chat, server); both give the same result for any
chunking.
"""
from __future__ import annotations

import importlib.metadata
import importlib.resources
from dataclasses import dataclass
from functools import cache

from trainer.errors import UserError

# DeepSeek spells its special tokens with fullwidth bars (U+FF5C) and U+2581, not ASCII.
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
GENERATION_PROMPT = f"{ASSISTANT}{THINK_OPEN}\n"
"""What the template appends for the model's turn: the model starts inside its reasoning block."""

# Ids in the real R1-Distill-Qwen tokenizer (and the tiny one built like it).
EOS_ID, USER_ID, ASSISTANT_ID, BOS_ID = 151_643, 151_644, 151_645, 151_646
THINK_OPEN_ID, THINK_CLOSE_ID = 151_648, 151_649


@cache
def chat_template() -> str:
    """The original (inference) DeepSeek-R1-Distill chat template, as shipped inside the installed trl."""
    resource = importlib.resources.files("trl") / "chat_templates" / "deepseek_r1_distill.jinja"
    if not resource.is_file():
        raise UserError("trl has no chat_templates/deepseek_r1_distill.jinja",
                        where=f"trl {importlib.metadata.version('trl')}",
                        fix="install the trl version pinned by the project (make setup)")
    return resource.read_text(encoding="utf-8")


def reply_text(reasoning: str | None, answer: str) -> str:
    """A whole assistant reply as the model writes it: think block, then the answer."""
    return f"{THINK_OPEN}\n{(reasoning or '').strip()}\n{THINK_CLOSE}\n\n{answer.strip()}"


@dataclass(frozen=True)
class Split:
    """A reply cut into its think block and its answer, both stripped of surrounding whitespace.

    `closed` says whether the text ever wrote `</think>`.
    """

    reasoning: str
    answer: str
    closed: bool


def split_reasoning(text: str, *, stop_at_eos: bool = True) -> Split:
    """Split a reply at its first `</think>`.

    - With `stop_at_eos`, the end-of-sentence text and everything after it is dropped: generation stops at EOS,
      so what follows is padding (R1-Distill pads with the EOS token) or output that was never meant to count.
      Data rows are split with `stop_at_eos=False`: their text is never a token.
    - One leading `<think>` is dropped: some decoders echo the tag the prompt opened, and data rows often
      carry it (`<think>\\nR\\n</think>\\n\\nA`); R1-distilled data without it (`R\\n</think>\\n\\nA`) splits the same.
    - Without `</think>` the think block never closed: all text is reasoning, the answer is empty and `closed`
      is False, so a truncated chain of thought is never scored as an answer.
    - With two or more `</think>` the first one wins. The prompt opened exactly one think block and the first
      closer ends it (vLLM's DeepSeek-R1 reasoning parser does the same); a later closer stays in the answer.
    - An empty answer after `</think>` is kept empty (closed True).
    """
    if stop_at_eos:
        eos = text.find(EOS)
        if eos >= 0:
            text = text[:eos]
    text = text.lstrip()
    if text.startswith(THINK_OPEN):
        text = text[len(THINK_OPEN):]
    reasoning, sep, answer = text.partition(THINK_CLOSE)
    return Split(reasoning=reasoning.strip(), answer=answer.strip(), closed=bool(sep))


class ReasoningStream:
    """`split_reasoning` for text that arrives in pieces: `feed` each piece, then `finish`.

    Each call returns `(kind, text)` chunks, kind `reasoning` or `answer`; the chunks of a kind joined are exactly
    that field of `split_reasoning(whole text)`, for any chunking. A `</think>` or end token split across pieces
    is still found: text that could be the start of one (and trailing whitespace, which the split strips) is held
    back until the next piece shows what it is.
    """

    def __init__(self) -> None:
        self.pending = ""
        self.in_answer = False
        self.closed = False
        self.started = False  # anything emitted yet in the current part
        self.open_checked = False  # the leading `<think>` echo has been looked for
        self.ended = False  # the end token was seen: nothing after it counts

    def feed(self, piece: str) -> list[tuple[str, str]]:
        if self.ended:
            return []
        self.pending += piece
        cut = self.pending.find(EOS)
        if cut >= 0:
            self.pending, self.ended = self.pending[:cut], True
        out: list[tuple[str, str]] = []
        if not self.in_answer:
            if not self.started:
                self.pending = self.pending.lstrip()
            if not self.open_checked:
                if THINK_OPEN.startswith(self.pending) and not self.ended:
                    return out  # empty, or maybe an echoed <think>: wait for more
                self.open_checked = True
                if self.pending.startswith(THINK_OPEN):
                    self.pending = self.pending[len(THINK_OPEN):].lstrip()
            head, sep, tail = self.pending.partition(THINK_CLOSE)
            if not sep:
                self._emit_safe(out, "reasoning", (THINK_CLOSE, EOS))
                return out
            self._emit(out, "reasoning", head.rstrip())
            self.in_answer, self.closed, self.started, self.pending = True, True, False, tail
        if not self.started:
            self.pending = self.pending.lstrip()
        self._emit_safe(out, "answer", (EOS,))
        return out

    def finish(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        self._emit(out, "answer" if self.in_answer else "reasoning", self.pending.rstrip())
        self.pending = ""
        return out

    def _emit_safe(self, out: list, kind: str, markers: tuple[str, ...]) -> None:
        """Emit what cannot be part of a marker still arriving, nor whitespace that might end the text."""
        keep = len(self.pending) - _marker_prefix(self.pending, markers)
        while keep > 0 and self.pending[keep - 1].isspace():
            keep -= 1
        self._emit(out, kind, self.pending[:keep])
        self.pending = self.pending[keep:]

    def _emit(self, out: list, kind: str, text: str) -> None:
        if text:
            out.append((kind, text))
            self.started = True


def _marker_prefix(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is the start of one of `markers` (0 if none)."""
    best = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:size]):
                best = size
                break
    return best
