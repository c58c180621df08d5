"""Chat tab: a finished run's adapter (the library's generation) or one of its GGUF files (llama-cpp-python),
streamed, with the reasoning in a collapsible block apart from the answer.

The reasoning is split from the answer by the same streaming splitter as the terminal chat; the history the
model sees keeps only earlier answers, as the R1 template does.
"""
from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr

from trainer.errors import UserError
from trainer.data.formats import Message
from trainer.r1 import ReasoningStream
from trainer.runs import RunFolder, all_runs
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


class AdapterModel:
    """The trained model of a run, loaded in this process like `make chat` loads it."""

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


class GGUFModel:
    """A GGUF file through llama-cpp-python, prompted with the chat template stored in the file."""

    def __init__(self, path: Path, context: int = 4096):
        from llama_cpp import Llama

        from export.chat import GGUFTemplate

        self.llm = Llama(model_path=str(path), n_ctx=context, verbose=False, seed=0)
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise UserError("this GGUF has no chat template", where=str(path), fix="export it with make gguf")
        bos = self.llm.detokenize([self.llm.token_bos()], special=True).decode("utf-8")
        self.tokenizer = GGUFTemplate(template, bos)

    def stream(self, prompt: str, max_new_tokens: int, temperature: float, top_p: float):
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        for piece in self.llm.create_completion(tokens, max_tokens=max_new_tokens, temperature=temperature,
                                                top_p=top_p, stream=True, stop=[]):
            yield piece["choices"][0]["text"]


def model_for(choice: str):
    """The loaded model for a dropdown value; one at a time, kept until another is chosen."""
    if _loaded.get("choice") != choice:
        _loaded.clear()
        path = Path(choice)
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
    """Stream one reply into the chat: a collapsible reasoning block, then the answer."""
    from trainer.data.template import prompt_text

    messages = list(messages or [])
    if not text or not text.strip():
        yield messages, ""
        return
    if not choice:
        yield messages + [_note("choose a finished run or a GGUF file first")], text
        return
    with _lock:
        try:
            model = model_for(choice)
        except UserError as error:
            yield messages + [_note(f"error: {error.render()}")], text
            return
        prompt = prompt_text([*model_history(messages, system), Message("user", text)], model.tokenizer)
        thinking = {"role": "assistant", "content": "",
                    "metadata": {"title": REASONING_TITLE, "status": "pending"}}
        answer = {"role": "assistant", "content": ""}
        messages += [{"role": "user", "content": text}, thinking]
        splitter = ReasoningStream()
        pieces = model.stream(prompt, int(max_new_tokens), float(temperature), float(top_p))
        for piece in pieces:
            for kind, chunk in splitter.feed(piece):
                _add(messages, thinking, answer, kind, chunk)
            yield messages, ""
        for kind, chunk in splitter.finish():
            _add(messages, thinking, answer, kind, chunk)
        thinking["metadata"]["status"] = "done"
        if not splitter.closed:
            answer["content"] = "_no answer: the reasoning reached the token limit (max new tokens)_"
            if not any(m is answer for m in messages):
                messages.append(answer)
        yield messages, ""


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
    with gr.Row():
        text = gr.Textbox(placeholder="type a message, Enter to send", show_label=False, scale=5,
                          elem_id="chat-input")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
        clear = gr.Button("Clear", scale=1, elem_id="chat-clear")
    inputs = [text, chatbot, choice, system, temperature, top_p, max_new]
    text.submit(respond, inputs, [chatbot, text])
    send.click(respond, inputs, [chatbot, text])
    clear.click(lambda: [], None, chatbot)
    refresh.click(lambda: gr.Dropdown(choices=model_choices()), None, choice)
    return choice
