"""GGUF export of the tiny model: conversion, quantization, verification against HF, and the Ollama Modelfile.

Tests marked `llamacpp` need llama.cpp's tools (built from the pinned sources with cmake: about 10 minutes on two
cores the first time, then reused from R1TUNE_CACHE) and llama-cpp-python (which loads that build's libllama). The
session fixture converts and quantizes once (about a minute on two cores); the other tests need neither.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from export import gguf, modelfile, verify
from trainer.errors import UserError
from trainer import r1
from export.gguf_metadata import read_gguf_metadata

needs_tools = pytest.mark.llamacpp

GGUF_FILE_TYPE = {"f16": 1, "q8_0": 7}  # llama.cpp's `general.file_type` values (LLAMA_FTYPE_MOSTLY_*)


@pytest.fixture(scope="session")
def ggufs(tiny_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, gguf.Step]:
    """The tiny model as f16 (converter) and q8_0 (llama-quantize), made once per session."""
    out = tmp_path_factory.mktemp("gguf")
    f16 = gguf.convert(tiny_path, out / "tiny-f16.gguf", "f16")
    return {"f16": f16, "q8_0": gguf.quantize(f16.path, out / "tiny-q8_0.gguf", "q8_0")}


def test_unknown_quant_type_lists_valid_ones() -> None:
    with pytest.raises(UserError) as err:
        gguf.check_quant_type("q4_km")
    assert "did you mean q4_k_m" in str(err.value)
    assert all(name in str(err.value) for name in gguf.QUANT_TYPES)
    assert gguf.check_quant_type("Q4-K-M") == "q4_k_m"


def test_quantize_rejects_unknown_type_before_running(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown GGUF type"):
        gguf.quantize(tmp_path / "in.gguf", tmp_path / "out.gguf", "q3")
    assert list(tmp_path.iterdir()) == []


def test_failed_conversion_leaves_no_final_file(tiny_path: Path, tmp_path: Path) -> None:
    # A model whose weights file was cut short, as after an interrupted copy: the converter fails mid-way.
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in tiny_path.iterdir():
        if item.name != "model.safetensors":
            (broken / item.name).symlink_to(item)
    (broken / "model.safetensors").write_bytes((tiny_path / "model.safetensors").read_bytes()[:100_000])
    out = tmp_path / "out" / "model-f16.gguf"
    with pytest.raises(UserError, match="converting .* failed"):
        gguf.convert(broken, out)
    assert list(out.parent.iterdir()) == []  # neither the final name nor a temporary file is left


def test_staged_model_replaces_the_chat_template(tiny_path: Path) -> None:
    from transformers import AutoTokenizer

    with gguf._staged_model(tiny_path, "{{ messages }}") as staged:
        assert json.loads((staged / "tokenizer_config.json").read_text("utf-8"))["chat_template"] == "{{ messages }}"
        assert not (staged / "chat_template.jinja").exists()
        assert (staged / "model.safetensors").resolve() == (tiny_path / "model.safetensors").resolve()
        assert AutoTokenizer.from_pretrained(staged).chat_template == "{{ messages }}"
    assert not staged.exists()
    with gguf._staged_model(tiny_path, None) as same:
        assert same == tiny_path


def test_convert_rejects_a_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no config.json"):
        gguf.convert(tmp_path, tmp_path / "m.gguf")


@needs_tools
def test_files_have_the_requested_types(ggufs: dict[str, gguf.Step]) -> None:
    for qtype, step in ggufs.items():
        assert step.path.name == f"tiny-{qtype}.gguf"
        assert read_gguf_metadata(step.path)["general.file_type"] == GGUF_FILE_TYPE[qtype]
    assert ggufs["q8_0"].path.stat().st_size < ggufs["f16"].path.stat().st_size


@needs_tools
def test_second_call_skips_existing_files(ggufs: dict[str, gguf.Step], tiny_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a step ran although its file exists")

    monkeypatch.setattr(gguf, "_run", must_not_run)
    mtimes = {q: s.path.stat().st_mtime_ns for q, s in ggufs.items()}
    f16, q8 = ggufs["f16"].path, ggufs["q8_0"].path
    steps = [gguf.convert(tiny_path, f16, "f16"), gguf.quantize(f16, q8, "q8_0")]
    assert [s.skipped for s in steps] == [True, True]
    assert {q: ggufs[q].path.stat().st_mtime_ns for q in mtimes} == mtimes


@needs_tools
def test_tokenization_matches_hf(ggufs: dict[str, gguf.Step], tiny_path: Path) -> None:
    result = verify.check_tokenization(ggufs["f16"].path, tiny_path)
    assert result.passed, result.mismatches
    assert result.numbers["cases"] >= 12


@needs_tools
def test_chat_template_is_the_original(ggufs: dict[str, gguf.Step]) -> None:
    result = verify.check_chat_template(ggufs["f16"].path)
    assert result.passed, result.mismatches


@needs_tools
def test_reading_the_vocabulary_says_nothing_about_a_training_context(ggufs: dict[str, gguf.Step], capfd) -> None:
    # llama.cpp warned "n_ctx_seq (512) > n_ctx_train (0)" on every vocabulary-only load (issue 15.4); the file
    # itself has its real trained context (the tiny config's max_position_embeddings), so the warning was noise.
    verify.check_chat_template(ggufs["f16"].path)
    assert "n_ctx_train" not in capfd.readouterr().err
    assert read_gguf_metadata(ggufs["f16"].path)["qwen2.context_length"] == 131_072


@needs_tools
def test_chat_template_override_is_detected(ggufs: dict[str, gguf.Step]) -> None:
    result = verify.check_chat_template(ggufs["f16"].path, expected="{{ messages }}")
    assert not result.passed and result.mismatches


@needs_tools
def test_f16_greedy_continuation_matches_hf(ggufs: dict[str, gguf.Step], tiny_path: Path) -> None:
    result = verify.check_greedy(ggufs["f16"].path, tiny_path)
    assert result.passed, (result.summary, result.mismatches)
    assert result.numbers["tokens"] >= 150


@needs_tools
def test_q8_0_top1_agreement(ggufs: dict[str, gguf.Step], tiny_path: Path) -> None:
    result = verify.check_top1_agreement(ggufs["q8_0"].path, tiny_path)
    assert result.passed, result.summary
    assert result.numbers["positions"] >= 400


@needs_tools
def test_checks_fail_against_a_different_model(ggufs: dict[str, gguf.Step], other_model: Path) -> None:
    # Negative control: the same GGUFs compared with a perturbed copy of the tiny model must not pass.
    assert not verify.check_greedy(ggufs["f16"].path, other_model).passed
    assert not verify.check_top1_agreement(ggufs["q8_0"].path, other_model).passed


@pytest.fixture(scope="session")
def other_model(tiny_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with noise of half each tensor's spread added: same tokenizer, different predictions."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("other-model")
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.5 * param.std())
    model.save_pretrained(out)
    for item in tiny_path.iterdir():
        if item.name.startswith(("tokenizer", "chat_template")):
            shutil.copy(item, out)
    return out


# --- Modelfile -------------------------------------------------------------------------------------------------

def test_modelfile_contents(tmp_path: Path) -> None:
    path = modelfile.write_modelfile(tmp_path, "tiny-q8_0.gguf", parameters={"num_ctx": 4096})
    text = path.read_text(encoding="utf-8")
    assert text.startswith("FROM ./tiny-q8_0.gguf\n")
    for token in ("<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"):
        assert f'PARAMETER stop "{token}"' in text
    assert "PARAMETER temperature 0.6" in text and "PARAMETER top_p 0.95" in text
    assert "PARAMETER num_ctx 4096" in text and "num_ctx 8192" not in text
    assert re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1) == modelfile.TEMPLATE
    commands = modelfile.run_commands(tmp_path / "tiny-q8_0.gguf", "my-r1")
    assert commands.ollama_create == f"ollama create my-r1 -f {tmp_path / 'Modelfile'}"
    assert "-m" in commands.llama_cli and "tiny-q8_0.gguf" in commands.llama_cli


def test_modelfile_rejects_paths_and_bad_system_prompt(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        modelfile.render_modelfile("../x.gguf")
    with pytest.raises(UserError):
        modelfile.render_modelfile("x.gguf", system='say """ hi')


