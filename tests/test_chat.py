"""`python -m trainer chat`: streaming split of reasoning and answer, history, commands, and a real tiny run."""
from __future__ import annotations

import io
from pathlib import Path

import pytest

from trainer import chat
from trainer.cli import main
from trainer.config import ModelConfig
from trainer.r1 import split_reasoning


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One finished tiny run (two steps are enough to have an adapter), shared by this module."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", "news", "profile=cpu", f"train.output_dir={root}", "train.max_steps=2",
                 "train.batch_size=4", "train.eval_steps=null", "data.val_size=4"]) == 0
    (run,) = [p for p in root.iterdir() if p.is_dir()]
    return run


@pytest.fixture(scope="module")
def tokenizer():
    from trainer.model import load_tokenizer

    return load_tokenizer(ModelConfig(base="tiny"))


EOS = 151643


class Scripted:
    """A stand-in model: records every prompt and streams the next scripted completion in small pieces."""

    def __init__(self, replies: list[str]):
        self.replies, self.prompts = list(replies), []

    def __call__(self, prompt: str):
        self.prompts.append(prompt)
        text = self.replies.pop(0)
        return [text[i:i + 3] for i in range(0, len(text), 3)]


# ---- splitting a stream ----------------------------------------------------------------------------------------

# The splitting itself (trainer.r1.ReasoningStream) is tested in tests/test_r1.py.


def test_printer_frames_plain_output_and_dims_on_a_terminal():
    plain = io.StringIO()
    printer = chat.Printer(plain, color=False)
    printer.write("reasoning", "think")
    printer.write("answer", "42")
    printer.end(closed=True)
    assert plain.getvalue() == "[thinking] think\n[answer] 42\n"
    tty = io.StringIO()
    printer = chat.Printer(tty, color=True)
    printer.write("reasoning", "think")
    printer.write("answer", "42")
    printer.end(closed=True)
    assert tty.getvalue() == f"{chat.DIM}think{chat.RESET}\n\n42\n"
    cut = io.StringIO()
    printer = chat.Printer(cut, color=False)
    printer.write("reasoning", "never done")
    printer.end(closed=False)
    assert cut.getvalue().startswith("[thinking] never done\n[no answer")


@pytest.mark.parametrize("closed, ids, limit, says, not_says", [
    # eos long before the limit, still inside the reasoning: not a token-limit problem
    (False, [5] * 36 + [EOS], 96, "ended its reply after 37 of 96 tokens without closing its reasoning",
     "limit"),
    (False, [5] * 96, 96, "the reasoning used all 96 new tokens before </think>", "ended"),
    (True, [5] * 96, 96, "answer cut: the reply used all 96 new tokens", "no answer"),
    (True, [5] * 10 + [EOS], 96, None, None),
])
def test_the_note_after_a_reply_says_what_ended_it(closed, ids, limit, says, not_says):
    out = io.StringIO()
    printer = chat.Printer(out, color=False)
    printer.write("reasoning", "thought")
    if closed:
        printer.write("answer", "A")
    printer.end(closed, ending=chat.ending_of(ids, [EOS], limit))
    text = out.getvalue()
    if says is None:
        assert text == "[thinking] thought\n[answer] A\n"
    else:
        assert says in text and not_says not in text.split("\n")[-2]


def test_a_session_passes_the_generations_ending_to_the_printer(tokenizer):
    class Ended(list):
        ending = chat.ending_of([5, 6, EOS], [EOS], 50)

    session = chat.ChatSession(lambda prompt: Ended(["still thinking"]), tokenizer)
    out = io.StringIO()
    session.ask("question", chat.Printer(out, color=False))
    assert out.getvalue().endswith("[no answer: the model ended its reply after 3 of 50 tokens without closing "
                                   "its reasoning (no </think>)]\n")


# ---- history and commands --------------------------------------------------------------------------------------

def test_history_handed_to_the_template_drops_earlier_reasoning(tokenizer, monkeypatch):
    seen: list[list] = []
    real = chat.prompt_text
    monkeypatch.setattr(chat, "prompt_text", lambda history, tok: seen.append(list(history)) or real(history, tok))
    model = Scripted(["SECRET-ONE\n</think>\n\nanswer one", "SECRET-TWO</think>\n\nanswer two"])
    session = chat.ChatSession(model, tokenizer)
    out = io.StringIO()
    assert session.ask("first question", chat.Printer(out, color=False)) == ("SECRET-ONE", "answer one")
    assert session.ask("second question", chat.Printer(out, color=False)) == ("SECRET-TWO", "answer two")
    assert out.getvalue() == ("[thinking] SECRET-ONE\n[answer] answer one\n"
                              "[thinking] SECRET-TWO\n[answer] answer two\n")
    second = seen[1]
    assert [(m.role, m.content, m.reasoning) for m in second] == [
        ("user", "first question", None), ("assistant", "answer one", None), ("user", "second question", None)]
    assert "answer one" in model.prompts[1] and "SECRET-ONE" not in model.prompts[1]
    assert model.prompts[1].endswith("<｜Assistant｜><think>\n")
    assert [m.reasoning for m in session.history] == [None] * 4


