"""`make chat-gguf`: talk to an exported GGUF through llama-cpp-python, with the same terminal chat as `make chat`.

The prompt is rendered with the chat template stored in the GGUF (the original R1 one), so what you see here is
what llama-cli and Ollama run.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from trainer.chat import HELP, TOP_P, ChatSession, Ending, Printer, repl
from trainer.errors import UserError


class GGUFTemplate:
    """Just enough of a tokenizer for `trainer.data.template.prompt_text`: the GGUF's own Jinja chat template."""

    def __init__(self, template: str, bos_token: str):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.template = ImmutableSandboxedEnvironment().from_string(template)
        self.bos_token = bos_token

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False, **_):
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                    bos_token=self.bos_token)


class LlamaGeneration:
    """One streamed completion; afterwards `ending` says whether eos or the token limit ended it."""

    def __init__(self, llm, prompt: str, max_new_tokens: int, temperature: float):
        self.llm, self.max_new_tokens, self.temperature = llm, max_new_tokens, temperature
        # The prompt already holds bos, so llama.cpp must not add another.
        self.tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        self.ending: Ending | None = None

    def __iter__(self):
        if len(self.tokens) >= self.llm.n_ctx():
            raise UserError(f"the conversation ({len(self.tokens)} tokens) no longer fits in the "
                            f"{self.llm.n_ctx()}-token context", fix="/reset clears the history")
        reason = None
        for piece in self.llm.create_completion(self.tokens, max_tokens=self.max_new_tokens,
                                                temperature=self.temperature, top_p=TOP_P, stream=True, stop=[]):
            choice = piece["choices"][0]
            reason = choice.get("finish_reason") or reason
            yield choice["text"]
        made = max(0, self.llm.n_tokens - len(self.tokens))
        kind = {"stop": "eos", "length": "limit"}.get(reason, "other")
        self.ending = Ending(kind, made + (kind == "eos"), self.max_new_tokens)  # eos is made, not evaluated


def llama_stream(llm, max_new_tokens: int, temperature: float):
    """Prompt text in, text pieces out."""
    return lambda prompt: LlamaGeneration(llm, prompt, max_new_tokens, temperature)


def load_gguf(gguf: Path, context: int) -> tuple:
    """llama-cpp-python's `Llama` on a GGUF file with `context` tokens, and the file's own chat template."""
    from export.llamacpp import load_llama_cpp

    if not gguf.is_file():
        raise UserError("GGUF file not found", where=str(gguf), fix="run `make gguf RUN=...` first")
    llm = load_llama_cpp().Llama(model_path=str(gguf), n_ctx=context, verbose=False, seed=0)
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise UserError("this GGUF has no chat template", where=str(gguf), fix="export it with `make gguf`")
    bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8")
    return llm, GGUFTemplate(template, bos)


def run_gguf_chat(gguf: Path, prompt: str | None, max_new_tokens: int, temperature: float,
                  stdin: TextIO | None = None, stdout: TextIO | None = None, *, context: int = 4096) -> int:
    """Chat in `context` tokens (prompt, history and reply; the run's model.max_seq_length for a run's file)."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    llm, template = load_gguf(gguf, context)
    session = ChatSession(llama_stream(llm, max_new_tokens, temperature), template)
    color = stdout.isatty()
    if prompt is not None:
        session.ask(prompt, Printer(stdout, color))
        return 0
    print(f"{gguf.name}: temperature {temperature}, up to {max_new_tokens} new tokens. {HELP}", file=sys.stderr)
    return repl(session, stdin, stdout, color)
