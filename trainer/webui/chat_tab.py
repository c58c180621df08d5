"""Chat tab: a finished run's adapter (the library's generation) or one of its GGUF files, streamed, with the
reasoning in a collapsible block apart from the answer.

A GGUF file that `make serve` is serving now (its run folder's `serving.json` names the file) is chatted with
through that server, over its OpenAI protocol: the server splits the reasoning (`reasoning_content`) from the
answer (`content`). Any other file is loaded here with llama-cpp-python, like an adapter with the library, and
the reasoning is split by the same streaming splitter as the terminal chat. Either way the history the model
sees keeps only earlier answers, as the R1 template does.
"""
from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr

from trainer.errors import UserError
from trainer.data.formats import Message
from trainer.r1 import ReasoningStream
from trainer.runs import RunFolder, Serving, all_runs
from trainer.webui import views

REASONING_TITLE = "Reasoning"
_loaded: dict = {}
_lock = threading.Lock()


def model_choices() -> list[tuple[str, str]]:
    """(label, value) for each finished run's adapter and each of its GGUF files."""
    choices = []
    for run in all_runs():
        if run.finished:
            choices.append((f"{run.name} (adapter)", str(run.path)))
            choices += [(f"{run.name}: {Path(f).name}", f) for f in views.gguf_files(run)]
    return choices


class LocalModel:
    """A model loaded in this process: the prompt is rendered here (by the subclass's `tokenizer`), the text
    streamed by its `stream(prompt, max_new_tokens, temperature, top_p)`, and the reasoning split off here."""

    def reply(self, history: list[Message], max_new_tokens: int, temperature: float, top_p: float):
        """`("reasoning" | "answer", text)` pieces of the reply to `history`."""
        from trainer.data.template import prompt_text

        splitter = ReasoningStream()
        for piece in self.stream(prompt_text(history, self.tokenizer), max_new_tokens, temperature, top_p):
            yield from splitter.feed(piece)
        yield from splitter.finish()


class AdapterModel(LocalModel):
    """The trained model of a run, loaded in this process like `make chat` loads it."""

    where = "the adapter, loaded here"

    def __init__(self, run: RunFolder):
        from trainer.hardware import detect
        from trainer.model import load_for_inference, start_engine
        from trainer.recipe import load_resolved

        self.recipe = load_resolved(run.require_finished().path)
        hardware = detect()
        start_engine(self.recipe, hardware)
        loaded = load_for_inference(self.recipe, hardware, run.adapter)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer

    def stream(self, prompt: str, max_new_tokens: int, temperature: float, top_p: float):
        from trainer.chat import Generation

        return Generation(self.model, self.tokenizer, prompt, max_new_tokens, temperature, top_p)


class GGUFModel(LocalModel):
    """A GGUF file through llama-cpp-python, prompted with the chat template stored in the file, in the context
    `make serve` and `make chat-gguf` give it (the run's recipe's)."""

    where = "the GGUF file, loaded here (no `make serve` is serving it)"

    def __init__(self, path: Path):
        from export.chat import load_gguf
        from export.serve import defaults_for

        self.llm, self.tokenizer = load_gguf(path, defaults_for(path)[1])

    def stream(self, prompt: str, max_new_tokens: int, temperature: float, top_p: float):
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        for piece in self.llm.create_completion(tokens, max_tokens=max_new_tokens, temperature=temperature,
                                                top_p=top_p, stream=True, stop=[]):
            yield piece["choices"][0]["text"]


class ServedModel:
    """A GGUF file that `make serve` is serving: each reply is one streamed request to that server."""

    def __init__(self, serving: Serving, api_key: str | None):
        self.serving, self.api_key = serving, api_key
        self.where = f"`make serve` at {serving.base_url}"

    def reply(self, history: list[Message], max_new_tokens: int, temperature: float, top_p: float):
        from export.serve import chat_stream

        messages = [{"role": m.role, "content": m.content} for m in history]
        return chat_stream(self.serving.base_url, messages, self.api_key, max_tokens=max_new_tokens,
                           temperature=temperature, top_p=top_p)


def served_model(gguf: Path) -> ServedModel | None:
    """The server `make serve` runs on this very file now, or None (then the file is loaded here)."""
    from export.run_gguf import run_of_gguf

    run_dir = run_of_gguf(gguf)
    serving = RunFolder(run_dir).live_server() if run_dir is not None else None
    if serving is None or serving.gguf != gguf.resolve():
        return None
    try:  # the key file is the server's own, in a folder only the user who started it can read
        key = serving.key_file.read_text("utf-8").strip() if serving.key_file else None
    except OSError:
        return None  # someone else's server: this user cannot send its key
    return ServedModel(serving, key)


