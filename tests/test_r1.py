"""The one R1 module: tokens and ids agree with the real tokenizer; one reasoning splitter, whole or streamed."""
from __future__ import annotations

import random

import pytest

from trainer import r1
from trainer.evaluation.metrics import think_format_ok
from trainer.r1 import EOS, ReasoningStream, Split, split_reasoning

EOS_TEXT = EOS


def test_tokens_are_the_tokenizers_ids(tiny_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    for text, token_id in ((r1.BOS, 151646), (r1.EOS, 151643), (r1.USER, 151644), (r1.ASSISTANT, 151645),
                           (r1.THINK_OPEN, 151648), (r1.THINK_CLOSE, 151649)):
        assert tok.convert_tokens_to_ids(text) == token_id
    assert (r1.BOS_ID, r1.EOS_ID, r1.USER_ID, r1.ASSISTANT_ID, r1.THINK_OPEN_ID, r1.THINK_CLOSE_ID) == (
        151646, 151643, 151644, 151645, 151648, 151649)


def test_generation_prompt_is_what_the_template_appends():
    from jinja2 import Template

    rendered = Template(r1.chat_template()).render(messages=[{"role": "user", "content": "hi"}],
                                                    add_generation_prompt=True, bos_token=r1.BOS)
    assert rendered == f"{r1.BOS}{r1.USER}hi" + "<｜Assistant｜><think>\n"
    assert rendered == f"{r1.BOS}{r1.USER}hi{r1.GENERATION_PROMPT}"


# --- split_reasoning ---------------------------------------------------------------------------


def test_split_typical_r1_completion():
    s = split_reasoning("Let me think.\nOK.\n</think>\n\n体育" + EOS_TEXT)
    assert s == Split(reasoning="Let me think.\nOK.", answer="体育", closed=True)
    assert think_format_ok(s)


def test_split_without_close_is_all_reasoning():
    s = split_reasoning("I am still thinking about it")
    assert s == Split(reasoning="I am still thinking about it", answer="", closed=False)
    assert not think_format_ok(s)


def test_split_at_first_of_two_closers():
    s = split_reasoning("a</think>b</think>c")
    assert s == Split(reasoning="a", answer="b</think>c", closed=True)


def test_split_empty_answer():
    s = split_reasoning("reasoning\n</think>\n\n  " + EOS_TEXT)
    assert s == Split(reasoning="reasoning", answer="", closed=True)
    assert not think_format_ok(s)


def test_split_strips_one_leading_think():
    assert split_reasoning("  <think>\nx\n</think>\ny") == Split("x", "y", True)
    assert split_reasoning("<think><think>x</think>y").reasoning == "<think>x"
    assert split_reasoning("x <think> y</think>z").reasoning == "x <think> y"


def test_split_eos_truncates_padding_and_trailing_text():
    text = "r</think>\nanswer" + EOS_TEXT + EOS_TEXT + "junk"
    assert split_reasoning(text) == Split("r", "answer", True)
    assert split_reasoning("still thinking" + EOS_TEXT) == Split("still thinking", "", False)


def test_split_close_only_and_empty_text():
    assert split_reasoning("</think>ans") == Split("", "ans", True)
    assert split_reasoning("") == Split("", "", False)


def test_split_is_frozen():
    with pytest.raises(Exception):
        split_reasoning("a</think>b").answer = "c"  # type: ignore[misc]


def test_split_data_rows_keeps_the_end_token_text():
    assert split_reasoning("r</think>a" + EOS_TEXT + "b", stop_at_eos=False) == Split("r", "a" + EOS_TEXT + "b", True)


# --- the streaming form: the same result for any chunking --------------------------------------------------------

STREAMED = [
    "reason one\n</think>\n\nanswer one",
    "<think>\nechoed tag\n</think>\n\nA",
    "no closer at all, cut by the token limit  ",
    "r</think>",
    "</think>\n\nanswer without reasoning",
    "first</think> a </think> b",
    "multi\n\nline   \n</think>\n\n  padded answer \n",
    "<think><think>x</think>y",
    "x <think> y</think>z",
    "r</think>\nanswer" + EOS_TEXT + EOS_TEXT + "junk",
    "still thinking" + EOS_TEXT + "</think>after the end",
    "  <",
    "",
    "<thin",
    "a</thi" + "nk>b<｜end",
]


def stream(pieces: list[str]) -> tuple[str, str, bool]:
    splitter, parts = ReasoningStream(), {"reasoning": "", "answer": ""}
    for piece in pieces:
        for kind, chunk in splitter.feed(piece):
            parts[kind] += chunk
    for kind, chunk in splitter.finish():
        parts[kind] += chunk
    return parts["reasoning"], parts["answer"], splitter.closed


@pytest.mark.parametrize("text", STREAMED)
def test_stream_equals_whole_split_for_any_chunking(text):
    expected = split_reasoning(text)
    rng = random.Random(0)
    assert stream([text]) == (expected.reasoning, expected.answer, expected.closed)
    assert stream(list(text)) == (expected.reasoning, expected.answer, expected.closed)  # one character at a time
    for _ in range(60):
        cuts = sorted(rng.sample(range(1, len(text)), k=min(max(len(text) - 1, 0), rng.randint(0, 6))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert stream(pieces) == (expected.reasoning, expected.answer, expected.closed), pieces


def test_stream_emits_reasoning_before_the_end():
    splitter = ReasoningStream()
    assert splitter.feed("Let me think about ") == [("reasoning", "Let me think about")]  # the space waits
    assert splitter.feed("it.\n</th") == [("reasoning", " it.")]  # a closer may be coming
    assert splitter.feed("ink>\n\nFour") == [("answer", "Four")]
    assert splitter.closed
