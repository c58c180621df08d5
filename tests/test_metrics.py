"""Tests for trainer.evaluation.metrics.

Reference comparisons need the test-only packages rouge-chinese and nltk and are skipped without them;
the hand-computed cases below keep the suite meaningful when they are absent.
"""
from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.evaluation.metrics import (
    bleu4_chars,
    corpus_scores,
    label_match,
    lcs_length,
    normalize_label,
    perplexity,
    rouge_bleu,
    rouge_tokens,
)

REPO = Path(__file__).resolve().parents[1]
F = 1e-8  # rouge-chinese's F1 denominator guard


def f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r + F)


# --- labels ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pred, ref",
    [
        ("体育。", "体育"),
        ("  体育！\n", "体育"),
        ("「财经」，", "财经"),
        ("：科技：", "科技"),
        (" Positive.", "positive"),
        ("NEGATIVE!!", "negative"),
        ("**Positive**", "positive"),
        ("ｐｏｓｉｔｉｖｅ。", "Positive"),
        ("very   positive", "Very positive"),
        ('"neutral"', "neutral"),
    ],
)
def test_label_match_true(pred, ref):
    assert label_match(pred, ref)


@pytest.mark.parametrize(
    "pred, ref",
    [
        ("体育新闻", "体育"),
        ("positive", "negative"),
        ("not positive", "positive"),
        ("", "positive"),
        ("。", ""),
        ("", ""),
    ],
)
def test_label_match_false(pred, ref):
    assert not label_match(pred, ref)


def test_normalize_label_keeps_inner_punctuation():
    assert normalize_label("  Non-Spam. ") == "non-spam"
    assert normalize_label("e.g.") == "e.g"


# --- hand-computed metric values ---------------------------------------------------------------


def test_hand_english_partial_overlap():
    # words [the, cat, sat] vs [the, cat, ran]: 2/3 unigrams, 1/2 bigrams, LCS 2.
    # chars: clipped precisions 9/11, 7/10, 6/9, 5/8 and equal lengths -> BLEU = (1890/7920)^(1/4).
    got = rouge_bleu("the cat sat", "the cat ran")
    assert got["rouge-1"] == pytest.approx(100 * f1(2 / 3, 2 / 3), abs=1e-9)
    assert got["rouge-2"] == pytest.approx(100 * f1(1 / 2, 1 / 2), abs=1e-9)
    assert got["rouge-l"] == pytest.approx(100 * f1(2 / 3, 2 / 3), abs=1e-9)
    assert got["bleu-4"] == pytest.approx(100 * (21 / 88) ** 0.25, abs=1e-9)
    assert got["rouge-1"] == pytest.approx(66.666666166667, abs=1e-9)


def test_hand_distinct_ngrams_and_lcs():
    # ROUGE-N counts distinct n-grams; ROUGE-L counts every word.
    got = rouge_bleu("a a a", "a")
    assert got["rouge-1"] == pytest.approx(100 * f1(1, 1), abs=1e-9)
    assert got["rouge-2"] == 0.0
    assert got["rouge-l"] == pytest.approx(100 * f1(1 / 3, 1), abs=1e-9)
    # word order: all unigrams shared, no bigram, LCS 3 of 4.
    got = rouge_bleu("a b c d", "a c b d")
    assert got["rouge-1"] == pytest.approx(100 * f1(1, 1), abs=1e-9)
    assert got["rouge-2"] == 0.0
    assert got["rouge-l"] == pytest.approx(100 * f1(3 / 4, 3 / 4), abs=1e-9)


def test_hand_bleu_smoothing_and_brevity():
    # "ab" vs "abcd": p1=2/2, p2=1/1, no 3/4-grams -> 1/(2*1), 1/(4*1); brevity exp(1 - 4/2).
    assert bleu4_chars("ab", "abcd") == pytest.approx(math.exp(-1) * (1 / 8) ** 0.25, abs=1e-12)
    # "体育新闻" vs "体育": p1=2/4, p2=1/3, p3 -> 1/(2*2), p4 -> 1/(4*1); longer than ref, no penalty.
    assert bleu4_chars("体育新闻", "体育") == pytest.approx((1 / 96) ** 0.25, abs=1e-12)
    assert bleu4_chars("abcd", "abcd") == 1.0
    assert bleu4_chars("xyz", "abc") == 0.0


def test_identical_and_empty():
    got = rouge_bleu("今天天气很好", "今天天气很好")
    assert got["rouge-1"] == got["rouge-2"] == got["rouge-l"] == pytest.approx(100 / (1 + F / 2), abs=1e-9)
    assert got["bleu-4"] == pytest.approx(100.0, abs=1e-9)
    for pred, ref in [("", "体育"), ("体育", ""), ("  \n ", "体育"), ("", "")]:
        got = rouge_bleu(pred, ref)
        assert got["rouge-1"] == got["rouge-2"] == got["rouge-l"] == got["bleu-4"] == 0.0, (pred, ref)
    # A blank prediction gets no ROUGE, but BLEU counts characters, spaces too (as LLaMA-Factory does): four
    # spaces against "a    b" match every 1- to 4-gram, so BLEU is the brevity penalty exp(1 - 6/4).
    got = rouge_bleu("    ", "a    b")
    assert got["rouge-1"] == 0.0 and got["bleu-4"] == pytest.approx(100 * math.exp(-0.5), abs=1e-9)