def model_for(choice: str):
    """The model for a dropdown value: a GGUF file being served goes to its server; anything else is loaded here,
    one at a time, kept until another is chosen. Asked on every message: a server may start or stop meanwhile."""
    path = Path(choice)
    served = served_model(path) if path.suffix == ".gguf" else None
    if served is not None:
        return served
    if _loaded.get("choice") != choice:
        _loaded.clear()
        _loaded["model"] = GGUFModel(path) if path.suffix == ".gguf" else AdapterModel(RunFolder(path))
        _loaded["choice"] = choice
    return _loaded["model"]


def model_history(messages: list[dict], system: str) -> list[Message]:
    """What the model sees: the system prompt, user turns and earlier answers (not the reasoning blocks)."""
    history = [Message("system", system.strip())] if system and system.strip() else []
    for m in messages:
        if m.get("metadata"):  # a reasoning block
            continue
        history.append(Message(m["role"], _text(m["content"])))
    return history


def respond(text: str, messages: list[dict], choice: str, system: str, temperature, top_p, max_new_tokens):
    """Stream one reply into the chat: a collapsible reasoning block, then the answer; and say who answers."""
    messages = list(messages or [])
    if not text or not text.strip():
        yield messages, "", gr.update()
        return
    if not choice:
        yield messages + [_note("choose a finished run or a GGUF file first")], text, ""
        return
    with _lock:  # one model is loaded here at a time, and generates for one chat at a time
        try:
            model = model_for(choice)
        except UserError as error:
            yield messages + [_note(f"error: {error.render()}")], text, ""
            return
        if isinstance(model, LocalModel):
            yield from _stream_reply(model, text, messages, system, temperature, top_p, max_new_tokens)
            return
    yield from _stream_reply(model, text, messages, system, temperature, top_p, max_new_tokens)  # the server queues


def _stream_reply(model, text: str, messages: list[dict], system: str, temperature, top_p, max_new_tokens):
    history = [*model_history(messages, system), Message("user", text)]
    thinking = {"role": "assistant", "content": "", "metadata": {"title": REASONING_TITLE, "status": "pending"}}
    answer = {"role": "assistant", "content": ""}
    messages += [{"role": "user", "content": text}, thinking]
    where = f"answered by {model.where}"
    try:
        for kind, chunk in model.reply(history, int(max_new_tokens), float(temperature), float(top_p)):
            _add(messages, thinking, answer, kind, chunk)
            yield messages, "", where
    except UserError as error:  # the server went away or refused: said in the chat, not as a traceback
        messages.append(_note(f"error: {error.render()}"))
    else:
        if not any(m is answer for m in messages):
            answer["content"] = "_no answer: the reply ended inside the reasoning (max new tokens may be too few)_"
            messages.append(answer)
    thinking["metadata"]["status"] = "done"
    yield messages, "", where


def _add(messages: list, thinking: dict, answer: dict, kind: str, chunk: str) -> None:
    if kind == "reasoning":
        thinking["content"] += chunk
        return
    thinking["metadata"]["status"] = "done"
    if not any(m is answer for m in messages):
        messages.append(answer)
    answer["content"] += chunk


def _note(text: str) -> dict:
    return {"role": "assistant", "content": text, "metadata": {"title": "note"}}


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # Gradio may hand back [{"type": "text", "text": ...}]
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)


def build():
    with gr.Row():
        choice = gr.Dropdown(model_choices(), label="model", info="a finished run's adapter, or one of its GGUF files",
                             elem_id="chat-model", scale=3)
        refresh = gr.Button("Refresh models", scale=0)
    with gr.Row():
        system = gr.Textbox(label="system prompt", elem_id="chat-system", scale=3)
        temperature = gr.Slider(0, 1.5, value=0.6, step=0.05, label="temperature", info="0: greedy")
        top_p = gr.Slider(0.05, 1, value=0.95, step=0.05, label="top-p")
        max_new = gr.Number(value=512, precision=0, minimum=1, label="max new tokens", elem_id="chat-max-new")
    chatbot = gr.Chatbot(label="chat", height=420, elem_id="chatbot")
    where = gr.Markdown(elem_id="chat-where")
    with gr.Row():
        text = gr.Textbox(placeholder="type a message, Enter to send", show_label=False, scale=5,
                          elem_id="chat-input")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
        clear = gr.Button("Clear", scale=1, elem_id="chat-clear")
    inputs = [text, chatbot, choice, system, temperature, top_p, max_new]
    text.submit(respond, inputs, [chatbot, text, where])
    send.click(respond, inputs, [chatbot, text, where])
    clear.click(lambda: [], None, chatbot)
    refresh.click(lambda: gr.Dropdown(choices=model_choices()), None, choice)
    return choice