CONVERSATIONS = {
    "history_with_reasoning": verify.chat_messages(),
    "single_turn": [{"role": "user", "content": "Hi there"}],
    "two_system_messages": [
        {"role": "system", "content": "first"}, {"role": "user", "content": "a"},
        {"role": "system", "content": "second wins"}, {"role": "user", "content": "b"},
    ],
    "answers_without_reasoning": [
        {"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"},
        {"role": "user", "content": "中文呢？"}, {"role": "assistant", "content": "<think>\nx\n</think>\n\n二"},
        {"role": "user", "content": "ok\n"},
    ],
}


# The Ollama tests below run the Modelfile TEMPLATE through `render_go_template` and `infer_thinking_tags` at the
# end of this file: a hand-written interpreter of the Go text/template subset the TEMPLATE uses, and a
# re-implementation of Ollama's tag inference read from its source. Neither Go nor Ollama runs here, so these
# tests prove the TEMPLATE's logic (given that interpreter), not what a real Ollama does with it.

@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_ollama_template_renders_like_the_hf_template(name: str, tiny_path: Path) -> None:
    """Rendered by the hand-written Go-template interpreter below (not by Go or Ollama)."""
    from transformers import AutoTokenizer

    messages = CONVERSATIONS[name]
    tok = AutoTokenizer.from_pretrained(tiny_path)
    expected = tok.apply_chat_template(messages, chat_template=verify.original_chat_template(), tokenize=False,
                                       add_generation_prompt=True)
    # Ollama adds BOS when tokenizing (the GGUF's add_bos_token), so its template leaves it out.
    assert expected.startswith(r1.BOS)
    assert render_go_template(modelfile.TEMPLATE, {"Messages": _as_ollama(messages)}) == expected[len(r1.BOS):]


