"""The rows every variant trains on: deterministic synthetic reasoning rows with medical-o1-reasoning-SFT-like lengths.

Each row is a question, a chain of thought and an answer, written as sentences of words that the tokenizer maps to
exactly one token each (checked per tokenizer), so the sampled lengths are the token lengths. Lengths are drawn
from clipped log-normal distributions (parameters in `MEDICAL`, written into the output). Rows are rendered and
masked by the project's own `trainer.data.template.encode_conversation` (prompt masked, reasoning and eos trained);
the seed scripts' and notebook variants get the same conversation as one text string and tokenize it their way.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer.data.formats import Message
from trainer.data.template import IGNORE, encode_conversation, render_turns


@dataclass(frozen=True)
class Lengths:
    """Token count ~ round(median * exp(sigma * N(0, 1))), clipped to [low, high]."""
    median: float
    sigma: float
    low: int
    high: int

    def sample(self, rng: random.Random) -> int:
        return int(min(self.high, max(self.low, round(self.median * math.exp(rng.gauss(0.0, self.sigma))))))


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    question: Lengths
    reasoning: Lengths
    answer: Lengths
    max_length: int
    """The project's limit (model.max_seq_length): longer rows are cut there."""
    seed_length: int
    """Variant (a), the seed scripts' method: every row padded and cut to this many tokens."""
    seed: int = 20_251_125


MEDICAL = WorkloadSpec(
    name="medical-o1-like",
    question=Lengths(median=70, sigma=0.4, low=30, high=150),
    reasoning=Lengths(median=450, sigma=0.55, low=120, high=1500),
    answer=Lengths(median=150, sigma=0.5, low=50, high=400),
    max_length=2048, seed_length=512)
"""Realistic reasoning SFT: short clinical question, a few hundred to 1,500 tokens of reasoning, a short answer."""

TINY = WorkloadSpec(
    name="tiny", question=Lengths(12, 0.3, 6, 24), reasoning=Lengths(40, 0.5, 12, 90),
    answer=Lengths(12, 0.4, 6, 24), max_length=128, seed_length=64)
"""For CPU tests: the same shape of distribution, small enough for the 2-layer tiny model."""

SPECS = {"medical": MEDICAL, "tiny": TINY}


