"""`make chat-gguf`: talk to an exported GGUF through llama-cpp-python, with the same terminal chat as `make chat`.

The prompt is rendered with the chat template stored in the GGUF (the original R1 one), so what you see here is
what llama-cli and Ollama run.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from trainer.chat import HELP, TOP_P, ChatSession, Printer, repl
from trainer.errors import UserError


class GGUFTemplate:
    """Just enough of a tokenizer for `trainer.template.prompt_text`: the GGUF's own Jinja chat template."""

    def __init__(self, template: str, bos_token: str):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.template = ImmutableSandboxedEnvironment().from_string(template)
        self.bos_token = bos_token

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False, **_):
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                    bos_token=self.bos_token)


def llama_stream(llm, max_new_tokens: int, temperature: float):
    """Prompt text in, text pieces out; the prompt already holds bos, so llama.cpp must not add another."""

    def stream(prompt: str):
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        if len(tokens) >= llm.n_ctx():
            raise UserError(f"the conversation ({len(tokens)} tokens) no longer fits in the {llm.n_ctx()}-token "
                            "context", fix="/reset clears the history")
        pieces = llm.create_completion(tokens, max_tokens=max_new_tokens, temperature=temperature, top_p=TOP_P,
                                       stream=True, stop=[])
        for piece in pieces:
            yield piece["choices"][0]["text"]

    return stream


def run_gguf_chat(gguf: Path, prompt: str | None, max_new_tokens: int, temperature: float,
                  stdin: TextIO | None = None, stdout: TextIO | None = None, *, context: int = 4096) -> int:
    """Chat in `context` tokens (prompt, history and reply; the run's model.max_seq_length for a run's file)."""
    from export.llamacpp import load_llama_cpp

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if not gguf.is_file():
        raise UserError("GGUF file not found", where=str(gguf), fix="run `make gguf RUN=...` first")
    llm = load_llama_cpp().Llama(model_path=str(gguf), n_ctx=context, verbose=False, seed=0)
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise UserError("this GGUF has no chat template", where=str(gguf), fix="export it with `make gguf`")
    bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8")
    session = ChatSession(llama_stream(llm, max_new_tokens, temperature), GGUFTemplate(template, bos))
    color = stdout.isatty()
    if prompt is not None:
        session.ask(prompt, Printer(stdout, color))
        return 0
    print(f"{gguf.name}: temperature {temperature}, up to {max_new_tokens} new tokens. {HELP}", file=sys.stderr)
    return repl(session, stdin, stdout, color)
