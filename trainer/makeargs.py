"""`python -m trainer.makeargs TARGET`: turn make's variables into a command line, as data.

The Makefile exports RECIPE, GPU, RUN, ARGS, QUANT, GPUS, N and RESUME and calls this module; their values are
never pasted into a shell line, so `;`, backticks or `$(...)` in them are plain text. ARGS is split like a shell
would split words (quotes group, nothing runs) with `shlex.split`. The flags a variable turns on go before the
positional arguments, so `RESUME=1 ARGS="train.max_steps=40"` parses.

A new make target is one entry in TARGETS and one line `name: setup` + `$(STAGE) name` in the Makefile.
"""
from __future__ import annotations

import importlib
import os
import shlex
import sys
from dataclasses import dataclass, field

from trainer.errors import UserError


@dataclass(frozen=True)
class Target:
    """How one make target becomes `python -m <module> <command...>`."""

    module: str
    command: tuple[str, ...]
    positional: tuple[str, ...] = ()
    """Arguments made from variables, e.g. "{RECIPE}" or "profile={GPU}"; an empty variable drops its argument."""
    options: dict[str, str] = field(default_factory=dict)
    """Variable -> flag taking its value (GPUS -> --gpus N); left out when the variable is empty."""
    switches: dict[str, str] = field(default_factory=dict)
    """Variable -> flag without a value, given when the variable says yes (RESUME=1 -> --resume)."""


TARGETS: dict[str, Target] = {
    "train": Target("trainer.cli", ("train",), ("{RECIPE}", "profile={GPU}"), {"GPUS": "--gpus"},
                    {"RESUME": "--resume"}),
    "plan": Target("trainer.cli", ("plan",), ("{RECIPE}",), {"GPU": "--gpu"}),
    "grpo": Target("trainer.cli", ("grpo",), ("{RECIPE}", "profile={GPU}"), {"RUN": "--run"}),
    "preview": Target("trainer.cli", ("preview",), ("{RECIPE}", "profile={GPU}")),
    "eval": Target("trainer.cli", ("eval",), ("{RUN}",), {"N": "--samples"}),
    "chat": Target("trainer.cli", ("chat",), ("{RUN}",)),
    "gguf": Target("export.cli", ("gguf",), ("{RUN}",), {"QUANT": "--quant"}),
    "chat-gguf": Target("export.cli", ("chat",), ("{RUN}",), {"QUANT": "--quant"}),
    "serve": Target("export.cli", ("serve",), ("{RUN}",), {"QUANT": "--quant", "HOST": "--host", "PORT": "--port"}),
    "webui": Target("trainer.webui.__main__", (), options={"HOST": "--host", "PORT": "--port"}),
    "bench": Target("bench.__main__", ()),
}

YES, NO = ("1", "yes", "true", "on"), ("", "0", "no", "false", "off")
WHOLE_NUMBERS = ("GPUS", "N")


def command_line(target: Target, env: dict[str, str]) -> list[str]:
    """The argument list for `target` from the variables in `env`; a UserError names the bad variable."""
    argv = list(target.command)
    for var, flag in target.switches.items():
        value = env.get(var, "").strip().lower()
        if value not in YES + NO:
            raise UserError(f"{var}={env[var]!r} is neither yes nor no", where=var, fix=f"use {var}=1 or leave it out")
        if value in YES:
            argv.append(flag)
    for var, flag in target.options.items():
        value = env.get(var, "").strip()
        if value and var in WHOLE_NUMBERS and not value.isdigit():
            raise UserError(f"{var}={value!r} is not a whole number", where=var, fix=f"e.g. {var}=2, or leave it out")
        if value:
            argv += [flag, value]
    for pattern in target.positional:
        var = pattern[pattern.index("{") + 1:pattern.index("}")]
        value = env.get(var, "")
        if value.strip():
            argv.append(pattern.replace("{" + var + "}", value.strip()))
    try:
        argv += shlex.split(env.get("ARGS", ""))
    except ValueError as exc:
        raise UserError(f"cannot split ARGS into words: {exc}", where="ARGS",
                        fix="close the quote, or quote the value, e.g. ARGS=\"data.system='Be brief.'\"") from None
    return argv


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in TARGETS:
        print(f"usage: python -m trainer.makeargs {{{','.join(TARGETS)}}}", file=sys.stderr)
        return 2
    target = TARGETS[argv[0]]
    try:
        args = command_line(target, dict(os.environ))
    except UserError as error:
        print(f"error: {error.render()}", file=sys.stderr)
        return 2
    return importlib.import_module(target.module).main(args) or 0


if __name__ == "__main__":
    sys.exit(main())
