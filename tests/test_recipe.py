"""Recipe loading: schema, profiles, overrides, and errors that name the file, line and key."""
from __future__ import annotations

import ast
import dataclasses
import inspect
import typing
from pathlib import Path

import pytest

from trainer import config as schema
from trainer.config import Recipe
from trainer.errors import UserError
from trainer.hardware import Hardware
from trainer.recipe import ConfigError, find_recipe, load_recipe, load_resolved, parse_override, save_resolved

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
CPU, RTX4060, RTX4090, H100 = (Hardware(False), Hardware(True, "RTX 4060", 7.6),
                               Hardware(True, "RTX 4090", 23.6), Hardware(True, "H100", 79.2))


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    (tmp_path / "x.jsonl").write_text("{}\n", encoding="utf-8")  # the data file the recipes name
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", sorted(p.stem for p in RECIPES.glob("*.yaml")))
@pytest.mark.parametrize("hardware", [CPU, RTX4060, RTX4090, H100], ids=["cpu", "4060", "4090", "h100"])
def test_every_recipe_loads_on_every_machine(name, hardware):
    recipe = load_recipe(find_recipe(name, RECIPES), [], hardware)
    assert recipe.name == name and recipe.description
    if not hardware.cuda:  # the offline fallback: tiny model, bundled sample, full precision
        assert recipe.profile == "cpu" and recipe.model.base == "tiny" and recipe.model.quantization == "none"
        assert Path(recipe.data.path).is_file() and Path(recipe.data.path).is_relative_to(RECIPES / "samples")
    else:
        assert recipe.model.base.startswith("deepseek-ai/DeepSeek-R1-Distill-")


def test_every_recipe_opens_with_the_command_that_runs_it():
    for path in RECIPES.glob("*.yaml"):
        assert path.read_text(encoding="utf-8").startswith(f"# make train RECIPE={path.stem}"), path


def test_a_gpu_takes_no_profile_and_a_named_card_is_kept_for_the_planner():
    medical = find_recipe("medical", RECIPES)
    for hardware in (RTX4060, RTX4090, H100):  # the settings come from trainer.plan at train time
        recipe = load_recipe(medical, [], hardware)
        assert recipe.profile == "none" and recipe.train.batch_size == 2 and recipe.model.base != "tiny"
    assert load_recipe(medical, ["profile=4060"], H100).profile == "4060"
    assert load_recipe(medical, ["profile=12"], H100).profile == "12"


def test_a_named_card_without_cuda_is_one_early_error():
    with pytest.raises(UserError, match="GPU=4060 plans training for that card, but this machine has no CUDA GPU"
                                        r".*make plan GPU=4060.*GPU=cpu"):
        load_recipe(find_recipe("medical", RECIPES), ["profile=4060"], CPU)


def test_overrides_beat_profiles_and_are_validated_the_same_way():
    medical = find_recipe("medical", RECIPES)
    recipe = load_recipe(medical, ["train.max_steps=7", "lora.target_modules=[q_proj,v_proj]",
                                   "train.learning_rate=1e-4"], CPU)
    assert recipe.train.max_steps == 7 and recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.train.learning_rate == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match=r"command line \(train\.max_steps=seven\): train\.max_steps: "
                                          r"expected a whole number"):
        load_recipe(medical, ["train.max_steps=seven"], CPU)


def test_unknown_keys_name_file_line_and_a_suggestion(tmp_path):
    path = write(tmp_path, "model:\n  base: tiny\n  quantization: none\ndata:\n  path: x.jsonl\n"
                           "train:\n  learning_rte: 0.1\n  rank: 8\n")
    with pytest.raises(ConfigError) as caught:
        load_recipe(path, [], CPU)
    problems = caught.value.problems
    assert f"{path}:7: unknown key train.learning_rte (did you mean train.learning_rate?)" in problems
    assert f"{path}:8: unknown key train.rank (did you mean lora.rank?)" in problems


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, "model: {base: tiny, quantization: none, max_seq_lenght: 9}\n"
                           "data: {path: x.jsonl, format: sharegtp}\n"
                           "train: {batch_size: two, epochs: 0}\n"
                           "profiles:\n  cpu:\n    train: {batchsize: 3}\n")
    with pytest.raises(ConfigError) as caught:
        load_recipe(path, ["lora.rnak=3"], CPU)
    text = "\n".join(caught.value.problems)
    assert len(caught.value.problems) == 6, text
    for expected in ["unknown key model.max_seq_lenght (did you mean model.max_seq_length?)",
                     "data.format: expected one of alpaca, sharegpt, messages, reasoning, classification "
                     "(did you mean sharegpt?)",
                     ":3: train.batch_size: expected a whole number, got str 'two'",
                     ":3: train.epochs: must be above 0",
                     ":6 (profile cpu): unknown key train.batchsize (did you mean train.batch_size?)",
                     "command line (lora.rnak=3): unknown key lora.rnak (did you mean lora.rank?)"]:
        assert expected in text


def test_profiles_not_chosen_are_still_checked(tmp_path):
    path = write(tmp_path, "model: {base: tiny, quantization: none}\ndata: {path: x.jsonl}\n"
                           "profiles:\n  '4090':\n    train: {batch_sise: 3}\n")
    with pytest.raises(ConfigError, match=r":5 \(profile 4090\): unknown key profiles\.4090\.train\.batch_sise"):
        load_recipe(path, [], CPU)


