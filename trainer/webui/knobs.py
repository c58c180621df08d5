"""The Train tab's form: recipe keys, their one-line docs from the schema, and the overrides they make.

A knob's value is text read exactly like a `key=value` on the command line, so the page's checks and messages
are the CLI's (`trainer.recipe.load_recipe`); only values that differ from the recipe become overrides.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import shlex
import typing
from dataclasses import dataclass

from trainer import config as schema
from trainer.recipe import parse_override


@dataclass(frozen=True)
class Knob:
    key: str
    """Dotted recipe key, e.g. `train.learning_rate` (`profile` is the card)."""
    doc: str
    choices: tuple[str, ...] = ()
    """The allowed values of a `Literal` field; empty for free text."""


MAIN_KEYS = ("profile", "model.base", "model.quantization", "train.method", "lora.rank", "lora.alpha",
             "lora.target_modules", "lora.loraplus_lr_ratio", "train.learning_rate", "train.epochs",
             "train.max_steps", "train.batch_size", "train.gradient_accumulation", "model.max_seq_length")
"""The knobs the page shows (issue 17); every other key is reachable through the extra overrides box."""
DATA_KEYS = ("data.path", "data.format")


@functools.cache
def field_docs(cls) -> dict[str, str]:
    """The docstring under each field of a schema dataclass (and its bases)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(inspect.getsource(klass)).body[0].body
        for node, after in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) \
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def knob(key: str) -> Knob:
    cls, name = _owner(key)
    hint = typing.get_type_hints(cls)[name]
    choices = tuple(str(a) for a in typing.get_args(hint)) if typing.get_origin(hint) is typing.Literal else ()
    return Knob(key, field_docs(cls).get(name, ""), choices)


def value_text(recipe, key: str) -> str:
    """A recipe's value as the text a user would type after `key=`."""
    value = recipe
    for part in key.split("."):
        value = getattr(value, part)
    if value is None:
        return "none"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def overrides(recipe, values: dict[str, str]) -> list[str]:
    """`key=value` for each knob whose text differs from the recipe's value (compared as parsed YAML)."""
    out = []
    for key, text in values.items():
        text = "" if text is None else str(text).strip()
        if not text:
            continue
        if recipe is not None and _same(parse_override(f"k={text}")[1],
                                        parse_override(f"k={value_text(recipe, key)}")[1]):
            continue
        out.append(f"{key}={text}")
    return out


def _same(typed, current) -> bool:
    """Equal as values: `5e-3` (text to YAML 1.1) and 0.005 are the same learning rate."""
    if typed == current:
        return True
    try:
        return not isinstance(typed, bool) and not isinstance(current, bool) and float(typed) == float(current)
    except (TypeError, ValueError):
        return False


def extra_overrides(text: str) -> list[str]:
    """The free-form box: `key=value` items separated by spaces or new lines, quoted like a shell's words."""
    return shlex.split(text or "")


def make_command(recipe_name: str, args: list[str]) -> str:
    """The `make train` line that starts the same training from a terminal."""
    profile = next((a.split("=", 1)[1] for a in args if a.startswith("profile=")), None)
    rest = [a for a in args if not a.startswith("profile=")]
    parts = ["make train", f"RECIPE={shlex.quote(recipe_name)}"]
    if profile:
        parts.append(f"GPU={shlex.quote(profile)}")
    if rest:
        parts.append("ARGS=" + shlex.quote(" ".join(shlex.quote(a) for a in rest)))
    return " ".join(parts)


def _owner(key: str):
    """The dataclass that declares the last part of `key`, and that part."""
    parts = key.split(".")
    cls = schema.Recipe
    for part in parts[:-1]:
        cls = typing.get_type_hints(cls)[part]
    return cls, parts[-1]