def test_reset_and_exit_from_a_scripted_stdin(tokenizer):
    model = Scripted(["r</think>\n\nhello back", "r</think>\n\nagain back", "unused"])
    session = chat.ChatSession(model, tokenizer)
    stdin = io.StringIO("hello\n/reset\n\nagain\n/exit\nnever asked\n")
    out = io.StringIO()
    assert chat.repl(session, stdin, out, color=False) == 0
    assert len(model.prompts) == 2 and "hello" not in model.prompts[1]  # /reset cleared the first turn
    assert "[history cleared]" in out.getvalue() and "never asked" not in out.getvalue()
    assert [m.content for m in session.history] == ["again", "again back"]
    # End of input (Ctrl-D) ends the chat just as /exit does.
    model = Scripted(["r</think>\n\nok"])
    assert chat.repl(chat.ChatSession(model, tokenizer), io.StringIO("only line\n"), io.StringIO(), False) == 0
    assert len(model.prompts) == 1


def test_ctrl_c_while_writing_stops_the_reply_and_keeps_no_turn(tokenizer):
    class Interrupted:
        stopped = False

        def __iter__(self):
            yield "half a thought"
            raise KeyboardInterrupt

        def stop(self):
            self.stopped = True

    generation = Interrupted()
    session = chat.ChatSession(lambda prompt: generation, tokenizer)
    out = io.StringIO()
    assert session.ask("question", chat.Printer(out, color=False)) is None
    assert generation.stopped and session.history == []
    assert out.getvalue().endswith("[stopped]\n")


# ---- the real command on a tiny run ----------------------------------------------------------------------------

def test_prompt_mode_streams_reasoning_and_answer_apart(tiny_run, capsys):
    from trainer.data.formats import Message
    from trainer.generate import generate
    from trainer.hardware import detect
    from trainer.model import load_for_inference
    from trainer.recipe import load_resolved

    question = "新闻分类:今日股市大涨"
    argv = ["chat", str(tiny_run), "--prompt", question, "--temperature", "0", "--max-new-tokens", "24"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    loaded = load_for_inference(load_resolved(tiny_run), detect(), tiny_run / "adapter")
    (completion,) = generate(loaded.model, loaded.tokenizer, [[Message("user", question)]], 24)
    expected = split_reasoning(completion)  # greedy: the streamed reply is the batch reply
    running = chat.Generation(loaded.model, loaded.tokenizer, "<｜User｜>hi<｜Assistant｜><think>\n", 10_000, 0.0)
    next(iter(running))
    running.stop()  # what Ctrl-C does: the worker thread ends long before 10,000 tokens
    assert not running.thread.is_alive()
    frame = f"[thinking] {expected.reasoning}" if expected.reasoning else "[thinking]"
    # What ended the reply, read from the raw ids of the same greedy generation.
    import torch

    from trainer.data.template import prompt_text

    prompt = loaded.tokenizer(prompt_text([Message("user", question)], loaded.tokenizer), add_special_tokens=False,
                              return_tensors="pt")
    with torch.inference_mode():
        ids = loaded.model.generate(**prompt, max_new_tokens=24, do_sample=False, temperature=None, top_p=None,
                                    top_k=None, eos_token_id=EOS, pad_token_id=loaded.tokenizer.pad_token_id)
    new = ids[0, prompt["input_ids"].shape[1]:].tolist()
    if expected.closed and EOS in new:
        assert out == f"{frame}\n[answer] {expected.answer}\n"
    elif expected.closed:
        assert out.startswith(f"{frame}\n[answer] {expected.answer}\n[answer cut: the reply used all 24 new")
    elif EOS in new:
        assert out == (f"{frame}\n[no answer: the model ended its reply after {len(new)} of 24 tokens without "
                       "closing its reasoning (no </think>)]\n")
    else:
        assert out.startswith(f"{frame}\n[no answer: the reasoning used all 24 new tokens before </think>")


def test_chat_command_with_scripted_stdin(tiny_run, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("你好\n/reset\n再见\n/exit\n"))
    assert main(["chat", str(tiny_run), "--base", "--temperature", "0", "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("[thinking]") == 2 and "[history cleared]" in captured.out
    assert "you> 你好" in captured.out and "base model tiny" in captured.err


def test_chat_refuses_an_unfinished_run(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["chat", str(tmp_path / "run"), "--prompt", "hi"]) == 2
    assert "did not finish" in capsys.readouterr().err


@pytest.mark.parametrize("finish, made, says", [
    ("stop", 36, "ended its reply after 37 of 96 tokens"),
    ("length", 96, "the reasoning used all 96 new tokens"),
])
def test_gguf_chat_reads_the_ending_from_llama_cpps_finish_reason(finish, made, says, tokenizer):
    from export.chat import llama_stream

    class FakeLlama:  # llama-cpp-python's streaming interface, as far as the chat uses it
        n_tokens = 0

        def tokenize(self, text, add_bos, special):
            return [1, 2, 3]

        def n_ctx(self):
            return 4096

        def create_completion(self, tokens, max_tokens, **kwargs):
            for i in range(made):
                self.n_tokens = len(tokens) + i + 1
                yield {"choices": [{"text": "x", "finish_reason": finish if i == made - 1 else None}]}

    session = chat.ChatSession(llama_stream(FakeLlama(), 96, 0.0), tokenizer)
    out = io.StringIO()
    session.ask("question", chat.Printer(out, color=False))
    assert says in out.getvalue()
