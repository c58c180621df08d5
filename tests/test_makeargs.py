"""make's variables reach the commands as data: trainer/makeargs.py builds the argument list, no shell reads it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.cli import _parser
from trainer.errors import UserError
from trainer.makeargs import TARGETS, command_line, main

ROOT = Path(__file__).resolve().parent.parent


def parsed(target: str, **env):
    """What trainer.cli's own parser makes of the command line built for `target`."""
    argv = command_line(TARGETS[target], {k: str(v) for k, v in env.items()})
    args, extra = _parser().parse_known_args(argv)
    assert not extra or all(not e.startswith("-") for e in extra), extra
    return args, argv


def test_resume_with_overrides_parses():
    """The README's recovery command: the flag and the overrides in any order."""
    args, _ = parsed("train", RECIPE="medical", GPU="auto", RESUME="1", ARGS="train.max_steps=40")
    assert args.resume and args.recipe == "medical"
    assert "train.max_steps=40" in args.overrides + _parser().parse_known_args(
        command_line(TARGETS["train"], {"RECIPE": "medical", "RESUME": "1", "ARGS": "train.max_steps=40"}))[1]


def test_overrides_after_a_flag_reach_the_recipe():
    from trainer import cli

    seen = {}
    original = cli.run_command
    cli.run_command = lambda args: seen.setdefault("args", args) and 0
    try:
        cli.main(["train", "medical", "--resume", "train.max_steps=40", "--gpus", "4", "lora.rank=8"])
    finally:
        cli.run_command = original
    args = seen["args"]
    assert args.resume and args.gpus == 4
    assert args.overrides == ["train.max_steps=40", "lora.rank=8"]


def test_gpus_and_quoted_args():
    args, argv = parsed("train", RECIPE="news", GPUS="4",
                        ARGS="train.method=full data.system='Answer in one word.'")
    assert args.gpus == 4
    assert "data.system=Answer in one word." in argv  # quotes group words, as in a shell


@pytest.mark.parametrize("value", ["", "0", "no"])
def test_resume_off(value):
    assert "--resume" not in command_line(TARGETS["train"], {"RECIPE": "medical", "RESUME": value})


def test_shell_text_stays_text():
    argv = command_line(TARGETS["train"], {"RECIPE": "medical;touch x", "GPU": "`touch y`",
                                           "ARGS": "a=1;touch z $(touch w)"})
    assert argv[-6:] == ["medical;touch x", "profile=`touch y`", "a=1;touch", "z", "$(touch", "w)"]


def test_bad_switch_and_unbalanced_quote_are_one_line(capsys, monkeypatch):
    monkeypatch.setenv("RESUME", "maybe")
    assert main(["train"]) == 2
    assert capsys.readouterr().err.strip() == "error: RESUME: RESUME='maybe' is neither yes nor no (use RESUME=1 " \
                                              "or leave it out)"
    with pytest.raises(UserError, match="GPUS='two' is not a whole number"):
        command_line(TARGETS["train"], {"RECIPE": "medical", "GPUS": "two"})
    with pytest.raises(UserError, match="cannot split ARGS"):
        command_line(TARGETS["train"], {"RECIPE": "medical", "ARGS": "data.system='unclosed"})


def make(target: str, tmp_path: Path, **variables) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    env["PYTHONPATH"] = str(ROOT)
    cmd = ["make", "-s", "-C", str(ROOT), "-o", ".venv/.core", "-o", ".venv/.export", f"PY={sys.executable}",
           target, *[f"{k}={v}" for k, v in variables.items()]]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def injections(tmp_path: Path, name: str) -> dict[str, str]:
    """Three ways a shell would run `touch`, each leaving its own marker file if it ran."""
    m = tmp_path / name
    return {"semicolon": f";touch {m}-1", "backticks": f"`touch {m}-2`", "dollar": f"$$(touch {m}-3)"}


@pytest.mark.parametrize("target,variables", [
    ("train", {"RECIPE": "nope{}", "GPU": "cpu{}", "GPUS": "2{}", "ARGS": "a=1{}"}),
    ("train", {"RECIPE": "medical", "RESUME": "1{}"}),
    ("eval", {"RUN": "runs/nope{}", "N": "3{}"}),
    ("gguf", {"RUN": "runs/nope{}", "QUANT": "q8_0{}"}),
])
def test_make_variables_never_reach_a_shell(tmp_path, target, variables):
    values = {}
    for var, pattern in variables.items():
        values[var] = pattern.format(" ".join(injections(tmp_path, var).values()))
    result = make(target, tmp_path, **values)
    assert result.returncode != 0, result.stdout + result.stderr  # the command failed, and so did make
    assert "error:" in result.stderr
    assert not list(tmp_path.glob("*-[123]")), "a make variable ran as shell text"