def test_value_checks_that_span_fields(tmp_path):
    path = write(tmp_path, "model: {base: tiny, quantization: 4bit}\n"
                           "data: {path: x.jsonl, format: classification, prompt: 'no placeholder'}\n"
                           "train: {method: full, early_stopping_patience: 2}\n")
    with pytest.raises(ConfigError) as caught:
        load_recipe(path, [], CPU)
    text = "\n".join(caught.value.problems)
    assert "data.labels: classification needs the label names" in text
    assert "data.prompt: must contain {text}" in text
    assert "model.quantization: train.method=full updates the base weights" in text
    assert "train.early_stopping_patience: needs train.eval_steps" in text


def test_yaml_numbers_written_without_a_dot_are_accepted(tmp_path):
    path = write(tmp_path, "model: {base: tiny, quantization: none}\ndata: {path: x.jsonl}\n"
                           "train: {learning_rate: 2e-4}\n")
    assert load_recipe(path, [], CPU).train.learning_rate == pytest.approx(2e-4)


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "model:\n  base: tiny\n data: [\n")
    with pytest.raises(UserError, match=rf"{path}:3: invalid YAML"):
        load_recipe(path, [], CPU)


def test_unknown_recipe_and_profile_suggest_names():
    with pytest.raises(UserError, match="unknown recipe 'medicl'.*did you mean 'medical'"):
        find_recipe("medicl", RECIPES)
    with pytest.raises(UserError, match="unknown profile 'cpux'.*did you mean cpu"):
        load_recipe(find_recipe("medical", RECIPES), ["profile=cpux"], CPU)


def test_relative_data_paths_resolve_against_the_recipe_folder(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text("{}\n")
    path = write(tmp_path, "model: {base: tiny, quantization: none}\ndata: {path: data/a.jsonl}\n")
    monkeypatch.chdir("/")
    assert load_recipe(path, [], CPU).data.path == str(tmp_path / "data" / "a.jsonl")
    hub = load_recipe(path, ["data.path=org/dataset"], CPU)
    assert hub.data.path == "org/dataset"  # nothing of that name here: kept as a hub id


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(find_recipe("news", RECIPES), ["train.max_steps=3"], CPU)
    save_resolved(recipe, tmp_path / "config.yaml")
    again = load_resolved(tmp_path)
    assert again == dataclasses.replace(recipe, profiles={})
    assert again.train == recipe.train and again.data == recipe.data and again.model == recipe.model
    assert again.profile == "cpu" and again.profiles == {}


def test_parse_override_reads_yaml_values():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a.b=[x, y]") == ("a.b", ["x", "y"])
    assert parse_override("a.b=none") == ("a.b", "none")
    with pytest.raises(UserError, match="expected key=value"):
        parse_override("novalue")


def test_every_field_has_a_one_line_docstring():
    for cls in _dataclasses(Recipe):
        tree = ast.parse(inspect.getsource(cls))
        body = tree.body[0].body
        documented = {node.target.id for node, doc in zip(body, body[1:])
                      if isinstance(node, ast.AnnAssign) and isinstance(doc, ast.Expr)
                      and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)
                      and "\n" not in doc.value.value.strip()}
        own = {f.name for f in dataclasses.fields(cls)} - {f.name for b in cls.__bases__
                                                           if dataclasses.is_dataclass(b)
                                                           for f in dataclasses.fields(b)}
        assert own <= documented, f"{cls.__name__}: {sorted(own - documented)}"


def _dataclasses(cls, seen=None) -> list[type]:
    seen = seen if seen is not None else []
    if cls in seen:
        return seen
    seen.append(cls)
    for base in cls.__bases__:
        if dataclasses.is_dataclass(base):
            _dataclasses(base, seen)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        for candidate in (hints[f.name], *typing.get_args(hints[f.name])):
            if dataclasses.is_dataclass(candidate):
                _dataclasses(candidate, seen)
    return seen


def test_missing_local_data_file_is_reported_with_its_line(tmp_path):
    path = write(tmp_path, "model: {base: tiny, quantization: none}\ndata:\n  path: data/none.jsonl\n")
    with pytest.raises(ConfigError, match=rf"{path}:3: data.path: file not found: data/none.jsonl"):
        load_recipe(path, [], CPU)


def test_schema_check_accepts_the_defaults_with_a_path():
    recipe = Recipe(data=schema.DataConfig(path="x.jsonl"))
    assert schema.check(recipe) == []


def test_a_finished_runs_eval_settings_take_overrides_validated_like_training(tmp_path):
    recipe = load_recipe(find_recipe("news", RECIPES), [], CPU)
    save_resolved(recipe, tmp_path / "config.yaml")
    changed = load_resolved(tmp_path, ["eval.max_new_tokens=64", "eval.samples=3"])
    assert (changed.eval.max_new_tokens, changed.eval.samples) == (64, 3)
    assert changed.train == recipe.train and changed.eval.batch_size == recipe.eval.batch_size
    with pytest.raises(ConfigError) as caught:
        load_resolved(tmp_path, ["eval.max_new_tokens=0", "eval.max_new_token=5", "eval.samples=many",
                                 "train.max_steps=5"])
    problems = caught.value.problems
    assert len(problems) == 4
    assert any("command line (eval.max_new_tokens=0)" in p and "must be at least 1" in p for p in problems)
    assert any("did you mean eval.max_new_tokens?" in p for p in problems)
    assert any("eval.samples: expected a whole number" in p for p in problems)
    assert any("train.max_steps was fixed when the run was trained" in p for p in problems)
