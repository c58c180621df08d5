"""The bundled sample datasets: reproducible byte for byte, and shaped the way the recipes and tests rely on."""
from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainer import samples

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "recipes" / "samples"
COUNTS = {"medical": 240, "news": 400, "imdb": 300, "alpaca": 200}
KEYS = {
    "medical": ["Question", "Complex_CoT", "Response"],
    "news": ["conversations"],
    "imdb": ["text", "label"],
    "alpaca": ["instruction", "input", "output"],
}
THINK = re.compile(r"<think>\n(.+?)，所以属于(.+?)。\n</think>\n\n(.+)", re.S)


def load(name: str) -> list[dict]:
    return [json.loads(line) for line in (COMMITTED / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("hash_seed", ["0", "12345"])
def test_cli_regenerates_committed_files_byte_for_byte(tmp_path, hash_seed):
    # A different PYTHONHASHSEED would expose any ordering that leaks from set or dict hashing.
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "trainer.samples", str(tmp_path)], check=True, env=env,
                   capture_output=True, cwd=REPO)
    for name in COUNTS:
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (COMMITTED / f"{name}.jsonl").read_bytes(), name


def test_write_samples_in_process_matches_committed(tmp_path):
    paths = samples.write_samples(tmp_path / "nested" / "out")
    assert sorted(paths) == sorted(COUNTS)
    for name, path in paths.items():
        assert path.read_bytes() == (COMMITTED / f"{name}.jsonl").read_bytes(), name


def test_other_seed_changes_content_but_not_shape():
    other = samples.news_rows(seed=7)
    assert other != samples.news_rows()
    assert sorted(map(json.dumps, other)) == sorted(map(json.dumps, samples.news_rows()))
    assert samples.medical_rows(seed=7) != samples.medical_rows()


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_files_are_plain_jsonl_with_stable_keys(name):
    raw = (COMMITTED / f"{name}.jsonl").read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n") and not raw.startswith(b"\xef\xbb\xbf")
    rows = load(name)
    assert len(rows) == COUNTS[name]
    assert all(list(row) == KEYS[name] for row in rows)


def test_news_classes_are_balanced_and_answers_are_the_class_alone():
    assert samples.NEWS_CLASSES == ("政治", "经济", "科技", "娱乐", "体育", "教育", "健康", "国际", "国内", "社会")
    counts = collections.Counter()
    for row in load("news"):
        human, gpt = row["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert human["value"].startswith("新闻分类:")
        match = THINK.fullmatch(gpt["value"])
        assert match, gpt["value"]
        rationale, reasoned_class, answer = match.groups()
        assert answer == reasoned_class and rationale == samples.NEWS_RATIONALES[answer]
        counts[answer] += 1
    assert counts == {cls: 40 for cls in samples.NEWS_CLASSES}


def test_news_headline_holds_exactly_one_keyword_of_its_class():
    keyword_class = {kw: cls for cls, kws in samples.NEWS_KEYWORDS.items() for kw in kws}
    for row in load("news"):
        headline = row["conversations"][0]["value"].removeprefix("新闻分类:")
        _, cls, _ = THINK.fullmatch(row["conversations"][1]["value"]).groups()
        found = [kw for kw in keyword_class if kw in headline]
        assert len(found) == 1 and keyword_class[found[0]] == cls, headline


def test_news_rationales_are_distinct_per_class():
    assert set(samples.NEWS_RATIONALES) == set(samples.NEWS_CLASSES)
    assert len(set(samples.NEWS_RATIONALES.values())) == len(samples.NEWS_CLASSES)


def test_news_keywords_are_unique_to_their_class():
    assert list(samples.NEWS_KEYWORDS) == list(samples.NEWS_CLASSES)
    owners = [(kw, cls) for cls, kws in samples.NEWS_KEYWORDS.items() for kw in kws]
    assert all(len(kws) == 5 for kws in samples.NEWS_KEYWORDS.values())
    assert len({kw for kw, _ in owners}) == 50
    for kw, cls in owners:
        for other, other_cls in owners:
            if other_cls != cls:
                assert kw not in other, (kw, other)


def test_medical_rows_have_three_nonempty_columns_and_a_consistent_diagnosis():
    by_dx = {c[0]: c for c in samples.MEDICAL_CONDITIONS}
    seen = collections.Counter()
    for row in load("medical"):
        assert all(isinstance(v, str) and v.strip() for v in row.values())
        dx = [d for d in by_dx if d in row["Response"].lower()]
        assert len(dx) == 1, row["Response"]
        _, findings, management, _, _ = by_dx[dx[0]]
        assert dx[0] in row["Complex_CoT"].lower()
        assert management in row["Response"]
        assert sum(f in row["Question"] for f in findings) == 3
        assert 2 <= row["Complex_CoT"].count(". ") + 1 <= 4
        seen[dx[0]] += 1
    assert seen == {dx: 20 for dx in by_dx}


def test_medical_findings_identify_one_condition():
    findings = [f for c in samples.MEDICAL_CONDITIONS for f in c[1]]
    assert len(samples.MEDICAL_CONDITIONS) == 12
    assert len(set(findings)) == len(findings)
    for row in load("medical"):
        owners = {c[0] for c in samples.MEDICAL_CONDITIONS for f in c[1] if f in row["Question"]}
        assert len(owners) == 1, row["Question"]


def test_imdb_labels_are_balanced_and_wording_matches_the_label():
    rows = load("imdb")
    assert collections.Counter(row["label"] for row in rows) == {0: 150, 1: 150}
    assert len({row["text"] for row in rows}) == len(rows)
    words = {label: samples._WORDS[label][0] for label in (0, 1)}
    for row in rows:
        tokens = set(re.findall(r"[a-z]+", row["text"].lower()))
        assert tokens & set(words[row["label"]]), row
        assert not tokens & set(words[1 - row["label"]]), row


def recompute(instruction: str, given: str) -> str | None:
    """The expected output for the tasks the test knows, from the instruction and input alone."""
    if instruction == "Add the two numbers.":
        a, b = given.split(" and ")
        return str(int(a) + int(b))
    if m := re.fullmatch(r"What is (\d+) plus (\d+)\?", instruction):
        return str(int(m[1]) + int(m[2]))
    if instruction == "Reverse the letters of the word.":
        return given[::-1]
    if instruction == "Count the words in the sentence.":
        return str(len(given.split()))
    if instruction == "Convert the text to upper case.":
        return given.upper()
    if instruction == "Give the largest number in the list.":
        return str(max(int(x) for x in given.split(", ")))
    if instruction == "Give the capital of the country.":
        return samples.CAPITALS[given]
    if m := re.fullmatch(r"What is the capital of (\w+)\?", instruction):
        return samples.CAPITALS[m[1]]
    return None


def test_alpaca_outputs_are_correct_and_short():
    assert samples.CAPITALS["France"] == "Paris" and samples.CAPITALS["Japan"] == "Tokyo"
    rows = load("alpaca")
    checked = 0
    for row in rows:
        expected = recompute(row["instruction"], row["input"])
        assert expected is not None, row
        assert row["output"] == expected, row
        assert 0 < len(row["output"]) <= 40
        checked += 1
    assert checked == 200
    assert 0 < sum(row["input"] == "" for row in rows) < len(rows)