def test_rouge_tokens_follow_jieba_for_english():
    assert rouge_tokens("Hello, world! It's 3.14 and 50% of C++") == [
        "Hello", ",", "world", "!", "It", "'", "s", "3.14", "and", "50%", "of", "C++",
    ]
    # a blank line inside the text leaves an empty word, as rouge-chinese does
    assert rouge_tokens("Yes.\n\nNo") == ["Yes", ".", "", "No"]
    # rouge-chinese's sentence rule breaks a run of seven dots after the sixth
    assert rouge_tokens("a.......b") == ["a", "......", ".", "b"]


def test_lcs_length_matches_dynamic_programming():
    rng = random.Random(0)

    def dp(a, b):
        row = [0] * (len(b) + 1)
        for x in a:
            prev = 0
            for j, y in enumerate(b, 1):
                prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
        return row[-1]

    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == dp(a, b)


def test_corpus_scores_rounds_each_pair_like_llamafactory():
    preds, refs = ["the cat sat", "体育", ""], ["the cat ran", "体育新闻", "x"]
    rows = [rouge_bleu(p, r) for p, r in zip(preds, refs)]
    got = corpus_scores(preds, refs)
    raw = corpus_scores(preds, refs, ndigits=None)
    for key in ("rouge-1", "rouge-2", "rouge-l", "bleu-4"):
        assert got[key] == pytest.approx(sum(round(r[key], 4) for r in rows) / 3, abs=1e-12)
        assert raw[key] == pytest.approx(sum(r[key] for r in rows) / 3, abs=1e-12)
    with pytest.raises(ValueError):
        corpus_scores(["a"], [])
    with pytest.raises(ValueError):
        corpus_scores([], [])


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(2.0) == pytest.approx(math.e**2)
    assert perplexity(1e6) == math.inf
    assert math.isnan(perplexity(math.nan))


def test_jieba_startup_is_silent():
    code = "from trainer.evaluation.metrics import rouge_bleu; rouge_bleu('今天天气很好', '今天天气不错')"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout == ""


# --- comparison with the reference implementations ---------------------------------------------

PAIRS = [
    ("今天天气很好", "今天天气很好"),
    ("The quick brown fox jumps over the lazy dog.", "The quick brown fox jumps over the lazy dog."),
    ("苹果香蕉", "汽车飞机"),
    ("alpha beta gamma", "delta epsilon zeta"),
    ("今天天气很好，我们去公园散步。", "今天天气不错，我们去公园玩吧。"),
    ("The cat sat on the mat.", "A cat was sitting on the mat!"),
    ("这部电影很好看，强烈推荐。\n\n总之，值得一看！", "电影非常好看。值得一看。"),
    ("Positive.\n\nThe review praises the acting.", "positive"),
    ("", "体育"),
    ("体育", ""),
    ("   \n", "anything"),
    ("a.......b", "a......b"),
    ("他说：“好的。”然后走了。", "他说“好的”，然后离开了。"),
    ("\n\n答案是 A", "答案是A"),
    ("Mixed 中英文 text with 3.14 and 50%", "中英文 mixed text, 3.14 percent"),
    ("体育。", "体育"),
    ("x", "x"),
    ("ab", "abcd"),
]


@pytest.fixture(scope="module")
def reference():
    for module, package in (("rouge_chinese", "rouge-chinese"), ("nltk", "nltk")):
        pytest.importorskip(module, reason=f"{package} (test-only reference) not importable", exc_type=ImportError)
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    def score(pred: str, label: str) -> dict[str, float]:
        # LLaMA-Factory's ComputeSimilarity, per pair, without its rounding
        hyp, ref = list(jieba.cut(pred)), list(jieba.cut(label))
        if len(" ".join(hyp).split()) == 0 or len(" ".join(ref).split()) == 0:
            out = {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
        else:
            scores = Rouge().get_scores(" ".join(hyp), " ".join(ref))[0]
            out = {k: v["f"] * 100 for k, v in scores.items()}
        out["bleu-4"] = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3) * 100
        return out

    return score


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("pred, ref", PAIRS)
def test_matches_reference_fixed_pairs(reference, pred, ref):
    assert rouge_bleu(pred, ref) == pytest.approx(reference(pred, ref), abs=1e-6)


@pytest.mark.filterwarnings("ignore")
def test_matches_reference_random_pairs(reference):
    rng = random.Random(1234)
    vocab = ["今天", "天气", "很", "好", "我们", "公园", "体育", "新闻", "the", "cat", "sat", "mat", "A", "3.14",
             " ", " ", "\n", "\n\n", "。", "，", "！", "？", "?", ".", "......", "…", "“", "”", "’", ",", "C++", "é"]
    for _ in range(250):
        pred = "".join(rng.choice(vocab) for _ in range(rng.randint(0, 25)))
        ref = "".join(rng.choice(vocab) for _ in range(rng.randint(0, 25)))
        assert rouge_bleu(pred, ref) == pytest.approx(reference(pred, ref), abs=1e-6), (pred, ref)


@pytest.mark.filterwarnings("ignore")
def test_corpus_scores_match_llamafactory_means(reference):
    preds, refs = zip(*PAIRS)
    rows = [reference(p, r) for p, r in PAIRS]
    want = {k: sum(round(r[k], 4) for r in rows) / len(rows) for k in rows[0]}
    assert corpus_scores(preds, refs) == pytest.approx(want, abs=1e-6)