def long_rows(length: int) -> WorkloadSpec:
    """Rows of exactly `length` tokens: a short question and a reasoning longer than the limit, cut there."""
    short = max(4, min(100, length // 4))
    fixed = Lengths(short, 0.0, short, short)
    return WorkloadSpec(name=f"single-{length}", question=fixed, reasoning=Lengths(length, 0.0, length, length),
                        answer=fixed, max_length=length, seed_length=512)

_WORDS = """
the a of and to in is was for on with as by at from that this which patient patients history presents year old
woman man child pain fever cough blood pressure heart rate breath chest abdominal acute chronic symptoms signs
exam examination test tests level levels normal elevated low high increased decreased likely unlikely cause causes
diagnosis differential treatment therapy dose drug drugs medication infection bacterial viral immune response
cell cells tissue liver kidney renal lung cardiac skin bone muscle nerve brain spinal artery vein lesion mass
tumor cancer risk factor factors disease syndrome condition stage first second next then so but because if not
also could would should may might must can will we it its these those they their there here when while after
before during most more less some any each other such same different important consider considering think
thinking check wait let me see right okay hmm given suggests suggest points point toward towards rule out
finding findings result results typical classic common rare case cases age weeks days months hours recent recently
family social smoking alcohol weight loss gain fatigue nausea vomiting diarrhea rash swelling headache dizziness
vision hearing memory sleep urine stool glucose insulin sodium potassium calcium iron protein enzyme hormone
thyroid adrenal pituitary gland surgery procedure imaging scan ray biopsy culture antibiotic steroid dosage
management option options best answer question choice correct because therefore overall clinical picture
""".split()


def single_token_words(tokenizer) -> list[str]:
    """The word list, kept to words that this tokenizer encodes as one token after a space."""
    words = sorted({w for w in _WORDS if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1})
    if len(words) < 50:
        raise RuntimeError(f"only {len(words)} single-token words for this tokenizer")
    return words


def _text(rng: random.Random, words: list[str], n_tokens: int, end: str = ".") -> str:
    """Sentences of 6-18 words, each word one token and each full stop one token: about n_tokens in all."""
    parts, left = [], n_tokens
    while left > 0:
        size = rng.randint(6, 18)
        last = size + 1 >= left
        size = max(left - 1, 1) if last else size
        parts.append(" ".join(rng.choice(words) for _ in range(size)) + (end if last else "."))
        left -= size + 1
    return " ".join(parts)


def conversation(spec: WorkloadSpec, index: int, words: list[str]) -> list[Message]:
    """Row `index` of the workload (independent of how many rows are made)."""
    rng = random.Random(spec.seed * 1_000_003 + index)
    q, r, a = spec.question.sample(rng), spec.reasoning.sample(rng), spec.answer.sample(rng)
    return [Message("user", _text(rng, words, q, "?")),
            Message("assistant", _text(rng, words, a), _text(rng, words, r))]


def make_rows(spec: WorkloadSpec, n: int, tokenizer) -> list[dict[str, Any]]:
    """`n` rows: the conversation, the project's encoding (ids, labels) and the same row as one text string
    (rendered prompt + completion + eos) for the variants that tokenize text themselves."""
    words = single_token_words(tokenizer)
    rows = []
    for i in range(n):
        messages = conversation(spec, i, words)
        (encoded,) = encode_conversation(messages, tokenizer, spec.max_length)
        (turn,) = render_turns(messages, tokenizer)
        rows.append({"question": messages[0].content, "reasoning": messages[1].reasoning,
                     "answer": messages[1].content, "text": turn.prompt + turn.completion + tokenizer.eos_token,
                     "input_ids": encoded.input_ids, "labels": encoded.labels, "truncated": encoded.truncated})
    return rows


def rows_needed(steps: int, per_step_rows: int, packing_factor: float = 1.0) -> int:
    return max(16, math.ceil(steps * per_step_rows * packing_factor))


def save_rows(rows: list[dict[str, Any]], spec: WorkloadSpec, path: Path) -> None:
    Path(path).write_text(json.dumps({"spec": asdict(spec), "rows": rows}, ensure_ascii=False), encoding="utf-8")


def load_rows(path: Path) -> tuple[WorkloadSpec, list[dict[str, Any]]]:
    body = json.loads(Path(path).read_text(encoding="utf-8"))
    s = body["spec"]
    spec = WorkloadSpec(s["name"], *(Lengths(**s[k]) for k in ("question", "reasoning", "answer")),
                        s["max_length"], s["seed_length"], s["seed"])
    return spec, body["rows"]


def percentiles(values: list[int], qs=(10, 50, 90, 99, 100)) -> dict[str, int]:
    ordered = sorted(values)
    return {f"p{q}": ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))] for q in qs}


def mean(values: list[int]) -> float:
    return round(sum(values) / max(len(values), 1), 1)


def statistics(rows: list[dict[str, Any]], spec: WorkloadSpec, tokenizer) -> dict[str, Any]:
    """Realised token statistics of the rows, as the project encodes them and as the seed method cuts them."""
    totals = [len(r["input_ids"]) for r in rows]
    trained = [sum(1 for x in r["labels"] if x != IGNORE) for r in rows]
    prompts = [t - k for t, k in zip(totals, trained)]
    parts = {key: [len(tokenizer(r[key], add_special_tokens=False)["input_ids"]) for r in rows]
             for key in ("question", "reasoning", "answer")}
    seed_kept = [min(t, spec.seed_length) for t in totals]
    return {
        "rows": len(rows), "spec": asdict(spec),
        "mean_total_tokens": mean(totals), "mean_trained_tokens": mean(trained), "mean_prompt_tokens": mean(prompts),
        "total_tokens": percentiles(totals), "trained_tokens": percentiles(trained),
        "question_tokens": {"mean": mean(parts["question"]), **percentiles(parts["question"], (0, 50, 100))},
        "reasoning_tokens": {"mean": mean(parts["reasoning"]), **percentiles(parts["reasoning"], (0, 50, 90, 100))},
        "answer_tokens": {"mean": mean(parts["answer"]), **percentiles(parts["answer"], (0, 50, 100))},
        "truncated_at_max_length": sum(bool(r["truncated"]) for r in rows),
        "seed_method": {"cut_at": spec.seed_length, "rows_cut": sum(t > spec.seed_length for t in totals),
                        "mean_tokens_kept": mean(seed_kept),
                        "share_of_trained_tokens_lost": round(
                            1 - sum(max(0, k - p) for k, p in zip(seed_kept, prompts)) / max(sum(trained), 1), 3)},
    }
