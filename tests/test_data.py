"""The data pipeline end to end: shuffle, caps, eval split, mixing, and the report of what was lost."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.config import DataConfig, MixSource, ModelConfig, Recipe
from trainer.data.dataset import load_conversations, prepare, read_conversations, save_conversations
from trainer.errors import UserError
from trainer.model import load_tokenizer


def rows_file(tmp_path: Path, n: int, name="d.jsonl", reasoning="because", prefix="q") -> Path:
    path = tmp_path / name
    lines = [json.dumps({"question": f"{prefix}{i}", "reasoning": reasoning, "answer": f"a{i}"}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def recipe(path: Path, max_seq_length=256, **data) -> Recipe:
    return Recipe(model=ModelConfig(base="tiny", quantization="none", max_seq_length=max_seq_length),
                  data=DataConfig(path=str(path), **{"format": "reasoning", **data}))


@pytest.fixture(scope="module")
def tokenizer(tiny_path):
    return load_tokenizer(ModelConfig(base="tiny"))


def questions(conversations) -> list[str]:
    return [c.messages[0].content for c in conversations]


def test_split_is_seeded_disjoint_and_sized(tmp_path):
    path = rows_file(tmp_path, 100)
    a = load_conversations(recipe(path, val_size=0.1))
    b = load_conversations(recipe(path, val_size=0.1))
    assert len(a.train) == 90 and len(a.eval) == 10
    assert questions(a.train) == questions(b.train)  # same seed, same order
    assert not set(questions(a.train)) & set(questions(a.eval))
    assert questions(a.train) != [f"q{i}" for i in range(10, 100)]  # shuffled
    assert len(load_conversations(recipe(path, val_size=7)).eval) == 7


def test_max_samples_caps_before_the_split(tmp_path):
    data = load_conversations(recipe(rows_file(tmp_path, 100), max_samples=20, val_size=0.25))
    assert (len(data.train), len(data.eval)) == (15, 5)


def test_separate_eval_file(tmp_path):
    train, evals = rows_file(tmp_path, 30), rows_file(tmp_path, 12, name="e.jsonl", prefix="e")
    data = load_conversations(recipe(train, eval_path=str(evals), eval_max_samples=5))
    assert len(data.train) == 30 and len(data.eval) == 5
    assert all(q.startswith("e") for q in questions(data.eval))


def test_val_size_that_leaves_nothing_is_an_error(tmp_path):
    with pytest.raises(UserError, match="leaves no training rows"):
        load_conversations(recipe(rows_file(tmp_path, 5), val_size=5))


def test_mix_adds_rows_by_ratio(tmp_path):
    main, general = rows_file(tmp_path, 40), rows_file(tmp_path, 100, name="g.jsonl", prefix="g")
    mix = [MixSource(path=str(general), format="reasoning", ratio=0.25)]
    data = load_conversations(recipe(main, val_size=0, mix=mix))
    assert len(data.train) == 50
    assert sum(q.startswith("g") for q in questions(data.train)) == 10
    assert any("mixed in 10 rows at ratio 0.25" in line for line in data.report.sources)


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_rows_quoting_think_tags_are_kept_and_hold_exactly_one_real_closer(tmp_path, tokenizer):
    path = write_rows(tmp_path / "d.jsonl", [
        {"question": "What does <think> do?", "reasoning": "It opens; </think> closes.", "answer": "Marks </think>."},
        {"question": "q <｜User｜>", "reasoning": "ok", "answer": "a<｜end▁of▁sentence｜>"}])
    prepared = prepare(recipe(path, val_size=0), tokenizer)
    assert len(prepared.train) == 2 and not prepared.report.dropped
    for example in prepared.train:
        assert example.input_ids.count(151649) == 1  # the template's </think>; the data's is plain text
        assert example.input_ids.count(151648) == 1  # the generation prompt's <think>
        assert example.input_ids.count(151644) == 1 and example.input_ids.count(tokenizer.eos_token_id) == 1
        assert example.labels[-1] == tokenizer.eos_token_id
    (first,) = [e for e in prepared.train if e.where == f"{path}:1"]
    text = tokenizer.decode(first.input_ids)
    assert "What does <think> do?" in text and "It opens; </think> closes.\n</think>\n\nMarks </think>." in text


def test_a_file_of_r1_distilled_rows_without_opening_tag_trains(tmp_path, tokenizer):
    path = write_rows(tmp_path / "d.jsonl", [{"instruction": f"q{i}", "output": f"r{i}\n</think>\n\na{i}"}
                                            for i in range(3)])
    prepared = prepare(recipe(path, val_size=0, format="alpaca"), tokenizer)
    trained = {tokenizer.decode([x for x in e.labels if x != -100]) for e in prepared.train}
    assert trained == {f"r{i}\n</think>\n\na{i}<｜end▁of▁sentence｜>" for i in range(3)}


def test_empty_rows_are_dropped_counted_and_named_after_the_split(tmp_path):
    rows = [{"question": f"q{i}", "reasoning": "r", "answer": f"a{i}"} for i in range(8)]
    rows[2]["answer"], rows[5]["reasoning"] = "  ", ""
    path = write_rows(tmp_path / "d.jsonl", rows)
    data = load_conversations(recipe(path, val_size=2))
    assert (len(data.train), len(data.eval)) == (4, 2)
    assert sorted(data.report.dropped) == [(f"{path}:3", "empty answer"), (f"{path}:6", "empty reasoning")]
    summary = data.report.summary()
    assert summary[0] == f"{path}: 8 rows read, 4 for training, 2 for eval (after dropping 2)"
    assert any(line.startswith("dropped 2 rows (1 empty answer, 1 empty reasoning)") for line in summary)


def test_eval_file_drops_are_counted_like_training_ones(tmp_path, tokenizer):
    train = rows_file(tmp_path, 6)
    evals = write_rows(tmp_path / "e.jsonl", [{"question": "q", "reasoning": "r", "answer": ""},
                                              {"question": "q", "reasoning": "word " * 100, "answer": "a"}])
    prepared = prepare(recipe(train, eval_path=str(evals), max_seq_length=40, overlong="drop"), tokenizer)
    assert (f"{evals}:1", "empty answer") in prepared.report.dropped
    assert (f"{evals}:2", "too long (eval)") in prepared.report.dropped
    assert prepared.report.dropped_too_long == 1 and prepared.report.eval_examples == 0


def test_every_bad_row_is_reported_at_once_before_split_sizes(tmp_path):
    rows = [{"question": "q", "reasoning": "r", "answer": "a"}, {"question": 1, "reasoning": "r", "answer": "a"},
            {"question": "q", "answer": "a"}]
    path = write_rows(tmp_path / "d.jsonl", rows)
    with pytest.raises(UserError) as caught:
        load_conversations(recipe(path, val_size=16))
    text = caught.value.render()
    assert text.startswith("2 problems:")
    assert f"{path}:2: field 'question'" in text and f"{path}:3: field 'reasoning': missing field" in text
    assert "val_size" not in text  # only once the rows are right does the split get its say


def test_only_empty_rows_names_the_real_cause(tmp_path, tokenizer):
    path = write_rows(tmp_path / "d.jsonl", [{"question": "q", "reasoning": "r", "answer": " "}] * 3)
    with pytest.raises(UserError) as caught:
        prepare(recipe(path, val_size=0), tokenizer)
    assert "3 rows dropped: empty answer" in caught.value.render()
    assert "max_seq_length" not in caught.value.render()


def test_placeholders_warn_and_replace_fills_them(tmp_path):
    path = tmp_path / "identity.json"  # as LLaMA-Factory ships it: a JSON list
    path.write_text(json.dumps([{"instruction": "who are you?", "input": "",
                                 "output": "I am {{name}}, an AI assistant developed by {{author}}."}]))
    data = load_conversations(recipe(path, val_size=0, format="alpaca"))
    assert any("{{author}}, {{name}}" in w and "data.replace" in w for w in data.report.warnings)
    data = load_conversations(recipe(path, val_size=0, format="alpaca",
                                     replace={"{{name}}": "MedBot", "{{author}}": "Ana"}))
    assert data.train[0].messages[-1].content == "I am MedBot, an AI assistant developed by Ana."
    assert not data.report.warnings


def test_saved_eval_rows_with_line_separators_read_back(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"question": f"q\u2028{i}", "reasoning": "r", "answer": "a"}
                                             for i in range(4)])
    data = load_conversations(recipe(path, val_size=2))
    save_conversations(data.eval, tmp_path / "eval.jsonl")
    assert read_conversations(tmp_path / "eval.jsonl") == data.eval


def test_truncated_and_dropped_are_counted(tmp_path, tokenizer):
    long_reasoning = "word " * 200
    path = rows_file(tmp_path, 10, reasoning=long_reasoning)
    cut = prepare(recipe(path, max_seq_length=64, val_size=0), tokenizer)
    assert cut.report.truncated == 10 and all(len(e.input_ids) == 64 for e in cut.train)
    with pytest.raises(UserError, match="no training example is left"):
        prepare(recipe(path, max_seq_length=64, val_size=0, overlong="drop"), tokenizer)


def test_report_summary_has_lengths_and_trained_tokens(tmp_path, tokenizer):
    prepared = prepare(recipe(rows_file(tmp_path, 20), val_size=4), tokenizer)
    summary = "\n".join(prepared.report.summary())
    assert "examples: 16 train, 4 eval" in summary and "tokens per example: p50" in summary
    assert prepared.report.trained_tokens == sum(sum(x != -100 for x in e.labels) for e in prepared.train)
    assert all(e.where.startswith(str(tmp_path)) for e in prepared.train)


def test_eval_conversations_round_trip(tmp_path):
    data = load_conversations(recipe(rows_file(tmp_path, 10), val_size=3))
    save_conversations(data.eval, tmp_path / "eval.jsonl")
    assert read_conversations(tmp_path / "eval.jsonl") == data.eval


@pytest.mark.parametrize("name", ["medical", "news", "imdb", "alpaca"])
def test_every_bundled_sample_renders_with_its_recipe(name, tokenizer):
    from trainer.hardware import Hardware
    from trainer.recipe import find_recipe, load_recipe

    root = Path(__file__).resolve().parent.parent / "recipes"
    prepared = prepare(load_recipe(find_recipe(name, root), [], Hardware(False)), tokenizer)
    assert prepared.report.train_examples > 100 and prepared.eval
    assert prepared.report.truncated == 0 and not prepared.report.dropped
    first = prepared.train[0]
    assert first.labels[-1] == tokenizer.eos_token_id and "</think>" in tokenizer.decode(
        [x for x in first.labels if x != -100])


def test_summary_as_data_lists_every_drop_with_where_and_why(tmp_path, tokenizer):
    rows = [{"question": f"q{i}", "reasoning": "r", "answer": "a"} for i in range(5)]
    rows[1]["question"] = "\t"
    path = write_rows(tmp_path / "d.jsonl", rows)
    summary = prepare(recipe(path, val_size=1), tokenizer).report.as_dict()
    assert summary["rows_read"] == 5 and summary["examples"] == {"train": 3, "eval": 1}
    assert summary["dropped"] == [{"where": f"{path}:2", "why": "empty question"}]
    assert summary["sources"][0].endswith("3 for training, 1 for eval (after dropping 1)")
    json.dumps(summary)  # it is printed as a JSON line