def test_ollama_template_continues_a_final_assistant_message() -> None:
    messages = [{"Role": "user", "Content": "q"}, {"Role": "assistant", "Content": "partial", "Thinking": "t"}]
    rendered = render_go_template(modelfile.TEMPLATE, {"Messages": messages})
    assert rendered == "<｜User｜>q<｜Assistant｜><think>\nt\n</think>\n\npartial"


def test_ollama_can_infer_the_thinking_tags() -> None:
    # Ollama turns on its reasoning support only when it finds the tags around `.Thinking` in the template; this
    # checks the TEMPLATE against our re-implementation of that heuristic (Ollama itself does not run here).
    assert infer_thinking_tags(modelfile.TEMPLATE) == ("<think>", "</think>")


def _as_ollama(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Messages as Ollama hands them to a template after its reasoning parser split a reply.

    The parser eats whitespace after `<think>` and after `</think>`; the template restores the `\\n\\n` that R1
    writes after `</think>`, so conversations here use R1's own layout (`</think>\\n\\n` then the answer).
    """
    out = []
    for m in messages:
        content, thinking = m["content"], ""
        if m["role"] == "assistant" and "</think>" in content:
            thinking, content = content.rsplit("</think>", 1)
            thinking, content = thinking.removeprefix("<think>").lstrip(), content.lstrip()
        out.append({"Role": m["role"], "Content": content, "Thinking": thinking})
    return out


# --- A renderer for the subset of Go's text/template that the Modelfile TEMPLATE uses ---------------------------
# Written for these tests from Go's text/template documentation; it is the oracle of the Ollama tests above, so a
# construct it gets wrong would go unnoticed there. It is not Go's implementation and has not been run against it.
# Text and {{ }} actions with `-` trimming; if / else if / else / range [$i, $v :=] / end; $x := and $x = ;
# fields (.Role, $.Messages), string literals, integers, parentheses and eq ne and or not len slice.

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|[^\s()]+)')


def render_go_template(template: str, data: dict[str, Any]) -> str:
    out: list[str] = []
    _exec(_parse_template(template), data, [{"$": data}], out)
    return "".join(out)


def infer_thinking_tags(template: str) -> tuple[str, str]:
    """Ollama's heuristic (thinking.InferTags): for each `.Thinking` inside a `range` over `.Messages`, the
    enclosing block's first and last nodes, when they are text, give the opening and closing tags."""
    tags = ["", ""]

    def hit(block: list[Any]) -> None:
        nodes = [n for n in block if n != ("text", "")]  # Go emits no empty text nodes
        if nodes[0][0] == "text":
            tags[0] = nodes[0][1].strip()
        if nodes[-1][0] == "text":
            tags[1] = nodes[-1][1].strip()

    def visit(block: list[Any], in_messages: bool) -> None:
        for kind, value in block:
            if kind == "action" and in_messages and ".Thinking" in value:
                hit(block)
            elif kind in ("if", "range"):
                for expr, body in value:
                    if in_messages and ".Thinking" in expr:
                        hit(block)
                    visit(body, ".Messages" in expr if kind == "range" else in_messages)

    visit(_parse_template(template), False)
    return tags[0], tags[1]


def _parse_template(template: str) -> list[Any]:
    nodes, text_start = [], 0
    for match in _ACTION.finditer(template):
        text = template[text_start:match.start()]
        nodes.append(("text", text.rstrip() if match.group(1) else text))
        nodes.append(("action", match.group(2).strip()))
        text_start = match.end()
        if match.group(3):
            rest = template[text_start:]
            text_start += len(rest) - len(rest.lstrip())
    nodes.append(("text", template[text_start:]))
    tree, pos = _parse(nodes, 0)
    assert pos == len(nodes), "unbalanced {{ end }}"
    return tree


def _parse(nodes: list[tuple[str, str]], pos: int) -> tuple[list[Any], int]:
    """Parse until an unmatched else/end; return the block and the position of that terminator."""
    block: list[Any] = []
    while pos < len(nodes):
        kind, value = nodes[pos]
        if kind == "text":
            block.append(("text", value))
        elif value == "end" or value.startswith("else"):
            return block, pos
        elif value.startswith(("if ", "range ")):
            keyword, _, expr = value.partition(" ")
            branches, pos = [], pos + 1
            while True:
                body, pos = _parse(nodes, pos)
                branches.append((expr, body))
                terminator = nodes[pos][1]
                pos += 1
                if terminator == "end":
                    break
                expr = terminator.removeprefix("else").removeprefix(" if").strip() or "true"
            block.append((keyword, branches))
            continue
        else:
            block.append(("action", value))
        pos += 1
    return block, pos


def _exec(block: list[Any], dot: Any, scopes: list[dict[str, Any]], out: list[str]) -> None:
    for kind, value in block:
        if kind == "text":
            out.append(value)
        elif kind == "action":
            if m := re.fullmatch(r"(\$\w+)\s*(:?=)\s*(.*)", value, re.S):
                name, op, expr = m.groups()
                target = scopes[-1] if op == ":=" else next(s for s in reversed(scopes) if name in s)
                target[name] = _eval(expr, dot, scopes)
            else:
                out.append(str(_eval(value, dot, scopes)))
        elif kind == "if":
            for expr, body in value:
                if _truthy(_eval(expr, dot, scopes)):
                    _exec(body, dot, [*scopes, {}], out)
                    break
        elif kind == "range":
            (expr, body), = value
            names, _, expr = expr.rpartition(":=")
            variables = [n.strip() for n in names.split(",") if n.strip()]
            for i, item in enumerate(_eval(expr, dot, scopes)):
                values = {0: [], 1: [item], 2: [i, item]}[len(variables)]
                scope = dict(zip(variables, values, strict=True))
                _exec(body, item, [*scopes, scope], out)


def _eval(expr: str, dot: Any, scopes: list[dict[str, Any]]) -> Any:
    tokens = _TOKEN.findall(expr)
    value, rest = _eval_tokens(tokens, dot, scopes)
    assert not rest, f"trailing tokens in {expr!r}"
    return value


FUNCS = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "not": lambda a: not _truthy(a), "len": len,
    "slice": lambda x, i: x[i:], "and": lambda *a: next((x for x in a if not _truthy(x)), a[-1]),
    "or": lambda *a: next((x for x in a if _truthy(x)), a[-1]),
}


