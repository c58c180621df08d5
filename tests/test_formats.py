"""Every row layout maps to the same conversation shape; bad rows name the row and the field."""
from __future__ import annotations

import pytest

from trainer.config import Columns, Source
from trainer.errors import UserError
from trainer.formats import Message, split_think, stray_think_tags, to_conversation
from trainer.sources import Row


def convert(data, **source):
    return to_conversation(Row("f.jsonl:7", data), Source(path="f.jsonl", **source))


def test_reasoning_columns_like_medical_o1():
    columns = Columns(question="Question", reasoning="Complex_CoT", answer="Response")
    messages = convert({"Question": "Q?", "Complex_CoT": " think \n", "Response": "A."},
                       format="reasoning", columns=columns)
    assert messages == [Message("user", "Q?"), Message("assistant", "A.", "think")]


def test_alpaca_with_and_without_input_and_inline_think():
    assert convert({"instruction": "Add.", "input": "2 3", "output": "5"}, format="alpaca") == [
        Message("user", "Add.\n\n2 3"), Message("assistant", "5", None)]
    assert convert({"instruction": "Add 2 and 3.", "input": "", "output": "<think>\n2+3=5\n</think>\n\n5"},
                   format="alpaca") == [Message("user", "Add 2 and 3."), Message("assistant", "5", "2+3=5")]


def test_sharegpt_llama_factory_layout_with_system_column():
    row = {"conversations": [{"from": "human", "value": "新闻分类:股市大涨"},
                             {"from": "gpt", "value": "<think>\n标题提到股市，属于经济。\n</think>\n\n经济"}],
           "system": "你是新闻编辑。"}
    assert convert(row, format="sharegpt") == [
        Message("system", "你是新闻编辑。"), Message("user", "新闻分类:股市大涨"),
        Message("assistant", "经济", "标题提到股市，属于经济。")]


def test_messages_with_reasoning_content_and_recipe_system_prompt():
    row = {"messages": [{"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello", "reasoning_content": "greet back"}]}
    assert convert(row, format="messages", system="Be kind.") == [
        Message("system", "Be kind."), Message("user", "hi"), Message("assistant", "hello", "greet back")]


def test_classification_by_index_name_and_csv_text():
    source = dict(format="classification", labels=["negative", "positive"], prompt="Review: {text}")
    for label in (1, "positive", "1"):
        assert convert({"text": "Great film.", "label": label}, **source) == [
            Message("user", "Review: Great film."), Message("assistant", "positive", "")]


@pytest.mark.parametrize("data, source, field, message", [
    ({"Question": "q", "Response": "a"}, dict(format="reasoning", columns=Columns(
        question="Question", reasoning="Complex_CoT", answer="Response")), "Complex_CoT", "missing field"),
    ({"instruction": 3, "output": "x"}, dict(format="alpaca"), "instruction", "must be text, got int"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, dict(format="sharegpt"),
     "conversations[0].from", "unsupported speaker 'robot'"),
    ({"conversations": "hello"}, dict(format="sharegpt"), "conversations", "must be a non-empty list"),
    ({"messages": [{"role": "user", "content": "a"}]}, dict(format="messages"),
     "conversation", "has no assistant turn"),
    ({"messages": [{"role": "assistant", "content": "a"}]}, dict(format="messages"),
     "conversation", "turn 0 is 'assistant', expected 'user'"),
    ({"messages": [{"role": "user", "content": ["a"]}]}, dict(format="messages"),
     "messages[0].content", "must be text, got list"),
    ({"text": "t", "label": 5}, dict(format="classification", labels=["a", "b"]), "label",
     "label index 5 is out of range"),
    ({"text": "t", "label": "maybe"}, dict(format="classification", labels=["a", "b"]), "label",
     "unknown label 'maybe'"),
])
def test_bad_rows_name_row_and_field(data, source, field, message):
    with pytest.raises(UserError) as caught:
        convert(data, **source)
    assert caught.value.where == "f.jsonl:7"
    assert caught.value.message.startswith(f"field '{field}': {message}")


def test_split_think():
    assert split_think("<think>\nr\n</think>\n\nanswer") == ("r", "answer")
    assert split_think("  <think>r</think>a") == ("r", "a")
    assert split_think("plain answer ") == (None, "plain answer")
    assert split_think("<think> never closed") == (None, "<think> never closed")


def test_stray_think_tags_are_detected():
    assert stray_think_tags([Message("assistant", "a </think> b", "r")])
    assert stray_think_tags([Message("assistant", "a", "r <think> r")])
    assert not stray_think_tags([Message("user", "q"), Message("assistant", "a", "r")])
