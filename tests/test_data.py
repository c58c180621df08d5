"""The data pipeline end to end: shuffle, caps, eval split, mixing, and the report of what was lost."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.config import DataConfig, MixSource, ModelConfig, Recipe
from trainer.data import load_conversations, prepare, read_conversations, save_conversations
from trainer.errors import UserError
from trainer.model import load_tokenizer


def rows_file(tmp_path: Path, n: int, name="d.jsonl", reasoning="because", prefix="q") -> Path:
    path = tmp_path / name
    lines = [json.dumps({"question": f"{prefix}{i}", "reasoning": reasoning, "answer": f"a{i}"}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def recipe(path: Path, max_seq_length=256, **data) -> Recipe:
    return Recipe(model=ModelConfig(base="tiny", quantization="none", max_seq_length=max_seq_length),
                  data=DataConfig(path=str(path), format="reasoning", **data))


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


def test_stray_think_rows_are_dropped_and_reported(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"question": "q", "reasoning": "ok", "answer": "a"},
            {"question": "q", "reasoning": "bad </think> here", "answer": "a"}]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    data = load_conversations(recipe(path, val_size=0))
    assert len(data.train) == 1 and data.report.stray_think == [f"{path}:2"]
    assert any("stray <think>/</think>" in line for line in data.report.summary())


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
    assert prepared.report.truncated == 0 and not prepared.report.stray_think
    first = prepared.train[0]
    assert first.labels[-1] == tokenizer.eos_token_id and "</think>" in tokenizer.decode(
        [x for x in first.labels if x != -100])
