"""LLaMA-Factory's dataset_info.json read as it is, on small LLaMA-Factory-shaped files written here."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.cli import main
from trainer.config import DataConfig, MixSource, ModelConfig, Recipe, Source
from trainer.data.dataset import load_conversations
from trainer.data.dataset_info import describe
from trainer.errors import UserError
from trainer.data.formats import Message

ALPACA = [{"instruction": f"Add {i} and 1.", "input": "", "output": f"<think>\n{i}+1\n</think>\n\n{i + 1}",
           "system": "Be exact.", "history": [["Hi", "Hello."]]} for i in range(6)]
SHAREGPT = [{"conversations": [{"from": "human", "value": f"q{i}"},
                               {"from": "gpt", "value": f"r{i}\n</think>\n\na{i}"}], "system": "sys"} for i in range(5)]
OPENAI = [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": f"u{i}"},
                        {"role": "assistant", "content": f"a{i}"}]} for i in range(4)]
INFO = {
    "math": {"file_name": "data/math.json",
             "columns": {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
                         "system": "system"}},
    "plain_alpaca": {"file_name": "data/math.json"},
    "chat": {"file_name": "chat.jsonl", "formatting": "sharegpt",
             "columns": {"messages": "conversations", "system": "system"}},
    "openai": {"file_name": "openai.json", "formatting": "sharegpt", "columns": {"messages": "messages"},
               "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                        "assistant_tag": "assistant", "system_tag": "system"}},
    "hub": {"hf_hub_url": "org/some-set", "subset": "en", "split": "validation"},
    "few": {"file_name": "data/math.json", "num_samples": 2},
    "many": {"file_name": "data/math.json", "num_samples": 9},
    "dpo": {"file_name": "data/math.json", "ranking": True,
            "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}},
    "vision": {"file_name": "data/math.json", "columns": {"prompt": "instruction", "images": "images"}},
    "tools": {"file_name": "tools.json", "formatting": "sharegpt"},
    "folder": {"file_name": "data"},
    "ms": {"ms_hub_url": "AI-ModelScope/x"},
}


@pytest.fixture
def info(tmp_path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "math.json").write_text(json.dumps(ALPACA), encoding="utf-8")
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SHAREGPT), encoding="utf-8")
    (tmp_path / "openai.json").write_text(json.dumps(OPENAI), encoding="utf-8")
    tools = [{"conversations": [{"from": "human", "value": "weather?"}, {"from": "function_call", "value": "{}"},
                                {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "Sunny."}]}]
    (tmp_path / "tools.json").write_text(json.dumps(tools), encoding="utf-8")
    path = tmp_path / "dataset_info.json"
    path.write_text(json.dumps(INFO, indent=2), encoding="utf-8")
    return path


def load(info: Path, name: str, **data):
    recipe = Recipe(model=ModelConfig(base="tiny", quantization="none"),
                    data=DataConfig(path=str(info), name=name, **{"val_size": 0, **data}))
    return load_conversations(recipe)


def test_alpaca_entry_with_history_and_system_columns(info):
    data = load(info, "math")
    assert len(data.train) == 6
    by_where = {c.where: c.messages for c in data.train}
    assert by_where[f"{info.parent / 'data' / 'math.json'}: item 3"] == [
        Message("system", "Be exact."), Message("user", "Hi"), Message("assistant", "Hello.", None),
        Message("user", "Add 3 and 1."), Message("assistant", "4", "3+1")]


def test_alpaca_entry_without_columns_reads_only_what_llama_factory_reads(info):
    # LLaMA-Factory reads history and system only when the entry names them.
    (first, *_) = load(info, "plain_alpaca").train
    assert [m.role for m in first.messages] == ["user", "assistant"]


def test_sharegpt_entry_and_r1_distilled_replies(info):
    data = load(info, "chat")
    assert sorted(c.messages[-1].content for c in data.train) == [f"a{i}" for i in range(5)]
    assert all(c.messages[0] == Message("system", "sys") for c in data.train)
    assert all(c.messages[-1].reasoning.startswith("r") for c in data.train)


def test_openai_style_sharegpt_entry_with_tags(info):
    data = load(info, "openai")
    assert {tuple(m.role for m in c.messages) for c in data.train} == {("system", "user", "assistant")}


def test_hub_entry_becomes_a_hub_source_with_subset_and_split(info):
    described = describe(Source(path=str(info), name="hub"))
    assert (described.source.path, described.source.name, described.source.split) == ("org/some-set", "en",
                                                                                      "validation")
    assert described.source.format == "alpaca" and described.num_samples is None


def test_num_samples_samples_or_repeats(info):
    assert len(load(info, "few").train) == 2
    many = load(info, "many").train
    assert len(many) == 9 and len({c.where for c in many}) == 9
    assert sum("(repeat" in c.where for c in many) == 3


def test_mix_names_several_keys(info):
    mix = [MixSource(path=str(info), name="chat", ratio=0.5), MixSource(path=str(info), name="openai", ratio=0.5)]
    data = load(info, "math", mix=mix)
    assert len(data.train) == 6 + 3 + 3
    assert any("[chat]: mixed in 3 rows" in line for line in data.report.sources)


@pytest.mark.parametrize("name, expected", [
    ("dpo", "ranking (preference) datasets are not supported"),
    ("vision", "images are not supported"),
    ("folder", "file_name names a folder"),
    ("ms", "ms_hub_url is not supported"),
    ("mathh", "no dataset 'mathh' in it (did you mean math?)"),
    (None, "which dataset of dataset_info.json?"),
])
def test_unsupported_entries_are_refused_clearly(info, name, expected):
    with pytest.raises(UserError) as caught:
        load(info, name)
    assert expected in caught.value.render() and str(info) in caught.value.render()


def test_tool_call_turns_are_refused_with_row_and_field(info):
    with pytest.raises(UserError) as caught:
        load(info, "tools")
    assert caught.value.render() == (f"{info.parent / 'tools.json'}: item 0: field 'conversations[1].from': tool-call "
                                     "turns ('function_call') are not supported (leave such rows out)")


def test_preview_json_reads_a_key_and_ends_with_a_summary(info, capsys):
    code = main(["preview", "news", f"data.path={info}", "data.name=math", "data.val_size=0", "--json", "--ids",
                 "--limit", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    records = [json.loads(line) for line in lines]
    *examples, last = records
    assert len(examples) == 2 and set(last) == {"summary"}
    summary = last["summary"]
    assert summary["rows_read"] == 6 and summary["examples"]["train"] == 12  # two trained turns a row
    assert summary["dropped"] == [] and summary["truncated"] == 0
    first = examples[0]
    assert len(first["input_ids"]) == len(first["labels"]) == first["n_tokens"]
    prompt_len = first["n_tokens"] - first["n_trained"]
    assert first["labels"][:prompt_len] == [-100] * prompt_len
    assert first["labels"][prompt_len:] == first["input_ids"][prompt_len:]
