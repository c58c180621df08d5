"""`make chat`: talk to the trained model (or the base with --base) in the terminal, tokens streamed as made.

The reasoning is shown apart from the answer: dimmed on a terminal, framed `[thinking] ... [answer] ...` when
stdout is a pipe or a file. History keeps only the answers of earlier turns (as the R1 template does anyway),
`/reset` clears it, `/exit`, Ctrl-D or Ctrl-C at the prompt quits; Ctrl-C while it writes stops that reply.
"""
from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

from trainer.data.formats import Message
from trainer.r1 import ReasoningStream
from trainer.data.template import prompt_text

DIM, RESET = "\033[2m", "\033[0m"
TOP_P = 0.95
"""DeepSeek's recommended sampling for R1 models: temperature 0.6, top_p 0.95."""
HELP = "type a message; /reset clears the history, /exit (or Ctrl-D) quits"

StreamFn = Callable[[str], Iterable[str]]
"""Prompt text in, generated text pieces out (an object with `stop()` can be interrupted)."""


@dataclass(frozen=True)
class Ending:
    """Why generation stopped: `eos` (the model ended its reply), `limit` (it used every allowed new token)."""

    reason: str
    tokens: int
    """New tokens generated."""
    limit: int


def ending_of(new_ids: Sequence[int], eos_ids: Iterable[int], limit: int) -> Ending:
    """The ending of one generation from the ids it produced (eos included when it was generated)."""
    ended = bool(new_ids) and new_ids[-1] in set(eos_ids)
    return Ending("eos" if ended else "limit" if len(new_ids) >= limit else "other", len(new_ids), limit)


def ending_note(closed: bool, ending: Ending | None) -> str | None:
    """The line said after a reply that had no answer or was cut; None when there is nothing to say."""
    raise_it = "raise it with --max-new-tokens N or ARGS=eval.max_new_tokens=N"
    if ending is None:
        return None if closed else "no answer: the reply ended inside the reasoning (no </think>)"
    if ending.reason == "limit":
        if closed:
            return f"answer cut: the reply used all {ending.limit} new tokens; {raise_it}"
        return f"no answer: the reasoning used all {ending.limit} new tokens before </think>; {raise_it}"
    if closed:
        return None
    if ending.reason == "eos":
        return (f"no answer: the model ended its reply after {ending.tokens} of {ending.limit} tokens without "
                "closing its reasoning (no </think>)")
    return f"no answer: generation stopped after {ending.tokens} of {ending.limit} tokens inside the reasoning"


class Printer:
    """Writes one streamed reply: reasoning dimmed (tty) or framed with `[thinking]` / `[answer]` (plain)."""

    def __init__(self, out: TextIO, color: bool):
        self.out, self.color = out, color
        self.part: str | None = None

    def write(self, kind: str, text: str) -> None:
        if kind != self.part:
            self._switch(kind)
        self.out.write(text)
        self.out.flush()

    def end(self, closed: bool, stopped: bool = False, ending: Ending | None = None) -> None:
        if self.part is None:
            self._switch("reasoning")
        if self.color and self.part == "reasoning":
            self.out.write(RESET)
        note = "stopped" if stopped else ending_note(closed, ending)
        if note:
            self.out.write(f"\n[{note}]")
        self.out.write("\n")
        self.out.flush()

    def _switch(self, kind: str) -> None:
        if self.color:
            if kind == "reasoning":
                self.out.write(DIM)
            else:
                self.out.write((RESET + "\n\n") if self.part == "reasoning" else "")
        else:
            if self.part is None and kind == "answer":
                self.out.write("[thinking]")  # an empty think block still gets its frame
            self.out.write("[thinking] " if kind == "reasoning" else "\n[answer] ")
        self.part = kind


class ChatSession:
    """Multi-turn history plus one call per reply; the model side is any `StreamFn`."""

    def __init__(self, stream: StreamFn, tokenizer, system: str | None = None):
        self.stream, self.tokenizer, self.system = stream, tokenizer, system
        self.history: list[Message] = []

    def reset(self) -> None:
        self.history = []

    def prompt_for(self, text: str) -> str:
        """What the model sees for the next user message: earlier answers only, then the generation prompt."""
        head = [Message("system", self.system)] if self.system else []
        return prompt_text([*head, *self.history, Message("user", text)], self.tokenizer)

    def ask(self, text: str, printer: Printer) -> tuple[str, str] | None:
        """Stream the reply to `printer`; returns (reasoning, answer), or None if the user stopped it."""
        splitter = ReasoningStream()
        parts = {"reasoning": [], "answer": []}
        generation = self.stream(self.prompt_for(text))
        try:
            for piece in generation:
                for kind, chunk in splitter.feed(piece):
                    parts[kind].append(chunk)
                    printer.write(kind, chunk)
        except KeyboardInterrupt:
            getattr(generation, "stop", lambda: None)()
            printer.end(splitter.closed, stopped=True)
            return None
        for kind, chunk in splitter.finish():
            parts[kind].append(chunk)
            printer.write(kind, chunk)
        printer.end(splitter.closed, ending=getattr(generation, "ending", None))
        reasoning, answer = "".join(parts["reasoning"]), "".join(parts["answer"]).strip()
        # Earlier reasoning is not kept: the R1 template would drop it, and it would only cost context.
        self.history += [Message("user", text), Message("assistant", answer)]
        return reasoning, answer


