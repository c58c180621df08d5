"""GRPO's rewards, its recipe section, and the run-folder helpers of trainer.training.grpo (no model involved)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.config import Recipe
from trainer.errors import UserError
from trainer.training.grpo import find_sft_run, prompt_rows, summarize
from trainer.data.dataset import Conversation
from trainer.data.formats import Message
from trainer.hardware import Hardware
from trainer.recipe import ConfigError, find_recipe, load_recipe
from trainer.training.rewards import (correctness_reward, format_reward, resolve, trl_reward_functions)

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
EOS = "<｜end▁of▁sentence｜>"


@pytest.mark.parametrize("completion, expected", [
    ("标题提到股市，属于经济。\n</think>\n\n经济", 1.0),
    ("标题提到股市，属于经济。\n</think>\n\n经济" + EOS + "junk </think>", 1.0),  # after eos: never generated
    ("<think>\nreason\n</think>\n\n经济", 1.0),  # an echoed opening tag is tolerated
    ("reasoning that never ends", 0.0),  # no </think>
    ("reason\n</think>\n\n   ", 0.0),  # empty answer
    ("reason\n</think>\n\n经济</think>经济", 0.0),  # two closers
    ("reason\n</think>\n\n<think>again", 0.0),  # a think block reopened in the answer
    ("reason\n</think>\n\n" + "经" * 65, 0.0),  # answer longer than the bound
    ("reason\n</think>\n\n" + "经" * 64, 1.0),
])
def test_format_reward(completion, expected):
    assert format_reward(completion, max_answer_chars=64) == expected


@pytest.mark.parametrize("completion, reference, match, expected", [
    ("r\n</think>\n\n经济", "经济", "label", 1.0),
    ("r\n</think>\n\n**Positive**.", "positive", "label", 1.0),  # case and edge punctuation fold
    ("r\n</think>\n\n体育", "经济", "label", 0.0),
    ("经济", "经济", "label", 0.0),  # the label inside unfinished reasoning is no answer
    ("r\n</think>\n\nPositive", "positive", "exact", 0.0),
    ("r\n</think>\n\npositive", "positive", "exact", 1.0),
    ("r\n</think>\n\nthe patient needs rest and fluids", "the patient needs rest and fluids daily", "rouge", 1.0),
    ("r\n</think>\n\nsurgery at once", "the patient needs rest and fluids daily", "rouge", 0.0),
])
def test_correctness_reward(completion, reference, match, expected):
    assert correctness_reward(completion, reference, match, rouge_threshold=0.5) == expected


def news(overrides=(), hardware=Hardware(False)) -> Recipe:
    return load_recipe(find_recipe("news", RECIPES), list(overrides), hardware)


def test_auto_match_and_bound_follow_the_references():
    labels = resolve(news(), ["经济", "体育"])
    assert labels.match == "label" and labels.max_answer_chars == 64
    long_ref = "x" * 100
    free = resolve(news(), ["a long free-text reference answer that is clearly not a label", long_ref])
    assert free.match == "rouge" and free.max_answer_chars == 200
    only_format = resolve(news(["grpo.rewards.correctness=0"]), ["经济"])
    assert list(only_format.weights) == ["format"]


def test_no_checkable_answer_is_an_error_naming_grpo_rewards():
    with pytest.raises(UserError) as caught:
        resolve(news(), ["", "  "])
    assert caught.value.where == "grpo.rewards"


def test_trl_reward_functions_score_conversational_completions_with_weights():
    spec = resolve(news(["grpo.rewards.format=0.5", "grpo.rewards.correctness=2"]), ["经济"])
    functions, weights = trl_reward_functions(spec)
    assert [f.__name__ for f in functions] == ["format", "correctness"] and weights == [0.5, 2.0]
    completions = [[{"role": "assistant", "content": "r\n</think>\n\n经济"}],
                   [{"role": "assistant", "content": "r\n</think>\n\n体育"}]]
    assert functions[0](completions=completions, reference=["经济", "经济"]) == [1.0, 1.0]
    assert functions[1](completions=completions, reference=["经济", "经济"]) == [1.0, 0.0]


def test_grpo_section_is_validated_like_the_rest():
    with pytest.raises(ConfigError) as caught:
        news(["grpo.num_generation=4", "grpo.rewards.formt=1", "grpo.num_generations=1", "grpo.beta=-1",
              "grpo.rewards.match=rogue"])
    text = "\n".join(caught.value.problems)
    assert "unknown key grpo.num_generation (did you mean grpo.num_generations?)" in text
    assert "unknown key grpo.rewards.formt (did you mean grpo.rewards.format?)" in text
    assert "grpo.num_generations: must be at least 2" in text
    assert "grpo.beta: must be 0 or more" in text
    assert "did you mean rouge?" in text
    with pytest.raises(ConfigError, match="grpo.rewards: at least one reward"):
        news(["grpo.rewards.format=0", "grpo.rewards.correctness=0"])


def test_prompt_rows_end_before_the_last_reply_and_keep_its_answer():
    conversation = Conversation("row 1", [Message("system", "classify"), Message("user", "headline"),
                                          Message("assistant", "经济", reasoning="because")])
    (row,) = prompt_rows([conversation])
    assert row == {"prompt": [{"role": "system", "content": "classify"}, {"role": "user", "content": "headline"}],
                   "reference": "经济"}


def _run(root: Path, name: str, stage: str | None = None, complete: bool = True) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({"stage": stage} if stage else {}))
    if complete:
        (path / "COMPLETE").write_text("x")
    return path


def test_find_sft_run_skips_grpo_and_unfinished_runs(tmp_path):
    recipe = news([f"train.output_dir={tmp_path}"])
    with pytest.raises(UserError, match="no finished SFT run of 'news'"):
        find_sft_run(recipe, None)
    sft = _run(tmp_path, "news-20261130-100000")
    _run(tmp_path, "news-grpo-20261130-110000", stage="grpo")
    _run(tmp_path, "news-20261130-120000", complete=False)
    assert find_sft_run(recipe, None) == sft
    assert find_sft_run(recipe, "latest") == sft


def test_reward_start_and_end_average_the_first_and_last_tenth():
    history = [{"step": i + 1, "reward": float(i), "rewards/format/mean": 1.0, "completions/mean_length": 10.0}
               for i in range(20)] + [{"train_runtime": 5.0}]
    recipe = news(["grpo.num_generations=4", "grpo.prompts_per_step=2"])
    metrics = summarize(history, ["format"], elapsed=10.0, recipe=recipe)
    assert metrics["reward_start"] == pytest.approx(0.5)  # steps 1-2: rewards 0 and 1
    assert metrics["reward_end"] == pytest.approx(18.5)
    assert metrics["curves"]["format"] == [1.0] * 20 and metrics["curves"]["step"][-1] == 20
    assert metrics["completions"] == 160 and metrics["completion_tokens"] == 1600


def test_continued_recipe_keeps_the_sft_model_and_takes_this_commands_grpo_section(tmp_path):
    from trainer.training.grpo import continued_recipe

    sft = news(["lora.rank=8", "train.output_dir=/elsewhere"])
    requested = news(["lora.rank=64", "grpo.steps=7", f"train.output_dir={tmp_path}"])
    recipe = continued_recipe(sft, requested)
    assert recipe.lora.rank == 8 and recipe.grpo.steps == 7 and recipe.train.output_dir == str(tmp_path)
    with pytest.raises(UserError, match="GRPO continues a LoRA adapter") as caught:
        continued_recipe(news(["train.method=full", "model.quantization=none"]), requested)
    assert caught.value.where == "train.method"


def _answer_log(steps: list[tuple[list[str], list[str]]]):
    """An AnswerLog fed as TRL feeds it: one call of the watched reward function a step."""
    from trainer.training.grpo import AnswerLog

    log = AnswerLog()
    scored = log.watching(lambda completions, **_: [0.0] * len(completions))
    for answers, references in steps:
        completions = [[{"role": "assistant", "content": f"r\n</think>\n\n{a}"}] for a in answers]
        assert scored(completions=completions, reference=references) == [0.0] * len(answers)
    return log


CLASSES = ["经济", "体育", "科技", "教育"]


def test_answers_all_one_class_while_references_vary_is_a_collapse():
    early = (CLASSES * 2, CLASSES * 2)  # the first steps vary; only the last tenth counts
    late = (["科技"] * 7 + ["经济"], CLASSES * 2)
    collapse = _answer_log([early] * 9 + [late]).collapse()
    assert collapse == {"answer": "科技", "share": 0.875, "reference_share": 0.25}


@pytest.mark.parametrize("late", [
    (CLASSES * 2, CLASSES * 2),  # varied answers
    (["经济"] * 8, ["经济"] * 7 + ["体育"]),  # one answer, and the references are mostly that answer too
    ([""] * 8, CLASSES * 2),  # no answer at all is a format problem, which the format reward shows
])
def test_varied_answers_or_answers_that_follow_the_references_are_no_collapse(late):
    assert _answer_log([(CLASSES * 2, CLASSES * 2)] * 9 + [late]).collapse() is None


def test_the_watched_reward_function_keeps_its_name_for_trls_log():
    spec = resolve(news(), ["经济"])
    functions, _ = trl_reward_functions(spec)
    assert _answer_log([]).watching(functions[0]).__name__ == "format"