def _eval_tokens(tokens: list[str], dot: Any, scopes: list[dict[str, Any]]) -> tuple[Any, list[str]]:
    """Evaluate one command (a function with its arguments, or a single operand) up to a `)` or the end."""
    if tokens and tokens[0] in FUNCS:
        args, rest = [], tokens[1:]
        while rest and rest[0] != ")":
            arg, rest = _operand(rest, dot, scopes)
            args.append(arg)
        return FUNCS[tokens[0]](*args), rest
    return _operand(tokens, dot, scopes)


def _operand(tokens: list[str], dot: Any, scopes: list[dict[str, Any]]) -> tuple[Any, list[str]]:
    token, rest = tokens[0], tokens[1:]
    if token == "(":
        value, rest = _eval_tokens(rest, dot, scopes)
        assert rest[0] == ")"
        return value, rest[1:]
    if token.startswith('"'):
        return json.loads(token), rest  # Go's string escapes are JSON's for what templates use
    if token.isdigit():
        return int(token), rest
    if token == "true":
        return True, rest
    base, *fields = token.split(".") if not token.startswith(".") else [".", *token[1:].split(".")]
    value = dot if base == "." else next(s[base] for s in reversed(scopes) if base in s)
    for name in filter(None, fields):
        value = value.get(name, "")  # Ollama's message fields default to their zero value
    return value, rest


def _truthy(value: Any) -> bool:
    return bool(value)


def test_the_export_passes_only_when_every_check_passes_and_names_each_files_verdict(tmp_path: Path) -> None:
    from export.cli import check_mark
    from export.merge import Merged
    from export.pipeline import ExportResult, verdicts

    steps = [gguf.Step(tmp_path / f"run-{q}.gguf", 0.0) for q in ("f16", "q8_0", "q4_k_m")]
    ppl = {q: verify.CheckResult("perplexity", True, "within", {"file": f"run-{q}.gguf"})
           for q in ("f16", "q8_0", "q4_k_m")}
    shared = [verify.CheckResult(n, True, "ok", {}) for n in ("merge", "tokenization", "chat_template", "greedy")]
    result = ExportResult(Merged(tmp_path, 0.0, False, 0), steps, [*shared, *ppl.values()])
    assert result.passed and verdicts(result) == [("run-f16.gguf", True), ("run-q8_0.gguf", True),
                                                   ("run-q4_k_m.gguf", True)]
    # A q4_k_m file whose perplexity is over its limit: that file is not good, and neither is the export.
    result.checks[-1] = verify.CheckResult("perplexity", False, "OVER", {"file": "run-q4_k_m.gguf"})
    assert not result.passed and verdicts(result)[2] == ("run-q4_k_m.gguf", False)
    assert verdicts(result)[:2] == [("run-f16.gguf", True), ("run-q8_0.gguf", True)]
    assert check_mark(result.checks[-1]) == "FAIL"
    # A check every file depends on (the tokenizer) fails them all.
    result.checks[1] = verify.CheckResult("tokenization", False, "differs", {})
    assert [good for _, good in verdicts(result)] == [False, False, False]


def test_perplexity_limits_exist_for_every_type_and_a_file_over_its_limit_fails() -> None:
    assert set(verify.PERPLEXITY_TOLERANCE) == set(gguf.QUANT_TYPES)
    path = Path("run-q4_k_m.gguf")
    limit = verify.PERPLEXITY_TOLERANCE["q4_k_m"]
    assert verify.check_perplexity(path, "q4_k_m", 10.0 * (1 + limit) - 1e-6, 10.0, "f16", "x").passed
    assert not verify.check_perplexity(path, "q4_k_m", 10.0 * (1 + limit) + 1e-6, 10.0, "f16", "x").passed
    assert not verify.check_perplexity(path, "q4_k_m", float("nan"), 10.0, "f16", "x").passed


def test_perplexity_is_exp_of_the_mean_nll_over_scored_positions() -> None:
    import math

    import numpy as np

    # Two positions predict a scored label (-100 marks the prompt): p = 0.5 and p = 0.25 by construction.
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5], [0.25, 0.25, 0.5], [1 / 3, 1 / 3, 1 / 3]]))
    labels = (-100, -100, 2, 0)  # position 1 predicts label 2 (p 0.5), position 2 predicts label 0 (p 0.25)
    assert verify._perplexity([(logits, labels)]) == pytest.approx(math.exp(-(math.log(0.5) + math.log(0.25)) / 2))


def test_held_out_texts_score_the_replies_of_the_runs_eval_rows(tiny_path: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    rows = [{"where": "x:1", "messages": [{"role": "user", "content": "新闻分类:球队夺冠"},
                                          {"role": "assistant", "content": "体育", "reasoning": "标题提到球队。"}]},
            {"where": "x:2", "messages": [{"role": "user", "content": "Question about zebras?"},
                                          {"role": "assistant", "content": "hello", "reasoning": None}]}]
    (tmp_path / "eval_data.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                              encoding="utf-8")
    held_out = verify.held_out_texts(tmp_path, tiny_path)
    assert held_out.source.startswith("2 held-out rows of eval_data.jsonl")
    tok = AutoTokenizer.from_pretrained(str(tiny_path))
    for (ids, labels), row in zip(held_out.sequences, rows, strict=True):
        scored = tok.decode([t for t, label in zip(ids, labels) if label != -100])
        reply = row["messages"][1]
        assert scored.endswith(reply["content"] + tok.eos_token)  # the reply and its end are scored ...
        assert row["messages"][0]["content"] not in scored  # ... the prompt is not
    # A run that kept no eval rows falls back to the built-in texts, every token scored.
    (tmp_path / "eval_data.jsonl").unlink()
    fallback = verify.held_out_texts(tmp_path, tiny_path)
    assert "built-in texts" in fallback.source and all(ids == labels for ids, labels in fallback.sequences)