class Generation:
    """`model.generate` on a worker thread, its text streamed through transformers' TextIteratorStreamer."""

    def __init__(self, model, tokenizer, prompt: str, max_new_tokens: int, temperature: float,
                 top_p: float = TOP_P):
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        self.halt = threading.Event()
        self.error: BaseException | None = None
        self.ending: Ending | None = None
        """Set once generation is over (not after a stop): whether eos or the token limit ended it."""
        self.max_new_tokens, self.eos_token_id = max_new_tokens, tokenizer.eos_token_id
        halt = self.halt

        class Halt(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), halt.is_set(), dtype=torch.bool, device=input_ids.device)

        self.streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        encoded = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else \
            {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        kwargs = dict(**{k: v.to(model.device) for k, v in encoded.items()}, max_new_tokens=max_new_tokens,
                      streamer=self.streamer, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, stopping_criteria=StoppingCriteriaList([Halt()]),
                      **sampling)
        self.prompt_length = int(encoded["input_ids"].shape[1])
        self.thread = threading.Thread(target=self._run, args=(model, kwargs), daemon=True)
        self.thread.start()

    def _run(self, model, kwargs) -> None:
        import torch

        try:
            with torch.inference_mode():
                output = model.generate(**kwargs)
            if not self.halt.is_set():
                new_ids = output[0, self.prompt_length:].tolist()
                self.ending = ending_of(new_ids, [self.eos_token_id], self.max_new_tokens)
        except BaseException as exc:  # noqa: BLE001  (re-raised in the reading thread)
            self.error = exc
            self.streamer.end()

    def __iter__(self) -> Iterator[str]:
        yield from self.streamer
        self.thread.join()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self.halt.set()
        self.thread.join()


def model_stream(model, tokenizer, max_new_tokens: int, temperature: float) -> StreamFn:
    return lambda prompt: Generation(model, tokenizer, prompt, max_new_tokens, temperature)


def run_chat(run: str, prompt: str | None = None, base: bool = False, max_new_tokens: int | None = None,
             temperature: float = 0.6, stdin: TextIO | None = None, stdout: TextIO | None = None,
             overrides: Sequence[str] = ()) -> int:
    """The `chat` command: load the model of a finished run and talk until /exit or end of input."""
    from trainer.errors import UserError
    from trainer.hardware import detect
    from trainer.model import load_for_inference, start_engine
    from trainer.recipe import load_resolved
    from trainer.runs import ADAPTER, resolve_run

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if temperature < 0:
        raise UserError(f"--temperature must be 0 (greedy) or more, got {temperature}", where="command line")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {max_new_tokens}", where="command line")
    run_dir = resolve_run(run).require_finished().path
    recipe = load_resolved(run_dir, overrides)
    which = f"base model {recipe.model.base}" if base else f"trained model {run_dir / ADAPTER}"
    print(f"loading the {which} ...", file=sys.stderr, flush=True)
    hardware = detect()
    start_engine(recipe, hardware)
    loaded = load_for_inference(recipe, hardware, None if base else run_dir / ADAPTER)
    limit = max_new_tokens or recipe.eval.max_new_tokens
    session = ChatSession(model_stream(loaded.model, loaded.tokenizer, limit, temperature), loaded.tokenizer,
                          system=recipe.data.system)
    color = stdout.isatty()
    if prompt is not None:
        session.ask(prompt, Printer(stdout, color))
        return 0
    decoding = "greedy" if temperature == 0 else f"temperature {temperature}, top_p {TOP_P}"
    print(f"{which}: {decoding}, up to {limit} new tokens. {HELP}", file=sys.stderr, flush=True)
    return repl(session, stdin, stdout, color)


def repl(session: ChatSession, stdin: TextIO, stdout: TextIO, color: bool) -> int:
    """Read messages until /exit or end of input; commands start with a slash."""
    interactive = stdin.isatty() and stdout.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    while True:
        try:
            line = _read(stdin, stdout, interactive)
        except (EOFError, KeyboardInterrupt):
            stdout.write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            session.reset()
            stdout.write("[history cleared]\n")
            continue
        if text.startswith("/") and " " not in text:
            stdout.write(f"[unknown command {text}; {HELP}]\n")
            continue
        session.ask(text, Printer(stdout, color))


def _read(stdin: TextIO, stdout: TextIO, interactive: bool) -> str:
    if interactive:
        return input("\nyou> ")
    line = stdin.readline()
    if not line:
        raise EOFError
    stdout.write(f"you> {line.rstrip()}\n")  # echoed, so a transcript of piped input reads as a dialogue
    return line
