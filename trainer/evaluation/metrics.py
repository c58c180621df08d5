"""Pure metric functions for the evaluation stage.

Completions of DeepSeek-R1-Distill models look like `<reasoning>\n</think>\n\n<answer>` because the
generation prompt already opened `<think>\n`. `trainer.r1.split_reasoning` separates the two parts; these
functions score an answer against a reference.

ROUGE-1/2/L and BLEU-4 reproduce LLaMA-Factory's `predict_rouge-1` ... `predict_bleu-4` numbers
(`ComputeSimilarity`, which calls jieba, rouge-chinese and nltk) in plain Python, so results can be
compared with runs made there. Only jieba is needed at run time.
"""
from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Sequence

from trainer.errors import UserError
from trainer.r1 import Split

METRIC_KEYS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")


def think_format_ok(split: Split) -> bool:
    """True when the think block was closed and a non-empty answer follows it."""
    return split.closed and bool(split.answer)


def _is_edge_punct(ch: str) -> bool:
    # Unicode P* covers CJK marks (。，！：「」…) and ASCII .,!?; ASCII symbols such as * ` $ are S*,
    # and markdown emphasis (**Positive**) is common enough in model answers to strip too.
    return unicodedata.category(ch).startswith("P") or (ch.isascii() and not ch.isalnum() and not ch.isspace())


def normalize_label(text: str) -> str:
    """Canonical form of a class label: NFKC, casefolded, without surrounding whitespace or punctuation.

    NFKC folds fullwidth forms (ｐｏｓｉｔｉｖｅ, ！) into their ordinary ones; inner runs of whitespace
    collapse to one space. Punctuation inside the label (`e.g`, `non-spam`) is kept.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    start, end = 0, len(text)
    while start < end and (text[start].isspace() or _is_edge_punct(text[start])):
        start += 1
    while end > start and (text[end - 1].isspace() or _is_edge_punct(text[end - 1])):
        end -= 1
    return " ".join(text[start:end].split())


def label_match(pred: str, ref: str) -> bool:
    """Whether a predicted label equals the reference after `normalize_label`.

    A prediction that normalizes to nothing never matches, even an equally empty reference: a blank
    answer must not count as correct.
    """
    p, r = normalize_label(pred), normalize_label(ref)
    return bool(p) and p == r


@lru_cache(maxsize=1)
def _jieba():
    try:
        import jieba
    except ImportError as exc:
        raise UserError("ROUGE scores need the jieba package", fix="pip install jieba") from exc
    import logging

    # jieba logs "Building prefix dict..." at DEBUG through its own stderr handler on first use.
    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


# rouge-chinese cuts each text into sentences with these rules before splitting on spaces. On
# jieba-joined text they almost never matter (sentence marks are separate tokens followed by a space),
# but a run of 7+ dots is one jieba token that the second rule splits, so they are kept for exactness.
_SENTENCE_RULES = (
    (re.compile("([。！？?])([^”’])"), "\\1\n\\2"),
    (re.compile("(\\.{6})([^”’])"), "\\1\n\\2"),
    (re.compile("(…{2})([^”’])"), "\\1\n\\2"),
    (re.compile("([。！？?][”’])([^，。！？?])"), "\\1\n\\2"),
)


def rouge_tokens(text: str) -> list[str]:
    """The words ROUGE compares, exactly as LLaMA-Factory + rouge-chinese derive them.

    Every text, English included, goes through `jieba.cut` and the tokens are joined with spaces, as in
    LLaMA-Factory. For English this amounts to: runs of ASCII letters and digits are words (`3.14`,
    `50%` and dictionary terms like `C++` stay whole), every other punctuation mark is its own word,
    accented letters break words (`café` -> `caf`, `é`), and whitespace never becomes a word. A plain
    regex splitter would disagree with LLaMA-Factory on those cases, so none is used.

    One quirk is kept on purpose: a line holding only whitespace between other lines (a blank line
    inside the text) becomes an empty-string word, because rouge-chinese splits on newlines before
    normalizing spaces. Trailing blank lines are stripped first and add nothing.
    """
    joined = " ".join(_jieba().lcut(text))
    for pattern, repl in _SENTENCE_RULES:
        joined = pattern.sub(repl, joined)
    words: list[str] = []
    for piece in joined.rstrip().split("\n"):
        if piece:
            words.extend(" ".join(piece.split()).split(" "))
    return words


def _f1(overlap: int, hyp_count: int, ref_count: int) -> float:
    # rouge-chinese's formula, 1e-8 included, so scores agree to the last digit (identical texts give
    # 99.9999995, not 100).
    precision = overlap / hyp_count if hyp_count else 0.0
    recall = overlap / ref_count if ref_count else 0.0
    return 2.0 * ((precision * recall) / (precision + recall + 1e-8))


def _ngram_set(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    # rouge-chinese counts distinct n-grams (its default `exclusive=True`), not occurrences.
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def rouge_n(hyp: Sequence[str], ref: Sequence[str], n: int) -> float:
    """ROUGE-N F1 (0-1) over distinct n-grams of two word lists."""
    h, r = _ngram_set(hyp, n), _ngram_set(ref, n)
    return _f1(len(h & r), len(h), len(r))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two sequences.

    Uses Hyyro's bit-parallel recurrence over Python integers, so long reasoning-model outputs cost
    O(len(a) * len(b) / 64) word operations instead of a quadratic table of Python objects.
    """
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(hyp: Sequence[str], ref: Sequence[str]) -> float:
    """ROUGE-L F1 (0-1) from the LCS of the two whole word lists, repeated words counted."""
    return _f1(lcs_length(ref, hyp), len(hyp), len(ref))


