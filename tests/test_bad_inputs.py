"""The bad-input suite: malformed recipes and data files under tests/cases/, each a clear exit.

Every case must exit with code 2, print one line that names the file (with its line where there is one)
and the key or field, show no traceback, and write nothing under the output folder.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from trainer.cli import main
from trainer.errors import UserError

CASES = Path(__file__).resolve().parent / "cases"

RECIPES = {  # file -> what the one line must say (besides the file name)
    "unknown_section.yaml": [":4:", "unknown key tranin (did you mean train?)"],
    "unknown_key.yaml": [":6:", "unknown key train.learnig_rate (did you mean train.learning_rate?)"],
    "key_in_wrong_section.yaml": [":4:", "unknown key train.rank (did you mean lora.rank?)"],
    "wrong_type.yaml": [":4:", "train.batch_size: expected a whole number, got str 'eight'"],
    "bad_choice.yaml": [":3:", "data.format: expected one of alpaca, sharegpt"],
    "negative_rank.yaml": [":4:", "lora.rank: must be at least 1"],
    "fractional_val_size.yaml": [":3:", "data.val_size: must be a fraction below 1 or a whole row count"],
    "labels_missing.yaml": [":3:", "data.labels: classification needs the label names"],
    "prompt_placeholder.yaml": [":3:", "data.prompt: must contain {text}"],
    "early_stop_without_eval.yaml": [":4:", "train.early_stopping_patience: needs train.eval_steps"],
    "full_on_4bit.yaml": [":2:", "model.quantization: train.method=full updates the base weights"],
    "no_targets.yaml": [":4:", "lora.target_modules: must name at least one layer"],
    "warmup_too_long.yaml": [":4:", "train.warmup_ratio: must be in [0, 1)"],
    "mix_ratio_zero.yaml": [":7:", "data.mix.0.ratio: must be above 0"],
    "missing_data_file.yaml": ["absent.jsonl", "file not found"],
    "unknown_profile.yaml": ["profile", "unknown profile '4095'"],
    "profile_typo.yaml": [":5 (profile 4090):", "unknown key profiles.4090.train.batchsize"],
    "invalid_yaml.yaml": [":4:", "invalid YAML"],
    "not_a_mapping.yaml": ["must be a mapping"],
    "latin1.yaml": [":3", "not UTF-8"],
    "duplicate_key.yaml": [":6:", "duplicate key train.learning_rate (first on line 5)"],
}

GOOD = CASES / "good.yaml"
OVERRIDES = {  # overrides on good.yaml -> what the one line must say; each is blamed on the command line
    "lr_huge": (["train.learning_rate=1e38"], ["command line (train.learning_rate=1e38)", "must be at most 1"]),
    "lr_inf": (["train.learning_rate=inf"], ["train.learning_rate: expected a finite number"]),
    "lr_nan": (["train.learning_rate=.nan"], ["train.learning_rate: expected a finite number"]),
    "epochs_inf": (["train.epochs=inf", "train.max_steps=null"], ["train.epochs: expected a finite number"]),
    "quant_typo": (["export.quantizations=[q4_km, banana]"],
                   ["recipe has 2 problems", "did you mean q4_k_m?", "export.quantizations.1: unknown GGUF type "
                    "'banana'"]),
    "profile_typo": (["profile=4095"], ["command line (profile=4095", "GPU=4095", "unknown profile '4095'"]),
    "data_folder": ([f"data.path={CASES / 'data'}"], ["command line (data.path=", "is a folder, not a data file"]),
}

DATA = {  # file, extra overrides -> what the one line must say
    "malformed_line.jsonl": ([], [":3:", "malformed JSON"]),
    "array_line.jsonl": ([], [":2:", "expected a JSON object, got list"]),
    "missing_column.jsonl": ([], [":3:", "field 'reasoning': missing field", "data.columns.reasoning"]),
    "mistyped_column.jsonl": ([], [":2:", "field 'question': must be text, got int"]),
    "empty.jsonl": ([], ["empty.jsonl", "no rows"]),
    "blank_lines.jsonl": ([], ["blank_lines.jsonl", "no rows"]),
    "latin1.jsonl": ([], [":2:", "not UTF-8 text (byte 0xe9)"]),
    "notes.txt": ([], ["notes.txt", "unsupported file type '.txt'"]),
    "not_a_list.json": ([], ["not_a_list.json", "expected a JSON list of objects"]),
    "extra_values.csv": ([], [":3:", "more values than header columns"]),
    "sharegpt_speaker.jsonl": (["data.format=sharegpt"], [":1:", "field 'conversations[1].from'",
                                                          "unsupported speaker 'bot'"]),
    "sharegpt_value.jsonl": (["data.format=sharegpt"], [":1:", "field 'conversations[0].value': must be text"]),
    "messages_order.jsonl": (["data.format=messages"], [":1:", "turn 0 is 'assistant', expected 'user'"]),
    "messages_no_answer.jsonl": (["data.format=messages"], [":1:", "has no assistant turn"]),
    "label_range.jsonl": (["data.format=classification", "data.labels=[bad,good]"],
                          [":2:", "field 'label': label index 3 is out of range"]),
    "label_name.jsonl": (["data.format=classification", "data.labels=[bad,good]"],
                         [":1:", "field 'label': unknown label 'neutral'"]),
    "alpaca_list_input.jsonl": (["data.format=alpaca"], [":2:", "field 'input': must be text or a number, got list"]),
    "images.jsonl": (["data.format=alpaca"], [":1:", "field 'images': images, videos and audio are not supported"]),
    "dataset_info.json": (["data.name=pairs"], ["pairs.ranking", "ranking (preference) datasets are not supported"]),
}


def test_there_are_at_least_25_cases():
    assert len(RECIPES) + len(DATA) >= 25
    assert {p.name for p in (CASES / "recipes").glob("*.yaml")} == set(RECIPES)
    assert {p.name for p in (CASES / "data").iterdir()} - {"good.jsonl"} == set(DATA)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_bad_recipe(name, tmp_path, capsys):
    code = main(["train", str(CASES / "recipes" / name), f"train.output_dir={tmp_path / 'runs'}"])
    expect_one_line(capsys, code, [name, *RECIPES[name]], tmp_path)


@pytest.mark.parametrize("name", sorted(DATA))
def test_bad_data_file(name, tmp_path, capsys):
    extra, expected = DATA[name]
    code = main(["train", str(CASES / "good.yaml"), f"data.path={CASES / 'data' / name}", *extra,
                 f"train.output_dir={tmp_path / 'runs'}"])
    expect_one_line(capsys, code, [name, *expected], tmp_path)


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_bad_override(name, tmp_path, capsys):
    overrides, expected = OVERRIDES[name]
    code = main(["train", str(GOOD), *overrides, f"train.output_dir={tmp_path / 'runs'}"])
    expect_one_line(capsys, code, expected, tmp_path, lines=3 if name == "quant_typo" else 1)


def test_8bit_optimizer_needs_cuda(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA, where adamw_8bit is allowed")
    code = main(["train", str(GOOD), "train.optimizer=adamw_8bit", f"train.output_dir={tmp_path / 'runs'}"])
    expect_one_line(capsys, code, ["train.optimizer: adamw_8bit needs a CUDA GPU"], tmp_path)


def test_recipe_folder_is_not_file_not_found(tmp_path, capsys):
    code = main(["train", str(CASES / "recipes") + "/", f"train.output_dir={tmp_path / 'runs'}"])
    expect_one_line(capsys, code, ["is a folder, not a recipe file"], tmp_path)


def test_output_folder_that_cannot_be_written(tmp_path, capsys):
    """A file where a folder should be stands in for a read-only file system (root may write anywhere else)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    code = main(["train", str(GOOD), f"train.output_dir={blocker / 'runs'}"])
    expect_one_line(capsys, code, ["train.output_dir=", "cannot write run folders here"], tmp_path)


