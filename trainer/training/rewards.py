"""GRPO's rewards: pure functions of a completion (and the row's reference answer), each in [0, 1].

A completion of an R1-Distill model starts inside the think block (the generation prompt already ends in
`<think>\\n`), so a well-formed one is `reasoning </think> answer`: no opening tag is expected.

- format: exactly one `</think>`, a non-empty answer after it, no think tag inside the answer, and an answer no
  longer than a bound (so the model cannot pad its answer to game anything).
- correctness: the answer after `</think>` against the reference: label match (normalized: case, width and
  edge punctuation folded) for classification, exact match, or ROUGE-L F1 at or above a threshold for free text.

The reasoning splitter is `trainer.r1.split_reasoning`, the one evaluation scores with.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from trainer.config import Recipe, RewardsConfig
from trainer.errors import UserError
from trainer.evaluation.metrics import label_match
from trainer.r1 import EOS, THINK_CLOSE, THINK_OPEN, split_reasoning

SHORT_ANSWER_CHARS = 32
"""match=auto: reference answers all this short (or shorter) are labels, compared by label match."""
MIN_ANSWER_BOUND = 64
"""The automatic answer-length bound is twice the longest reference answer, and never below this."""


@dataclass(frozen=True)
class RewardSpec:
    """The resolved reward settings of one GRPO run (auto choices made against the data)."""

    match: str
    """label, exact or rouge."""
    rouge_threshold: float
    max_answer_chars: int
    weights: dict[str, float]
    """Reward name -> weight, only the rewards with a weight above 0, in a fixed order."""


def format_reward(completion: str, max_answer_chars: int) -> float:
    """1.0 when the completion closes its reasoning exactly once and then gives a short, non-empty answer."""
    text = _before_eos(completion)
    if text.count(THINK_CLOSE) != 1:
        return 0.0
    answer = split_reasoning(text).answer
    if not answer or THINK_OPEN in answer or len(answer) > max_answer_chars:
        return 0.0
    return 1.0


def correctness_reward(completion: str, reference: str, match: str, rouge_threshold: float = 0.5) -> float:
    """1.0 when the answer after `</think>` is right; an unclosed think block has no answer and scores 0."""
    split = split_reasoning(completion)
    if not split.closed or not split.answer:
        return 0.0
    return 1.0 if answer_matches(split.answer, reference, match, rouge_threshold) else 0.0


def answer_matches(answer: str, reference: str, match: str, rouge_threshold: float) -> bool:
    if match == "label":
        return label_match(answer, reference)
    if match == "exact":
        return answer.strip() == reference.strip()
    from trainer.evaluation.metrics import rouge_l, rouge_tokens

    return rouge_l(rouge_tokens(answer), rouge_tokens(reference)) >= rouge_threshold


def resolve(recipe: Recipe, references: Sequence[str]) -> RewardSpec:
    """Make the auto choices against the reference answers; a recipe nothing can be checked on is an error."""
    r = recipe.grpo.rewards
    checkable = [ref for ref in references if ref.strip()]
    if r.correctness > 0 and not checkable:
        raise UserError("GRPO needs answers it can check, and no training row has a reference answer after its "
                        "reasoning", where="grpo.rewards",
                        fix="use data whose assistant turns end in an answer (a label or a reference text), "
                            "or set grpo.rewards.correctness=0 to reward the format alone")
    if r.correctness == 0 and r.format == 0:
        raise UserError("no reward has a weight above 0", where="grpo.rewards", fix="e.g. grpo.rewards.correctness=1")
    longest = max((len(ref.strip()) for ref in checkable), default=0)
    weights = {"format": r.format, "correctness": r.correctness}
    return RewardSpec(match=choose_match(r, recipe.data.format, checkable), rouge_threshold=r.rouge_threshold,
                      max_answer_chars=r.max_answer_chars or max(MIN_ANSWER_BOUND, 2 * longest),
                      weights={name: w for name, w in weights.items() if w > 0})


def choose_match(rewards: RewardsConfig, data_format: str, references: Sequence[str]) -> str:
    if rewards.match != "auto":
        return rewards.match
    if data_format == "classification" or all(len(ref.strip()) <= SHORT_ANSWER_CHARS for ref in references):
        return "label"
    return "rouge"


def trl_reward_functions(spec: RewardSpec) -> tuple[list[Callable], list[float]]:
    """Reward callables in TRL's signature (named, so TRL logs `rewards/<name>/mean`) and their weights."""

    def format(completions, **_):  # noqa: A001 - the name TRL logs
        return [format_reward(completion_text(c), spec.max_answer_chars) for c in completions]

    def correctness(completions, reference, **_):
        return [correctness_reward(completion_text(c), ref, spec.match, spec.rouge_threshold)
                for c, ref in zip(completions, reference, strict=True)]

    chosen = {"format": format, "correctness": correctness}
    return [chosen[name] for name in spec.weights], list(spec.weights.values())


def describe(spec: RewardSpec) -> str:
    parts = [f"{name} x{weight:g}" for name, weight in spec.weights.items()]
    how = f"ROUGE-L >= {spec.rouge_threshold:g}" if spec.match == "rouge" else f"{spec.match} match"
    return f"rewards: {', '.join(parts)} (correctness by {how}; answers up to {spec.max_answer_chars} characters)"


def completion_text(completion) -> str:
    """TRL passes a conversational completion as [{"role": "assistant", "content": ...}], a plain one as text."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion)
    return str(completion)


def _before_eos(text: str) -> str:
    cut = text.find(EOS)
    return text if cut < 0 else text[:cut]
