"""An Ollama Modelfile for an exported R1-Distill GGUF, and the commands to try the model.

The TEMPLATE is the DeepSeek-R1-Distill inference chat template rewritten in Ollama's Go template syntax:

- the last system message's text comes first, with no markers (the BOS token is added by the tokenizer, as
  `tokenizer.ggml.add_bos_token` in the GGUF says, so the template must not write it);
- user turns are `<｜User｜>text`; finished assistant turns are `<｜Assistant｜>answer<｜end▁of▁sentence｜>`
  without their reasoning: Ollama keeps reasoning in a message's separate `thinking` field (Go templates cannot
  split strings), so leaving `.Thinking` out of past turns is what the original's `split('</think>')[-1]` does
  (the `\\n\\n` R1 writes after `</think>`, which Ollama strips, is restored when the turn had reasoning);
- the generation prompt is `<｜Assistant｜><think>\\n`, so the model starts inside its reasoning block;
- a final assistant message is left open (no end token) so Ollama can continue it, with its reasoning.

That last branch is also where `.Thinking` appears between `<think>` and `</think>`: by Ollama's source
(`thinking.InferTags`), it infers the reasoning tags from that spot, which turns on its thinking support.
Tool calls are not supported, as in the original template.

What is proved, and how: tests/export/test_gguf.py renders TEMPLATE with a small interpreter of the Go
text/template subset it uses, written for those tests, and gets exactly the original template's text (less BOS)
on four conversations; its tag inference is a re-implementation of Ollama's heuristic, read from Ollama's source.
Neither Go nor Ollama runs in the tests: how Ollama splits replies into `thinking` and content (and the
whitespace it strips) is taken from its source, not observed.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import UserError
from trainer.r1 import ASSISTANT, EOS, GENERATION_PROMPT, THINK_CLOSE, THINK_OPEN, USER
from trainer.runs import write_text


STOP_TOKENS = (EOS, USER, ASSISTANT)
"""Generation stops at any of these: the end token, or the model starting a new turn by itself."""

DEFAULT_PARAMETERS: dict[str, float | int] = {"temperature": 0.6, "top_p": 0.95, "num_ctx": 8192}
"""DeepSeek's recommended sampling for R1 (temperature 0.5-0.7, top-p 0.95), and room for long reasoning."""

# Every action that ends a line trims the newline after it (`{{-` on the next line), except where the newline is
# part of the output (`<think>` + newline). The template must not end with a newline.
# Ollama eats the whitespace after `</think>` when it splits a reply, but R1 writes `</think>\n\n` and the original
# template keeps those two newlines of a past answer, so they are put back when the turn had reasoning.
# Ollama infers the reasoning tags from the text that starts and ends the block around each `.Thinking`, so the
# past-turn block must not end in text: the end token is written through `$eos`.
TEMPLATE = (
    '{{- $system := "" }}\n'
    '{{- $eos := "' + EOS + '" }}\n'
    '{{- range .Messages }}{{ if eq .Role "system" }}{{ $system = .Content }}{{ end }}{{ end }}\n'
    "{{- $system }}\n"
    "{{- range $i, $_ := .Messages }}\n"
    "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
    '{{- if eq .Role "user" }}' + USER + "{{ .Content }}\n"
    '{{- else if eq .Role "assistant" }}' + ASSISTANT + "\n"
    "{{- if $last }}{{ if .Thinking }}" + THINK_OPEN + "\n{{ .Thinking }}\n" + THINK_CLOSE
    + "\n\n{{ end }}{{ .Content }}\n"
    "{{- else }}{{ if .Thinking }}\n\n{{ end }}{{ .Content }}{{ $eos }}\n"
    "{{- end }}\n"
    "{{- end }}\n"
    '{{- if and $last (ne .Role "assistant") }}' + GENERATION_PROMPT + "{{ end }}\n"
    "{{- end }}"
)


@dataclass(frozen=True)
class RunCommands:
    """Shell commands to print after an export (already quoted for a POSIX shell)."""

    llama_cli: str
    ollama_create: str
    ollama_run: str


def render_modelfile(gguf_name: str, *, system: str | None = None,
                     parameters: dict[str, float | int] | None = None, others: list[str] = ()) -> str:
    """Return the text of a Modelfile for `gguf_name`, a GGUF file in the same folder as the Modelfile.

    `others` names the run's other GGUF files, listed in a comment so that a later export does not hide them."""
    for name in [gguf_name, *others]:
        if "/" in name or "\\" in name or not name.endswith(".gguf") or "\n" in name:
            raise UserError(f"expected a .gguf file name without folders, got {name!r}")
    lines = [f"# Also in this folder: {', '.join(others)} (change FROM to use one)", ""] if others else []
    lines += [f"FROM ./{gguf_name}", "", f'TEMPLATE """{TEMPLATE}"""', ""]
    if system:
        if '"""' in system:
            raise UserError('the system prompt may not contain """ (it ends a Modelfile string)',
                            where="data.system")
        lines += [f'SYSTEM """{system}"""', ""]
    lines += [f'PARAMETER stop "{token}"' for token in STOP_TOKENS]
    for key, value in {**DEFAULT_PARAMETERS, **(parameters or {})}.items():
        lines.append(f"PARAMETER {key} {value}")
    return "\n".join(lines) + "\n"


def write_modelfile(out_dir: Path, gguf_name: str, *, system: str | None = None,
                    parameters: dict[str, float | int] | None = None, others: list[str] = ()) -> Path:
    """Write `<out_dir>/Modelfile` pointing at `./<gguf_name>` and return its path.

    `system` sets a default system prompt (DeepSeek advises none for R1: put instructions in the user turn);
    `parameters` adds to or overrides `DEFAULT_PARAMETERS` (e.g. {"num_ctx": 32768}).
    """
    path = Path(out_dir) / "Modelfile"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_modelfile(gguf_name, system=system, parameters=parameters, others=others)
    write_text(path, text)  # atomic: never half a file
    return path


def run_commands(gguf_path: Path, model_name: str, *, llama_cli: Path | str = "llama-cli",
                 context: int | None = None) -> RunCommands:
    """The commands that chat with the exported model in llama.cpp and register and run it in Ollama.

    `context` is llama-cli's `-c` (the run's `export.run_gguf.context_length`; the Modelfile's num_ctx by default).
    """
    gguf_path = Path(gguf_path)
    modelfile = gguf_path.parent / "Modelfile"
    sampling = [f"--temp {DEFAULT_PARAMETERS['temperature']}", f"--top-p {DEFAULT_PARAMETERS['top_p']}"]
    return RunCommands(
        # llama-cli applies the chat template stored in the GGUF (the original R1 one) in conversation mode.
        llama_cli=" ".join([shlex.quote(str(llama_cli)), "-m", shlex.quote(str(gguf_path)), *sampling,
                            "-c", str(context or DEFAULT_PARAMETERS["num_ctx"])]),
        ollama_create=f"ollama create {shlex.quote(model_name)} -f {shlex.quote(str(modelfile))}",
        ollama_run=f"ollama run {shlex.quote(model_name)}",
    )