def test_too_little_free_disk(tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    code = main(["train", str(GOOD), f"train.output_dir={tmp_path / 'runs'}"])
    expect_one_line(capsys, code, ["only 0.00 GiB free"], tmp_path)
    assert not any((tmp_path / "runs").glob("good-*"))


def test_sequence_longer_than_the_model_positions(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"max_position_embeddings": 128}')
    code = main(["train", str(GOOD), f"model.base={model}", "model.max_seq_length=4096",
                 f"train.output_dir={tmp_path / 'runs'}"])
    expect_one_line(capsys, code, ["model.max_seq_length: 4096 tokens", "only 128 positions"], tmp_path)


def expect_one_line(capsys, code: int, expected: list[str], tmp_path: Path, lines: int = 1) -> None:
    """`lines`: 1, or a heading and one line per problem when a recipe has several."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == lines, err
    for part in expected:
        assert part in err, f"{part!r} not in {err!r}"
    assert not (tmp_path / "runs").exists()


def test_a_fault_before_the_first_step_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    """A fault after the run folder was made (here: the trainer refusing to start) removes that folder."""
    import trainer.training.sft

    def refuse(*args, **kwargs):
        raise UserError("the trainer could not start", where="train")

    monkeypatch.setattr(trainer.training.sft, "train", refuse)
    code = main(["train", str(GOOD), f"train.output_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2 and "could not start" in err, err
    assert list((tmp_path / "runs").iterdir()) == []
