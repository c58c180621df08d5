"""Every row layout maps to the same conversation shape; bad rows name the row and the field."""
from __future__ import annotations

import pytest

from trainer.config import Columns, Source, Tags
from trainer.errors import UserError
from trainer.data.formats import Dropped, Message, placeholders, to_conversation
from trainer.data.sources import Row


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
    ({"instruction": [3], "output": "x"}, dict(format="alpaca"), "instruction", "must be text or a number, got list"),
    ({"instruction": "i", "input": {"a": 1}, "output": "x"}, dict(format="alpaca"), "input",
     "must be text or a number, got dict"),
    ({"instruction": "i", "output": ["x"]}, dict(format="alpaca"), "output", "must be text or a number, got list"),
    ({"instruction": "i", "output": "x", "system": ["s"]}, dict(format="alpaca"), "system",
     "must be text or a number, got list"),
    ({"instruction": "i", "output": "x", "history": [["only one"]]}, dict(format="alpaca"), "history[0]",
     "must be a pair of texts"),
    ({"instruction": "i", "output": "x", "history": "earlier"}, dict(format="alpaca"), "history",
     "must be a list of [instruction, response] pairs"),
    ({"instruction": "i", "output": "x", "images": ["a.png"]}, dict(format="alpaca"), "images",
     "images, videos and audio are not supported"),
    ({"instruction": "<image>What is this?", "output": "x"}, dict(format="alpaca"), "user turn 0",
     "<image> marks a multimodal row"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{}"}]},
     dict(format="sharegpt"), "conversations[1].from", "tool-call turns ('function_call') are not supported"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": "[{}]"},
     dict(format="messages"), "tools", "tool definitions (tool calls) are not supported"),
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


def test_alpaca_numbers_become_text():
    assert convert({"instruction": "Square it.", "input": 25, "output": 625, "system": 7}, format="alpaca") == [
        Message("system", "7"), Message("user", "Square it.\n\n25"), Message("assistant", "625", None)]
    assert convert({"instruction": 1.5, "output": "x"}, format="alpaca")[0] == Message("user", "1.5")


def test_alpaca_history_comes_first_as_earlier_turns():
    row = {"instruction": "And 3+3?", "output": "<think>\nthree and three\n</think>\n\n6",
           "history": [["What is 2+2?", "<think>\ntwo and two\n</think>\n\n4"], ["Thanks", "You are welcome."]]}
    assert convert(row, format="alpaca") == [
        Message("user", "What is 2+2?"), Message("assistant", "4", "two and two"),
        Message("user", "Thanks"), Message("assistant", "You are welcome.", None),
        Message("user", "And 3+3?"), Message("assistant", "6", "three and three")]


def test_r1_distilled_answer_without_the_opening_tag():
    # R1's API and distilled sets omit `<think>`: the generation prompt already opened it.
    assert convert({"instruction": "q", "output": "thinking it over\n</think>\n\nthe answer"}, format="alpaca") == [
        Message("user", "q"), Message("assistant", "the answer", "thinking it over")]
    row = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "r\n</think>\n\na"}]}
    assert convert(row, format="sharegpt")[-1] == Message("assistant", "a", "r")


def test_literal_think_tags_are_kept_as_text():
    row = {"question": "What does <think> mean?", "reasoning": "The tag </think> closes it.", "answer": "A tag."}
    assert convert(row, format="reasoning") == [
        Message("user", "What does <think> mean?"), Message("assistant", "A tag.", "The tag </think> closes it.")]
    assert convert({"instruction": "q", "output": "<think> never closed"}, format="alpaca")[-1] == Message(
        "assistant", "<think> never closed", None)


@pytest.mark.parametrize("data, source, why", [
    ({"question": " ", "reasoning": "r", "answer": "a"}, dict(format="reasoning"), "empty question"),
    ({"question": "q", "reasoning": "\n\t", "answer": "a"}, dict(format="reasoning"), "empty reasoning"),
    ({"question": "q", "reasoning": "r", "answer": ""}, dict(format="reasoning"), "empty answer"),
    ({"instruction": "q", "output": "<think>r</think>  "}, dict(format="alpaca"), "empty answer"),
    ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]},
     dict(format="messages"), "empty question"),
])
def test_empty_question_reasoning_or_answer_is_dropped_with_the_reason(data, source, why):
    with pytest.raises(Dropped) as caught:
        convert(data, **source)
    assert caught.value.why == why


def test_sharegpt_with_llama_factory_tags():
    tags = Tags(role_tag="role", content_tag="content", user_tag="user", assistant_tag="assistant")
    row = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a"}]}
    assert convert(row, format="sharegpt", tags=tags, columns=Columns(conversations="messages")) == [
        Message("system", "s"), Message("user", "q"), Message("assistant", "a", None)]


def test_replace_fills_placeholders_and_leftovers_are_found():
    row = {"instruction": "hi", "output": "I am {{name}}, made by {{author}}."}
    messages = convert(row, format="alpaca", replace={"{{name}}": "MedBot"})
    assert messages[-1].content == "I am MedBot, made by {{author}}."
    assert placeholders(messages) == {"{{author}}"}