def bleu4_chars(pred: str, ref: str) -> float:
    """Sentence BLEU-4 (0-1) over characters, as nltk's `sentence_bleu` with smoothing method3.

    Mirrors nltk: clipped n-gram precision with the denominator floored at 1, zero when no character
    matches, orders without a match replaced by 1 / (2**k * denominator) for the k-th such order
    (NIST geometric smoothing), and brevity penalty exp(1 - len(ref) / len(pred)) unless pred is longer.
    """
    precisions: list[tuple[int, int]] = []
    for n in range(1, 5):
        hyp_grams = Counter(pred[i:i + n] for i in range(len(pred) - n + 1))
        ref_grams = Counter(ref[i:i + n] for i in range(len(ref) - n + 1))
        matched = sum(min(count, ref_grams[g]) for g, count in hyp_grams.items())
        precisions.append((matched, max(1, sum(hyp_grams.values()))))
    if precisions[0][0] == 0:
        return 0.0
    logs, k = [], 1
    for matched, total in precisions:
        if matched:
            p = matched / total
        else:
            p = 1 / (2**k * total)
            k += 1
        logs.append(0.25 * math.log(p))
    bp = 1.0 if len(pred) > len(ref) else math.exp(1 - len(ref) / len(pred))
    return bp * math.exp(math.fsum(logs))


def rouge_bleu(pred: str, ref: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 on jieba words and BLEU-4 on characters, each 0-100, for one pair.

    As in LLaMA-Factory, a prediction or reference with no non-whitespace character gets 0 ROUGE, while
    BLEU is computed regardless (0 for an empty string, but spaces can still match spaces). Values are
    not rounded; `corpus_scores` rounds like LLaMA-Factory does.
    """
    if not pred.split() or not ref.split():
        rouge = {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    else:
        hyp_words, ref_words = rouge_tokens(pred), rouge_tokens(ref)
        rouge = {
            "rouge-1": rouge_n(hyp_words, ref_words, 1) * 100,
            "rouge-2": rouge_n(hyp_words, ref_words, 2) * 100,
            "rouge-l": rouge_l(hyp_words, ref_words) * 100,
        }
    return {**rouge, "bleu-4": bleu4_chars(pred, ref) * 100}


def corpus_scores(preds: Sequence[str], refs: Sequence[str], ndigits: int | None = 4) -> dict[str, float]:
    """Mean of `rouge_bleu` over aligned pairs, keyed like `rouge_bleu`.

    Each pair's scores are rounded to `ndigits` before averaging because LLaMA-Factory does exactly
    that, so the means match its `predict_*` values; pass None for unrounded means.
    Raises ValueError for lists of different lengths or no pairs at all, which are caller bugs.
    """
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    if not preds:
        raise ValueError("no prediction/reference pairs to score")
    columns: dict[str, list[float]] = {key: [] for key in METRIC_KEYS}
    for pred, ref in zip(preds, refs):
        for key, value in rouge_bleu(pred, ref).items():
            columns[key].append(value if ndigits is None else round(value, ndigits))
    return {key: math.fsum(values) / len(values) for key, values in columns.items()}


def perplexity(mean_loss: float) -> float:
    """exp(mean token cross-entropy); inf instead of OverflowError when the loss is huge (> ~709)."""
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf
