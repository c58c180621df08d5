"""Bad input at the command line: exit code 2, one clear message, no traceback, nothing under runs/."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.cli import main

ROOT = Path(__file__).resolve().parent.parent
GOOD_ROW = {"conversations": [{"from": "human", "value": "新闻分类:股市"},
                              {"from": "gpt", "value": "<think>\n股市\n</think>\n\n经济"}]}


def data_file(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def good_lines(n: int = 5) -> bytes:
    return b"".join(json.dumps(GOOD_ROW, ensure_ascii=False).encode() + b"\n" for _ in range(n))


CASES = {
    "malformed JSON line": (lambda t: data_file(t, "d.jsonl", good_lines() + b'{"conversations": [\n'),
                            ["d.jsonl:6", "malformed JSON"]),
    "missing field": (lambda t: data_file(t, "d.jsonl", good_lines() + b'{"dialogue": []}\n'),
                      ["d.jsonl:6", "field 'conversations': missing field"]),
    "mistyped field": (lambda t: data_file(t, "d.jsonl", good_lines(2) + json.dumps(
        {"conversations": [{"from": "human", "value": 42}, {"from": "gpt", "value": "x"}]}).encode() + b"\n"),
                       ["d.jsonl:3", "field 'conversations[0].value': must be text, got int"]),
    "empty file": (lambda t: data_file(t, "d.jsonl", b""), ["d.jsonl", "no rows"]),
    "non-UTF-8 bytes": (lambda t: data_file(t, "d.jsonl", good_lines(3) + b'{"x": "\xff\xfe"}\n'),
                        ["d.jsonl:4", "not UTF-8"]),
    "missing file": (lambda t: t / "nope.jsonl", ["nope.jsonl", "file not found"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_exits_2_with_one_message(case, tmp_path, capsys):
    make, expected = CASES[case]
    path = make(tmp_path)
    code = main(["train", "news", f"data.path={path}", "data.val_size=0",
                 f"train.output_dir={tmp_path / 'runs'}"])
    assert_one_error(capsys, code, expected)
    assert not (tmp_path / "runs").exists()


def test_unknown_format_and_unknown_recipe(tmp_path, capsys):
    code = main(["train", "news", "data.format=xml", f"train.output_dir={tmp_path / 'runs'}"])
    assert_one_error(capsys, code, ["command line (data.format=xml)", "expected one of alpaca"])
    assert main(["train", "medicl"]) == 2
    assert "unknown recipe 'medicl'" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_preview_reports_bad_data_the_same_way(tmp_path, capsys):
    path = data_file(tmp_path, "d.jsonl", good_lines() + b"{oops}\n")
    assert_one_error(capsys, main(["preview", "news", f"data.path={path}", "data.val_size=0"]),
                     ["d.jsonl:6", "malformed JSON"])


def test_a_real_process_prints_no_traceback(tmp_path):
    path = data_file(tmp_path, "d.jsonl", b'{"conversations": 3}\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "trainer", "train", "news", f"data.path={path}",
                             "data.val_size=0", f"train.output_dir={tmp_path / 'runs'}"], capture_output=True,
                            text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {path}:1: field 'conversations'")
    assert not (tmp_path / "runs").exists()


def assert_one_error(capsys, code: int, expected: list[str], lines: int = 1) -> None:
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == lines, err
    for part in expected:
        assert part in err, err


IMPORT_ORDER_PROBE = """
import sys
import trainer.model
from trainer.cli import main

def probe(recipe, hardware):
    print("LOADED", sorted(m for m in ("transformers", "trl", "peft") if m in sys.modules))
    raise SystemExit(0)

trainer.model.start_engine = probe
main(["train", "news", "profile=cpu"])
"""


def test_train_starts_the_engine_before_transformers_trl_or_peft_is_imported():
    # Unsloth patches these three on import and warns when it comes after them; start_engine imports it.
    done = subprocess.run([sys.executable, "-c", IMPORT_ORDER_PROBE], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "LOADED []" in done.stdout, done.stdout


@pytest.mark.parametrize("command", ["eval", "chat"])
def test_eval_and_chat_take_eval_overrides_checked_before_any_model_loads(command, tmp_path, capsys):
    from trainer.hardware import Hardware
    from trainer.recipe import find_recipe, load_recipe, save_resolved

    run = tmp_path / "news-run"
    run.mkdir()
    save_resolved(load_recipe(find_recipe("news", Path("recipes")), [], Hardware(False)), run / "config.yaml")
    (run / "COMPLETE").write_text("done\n")
    assert main([command, str(run), "eval.max_new_tokens=0"]) == 2
    err = capsys.readouterr().err
    assert "eval.max_new_tokens=0" in err and "must be at least 1" in err and "Traceback" not in err
    assert main([command, str(run), "train.epochs=3"]) == 2
    assert "only eval.* can change" in capsys.readouterr().err
