"""Load a recipe: YAML file, then a hardware profile, then `key=value` overrides, validated in one pass.

Every problem is collected and reported at once, each naming where the value came from (file and line, or
the command line). The result is a frozen `Recipe`; `save_resolved` / `load_resolved` write and read the
fully resolved copy that every run folder keeps.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from trainer import config as schema
from trainer.config import Recipe
from trainer.errors import UserError
from trainer.hardware import Hardware, NoCudaForCard, ProfileChoice, pick_profile
from trainer.hub import looks_local
from trainer.data.sources import read_utf8

RESOLVED_NAME = "config.yaml"


class ConfigError(UserError):
    """Several problems in one recipe, reported together."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        if len(problems) == 1:  # one problem, one line
            super().__init__(problems[0])
        else:
            super().__init__(f"recipe has {len(problems)} problems:\n  " + "\n  ".join(problems))

    def render(self) -> str:
        return self.message


def find_recipe(name_or_path: str, recipes_dir: Path) -> Path:
    """A recipe name (`medical`) or a path to a YAML file; an unknown name suggests the closest ones."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        if path.is_dir():
            raise UserError("this is a folder, not a recipe file", where=str(path),
                            fix="name a .yaml file, e.g. recipes/medical.yaml, or a recipe name")
        if not path.is_file():
            raise UserError("recipe file not found", where=str(path), fix="check the path")
        return path
    candidate = recipes_dir / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in recipes_dir.glob("*.yaml"))
    close = difflib.get_close_matches(name_or_path, known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UserError(f"unknown recipe '{name_or_path}'", where=str(recipes_dir),
                    fix=f"{hint}available: {', '.join(known) or 'none'}")


def load_recipe(path: Path, overrides: Sequence[str] = (), hardware: Hardware | None = None) -> Recipe:
    """Read `path`, apply the selected profile and the overrides, validate, and return the frozen recipe."""
    raw, lines = read_yaml(path)
    origin = _Origins(str(path), lines)
    pairs = [parse_override(text) for text in overrides]
    requested = next((v for k, v in reversed(pairs) if k == "profile"), raw.get("profile", "auto"))
    profiles = raw.get("profiles") or {}
    problems: list[str] = []
    try:
        chosen = pick_profile(str(requested), list(profiles) if isinstance(profiles, dict) else [], hardware)
    except NoCudaForCard:
        raise
    except UserError as error:  # a profile from the command line (make's GPU=) is blamed there, not on the file
        where = f"command line (profile={requested}, or GPU={requested} with make)" if \
            any(k == "profile" for k, _ in pairs) else origin.where(("profile",))
        problems.append(f"{where}: profile: {error.message} ({error.fix})")
        chosen = ProfileChoice(None, "unknown")
    for name, body in profiles.items() if isinstance(profiles, dict) else []:
        if isinstance(body, dict) and name != chosen.name:  # typos in a profile not chosen are errors too
            _build(Recipe, body, ("profiles", str(name)), origin, problems, partial=True)
    merged = {k: v for k, v in raw.items() if k != "profiles"}
    merged.setdefault("name", path.stem)
    if chosen.name and isinstance(profiles.get(chosen.name), dict):
        for key, value in _flatten(profiles[chosen.name]):
            origin.alias(key, ("profiles", chosen.name, *key))
            _set(merged, key, value)
    for key, value in pairs:
        origin.mark_override(key, value)
        _set(merged, key, value)
    merged["profile"] = chosen.name or chosen.card or "none"
    _anchor_paths(merged, origin, path.parent)
    problems += _missing_files(merged, origin)
    recipe = _build(Recipe, merged, (), origin, problems)
    if recipe is not None:  # values that failed their type check were left at defaults: skip those keys
        checks = schema.check(recipe)
        if hardware is not None:
            checks += schema.hardware_problems(recipe, hardware.cuda)
        problems += [f"{origin.where(tuple(k.split('.')))}: {k}: {msg}" for k, msg in checks
                     if tuple(k.split(".")) not in origin.bad]
    if problems:
        raise ConfigError(problems)
    return recipe


AFTER_TRAINING = ("eval",)
"""Sections a finished run's recipe may still change on the command line (`make eval/chat ARGS=...`); the
others describe how the weights were made."""


def load_resolved(run_dir: Path, overrides: Sequence[str] = ()) -> Recipe:
    """The recipe a run was made with, read back from its folder, with `eval.*` overrides applied and checked
    as `load_recipe` checks them."""
    path = Path(run_dir) / RESOLVED_NAME
    if not path.is_file():
        raise UserError("no resolved recipe here: not a run folder", where=str(path),
                        fix="pass a folder made by `make train`, e.g. RUN=runs/<recipe>-<time>")
    raw, lines = read_yaml(path)
    origin = _Origins(str(path), lines)
    problems: list[str] = []
    for key, value in (parse_override(text) for text in overrides):
        origin.mark_override(key, value)
        if key.split(".")[0] not in AFTER_TRAINING:
            allowed = ", ".join(f"{section}.*" for section in AFTER_TRAINING)
            problems.append(f"{origin.where(tuple(key.split('.')))}: {key} was fixed when the run was trained; "
                            f"only {allowed} can change here (e.g. eval.max_new_tokens=2048)")
            continue
        _set(raw, key, value)
    recipe = _build(Recipe, raw, (), origin, problems)
    if recipe is not None:
        problems += [f"{origin.where(tuple(k.split('.')))}: {k}: {msg}" for k, msg in schema.check(recipe)
                     if k.split(".")[0] in AFTER_TRAINING and tuple(k.split(".")) not in origin.bad]
    if problems:
        raise ConfigError(problems)
    return recipe


def save_resolved(recipe: Recipe, path: Path) -> None:
    """Write the fully resolved recipe (profile applied, every default spelled out)."""
    body = dataclasses.asdict(recipe)
    body["profiles"] = {}
    text = "# Resolved recipe of this run: every value used, defaults included.\n"
    text += yaml.safe_dump(body, sort_keys=False, allow_unicode=True)
    Path(path).write_text(text, encoding="utf-8")


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """Parse a YAML mapping and remember the line of every key, for error messages."""
    text = read_utf8(Path(path))
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"invalid YAML: {getattr(exc, 'problem', None) or exc}", where=where) from None
    if node is None:
        return {}, {}
    if not isinstance(node, yaml.MappingNode):
        raise UserError("a recipe must be a mapping of keys to values", where=str(path))
    lines: dict[tuple[str, ...], int] = {}
    _record_lines(node, (), lines, path)
    return yaml.safe_load(text) or {}, lines


def parse_override(text: str) -> tuple[str, Any]:
    """`train.learning_rate=1e-4` -> ("train.learning_rate", 0.0001); the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"expected key=value, got '{text}'", where="command line",
                        fix="e.g. train.max_steps=100 or lora.target_modules=[q_proj,v_proj]")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


class _Origins:
    """Where each dotted key's value came from: a file line, a profile entry, or the command line."""

    def __init__(self, file: str, lines: dict[tuple[str, ...], int]):
        self.file, self.lines, self.aliases, self.overrides = file, lines, {}, {}
        self.bad: set[tuple[str, ...]] = set()

    def alias(self, key: tuple[str, ...], source: tuple[str, ...]) -> None:
        self.aliases[key] = source

    def mark_override(self, dotted: str, value: Any) -> None:
        self.overrides[tuple(dotted.split("."))] = value

    def where(self, key: tuple[str, ...]) -> str:
        for depth in range(len(key), 0, -1):
            prefix = key[:depth]
            if prefix in self.overrides:
                return f"command line ({'.'.join(prefix)}={self.overrides[prefix]})"
            source = self.aliases.get(prefix, prefix)
            line = self.lines.get(source)
            if line is not None:
                profile = f" (profile {source[1]})" if source[0] == "profiles" and len(source) > 1 else ""
                return f"{self.file}:{line}{profile}"
        return self.file


def _anchor_paths(tree: dict, origin: _Origins, recipe_dir: Path) -> None:
    """Make relative data paths absolute: from the recipe file, relative to its folder; from the command
    line, relative to the working directory. Paths that exist nowhere stay as written (hub ids)."""
    data = tree.get("data")
    if not isinstance(data, dict):
        return
    keyed = [(("data", "path"), data), (("data", "eval_path"), data)]
    mix = data.get("mix")
    if isinstance(mix, list):
        keyed += [(("data", "mix", str(i), "path"), m) for i, m in enumerate(mix) if isinstance(m, dict)]
    for key, holder in keyed:
        value = holder.get(key[-1])
        if not isinstance(value, str) or not value or Path(value).is_absolute():
            continue
        base = Path.cwd() if origin.where(key).startswith("command line") else recipe_dir
        candidate = (base / value).expanduser()
        if candidate.exists():
            holder[key[-1]] = str(candidate.resolve())


def _missing_files(tree: dict, origin: _Origins) -> list[str]:
    """Local data paths that do not exist, caught while the recipe line is still known."""
    data = tree.get("data") if isinstance(tree.get("data"), dict) else {}
    mix = data.get("mix") if isinstance(data.get("mix"), list) else []
    keyed = [(("data", "path"), data.get("path")), (("data", "eval_path"), data.get("eval_path"))]
    keyed += [(("data", "mix", str(i), "path"), m.get("path")) for i, m in enumerate(mix) if isinstance(m, dict)]
    problems = [f"{origin.where(key)}: {'.'.join(key)}: file not found: {value} (relative paths are read from "
                f"the recipe's folder, or from the working directory on the command line)"
                for key, value in keyed
                if isinstance(value, str) and value and looks_local(value) and not Path(value).expanduser().exists()]
    return problems + [f"{origin.where(key)}: {'.'.join(key)}: {value} is a folder, not a data file (name a "
                       f".jsonl, .json, .csv or .parquet file in it)"
                       for key, value in keyed
                       if isinstance(value, str) and value and Path(value).expanduser().is_dir()]


def _record_lines(node: yaml.Node, prefix: tuple[str, ...], lines: dict, path: Path | None = None) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = prefix + (str(key_node.value),)
            line = key_node.start_mark.line + 1
            if key in lines:  # YAML would silently keep the last one
                raise UserError(f"duplicate key {'.'.join(key)} (first on line {lines[key]})",
                                where=f"{path}:{line}", fix="keep one of them")
            lines[key] = line
            _record_lines(value_node, key, lines, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[prefix + (str(i),)] = item.start_mark.line + 1
            _record_lines(item, prefix + (str(i),), lines, path)


def _flatten(mapping: dict, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    for key, value in mapping.items():
        if isinstance(value, dict) and value and not (prefix == () and key == "profiles"):
            out += _flatten(value, prefix + (str(key),))
        else:
            out.append((prefix + (str(key),), value))
    return out


def _set(tree: dict, key: str | tuple[str, ...], value: Any) -> None:
    parts = key.split(".") if isinstance(key, str) else list(key)
    node: Any = tree
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            return  # the schema check reports the bad key against the original tree
        if not isinstance(node.get(part), (dict, list)):
            node[part] = {}
        node = node[part]
    if isinstance(node, list) and parts[-1].isdigit() and int(parts[-1]) < len(node):
        node[int(parts[-1])] = value
    elif isinstance(node, dict):
        node[parts[-1]] = value


def _build(cls, raw: Any, key: tuple[str, ...], origin: _Origins, problems: list[str], partial=False):
    """Turn a mapping into `cls`, appending one message per problem; returns None if it cannot."""
    if not isinstance(raw, dict):
        problems.append(f"{origin.where(key)}: {'.'.join(key) or 'recipe'}: expected a mapping of keys, "
                        f"got {_kind(raw)}")
        return None
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for name, value in raw.items():
        path = key + (str(name),)
        if name not in names:
            problems.append(f"{origin.where(path)}: unknown key {'.'.join(path)}{_suggest(path, names)}")
            continue
        converted = _convert(hints[name], value, path, origin, problems, partial)
        if converted is not _INVALID:
            values[name] = converted
    if partial:
        return None
    try:
        return cls(**values)
    except TypeError:
        return None


_INVALID = object()


def _convert(hint, value, path, origin: _Origins, problems: list[str], partial: bool):
    def bad(expected: str) -> object:
        origin.bad.add(path)
        problems.append(f"{origin.where(path)}: {'.'.join(path)}: expected {expected}, got {_kind(value)}")
        return _INVALID

    origin_type, args = typing.get_origin(hint), typing.get_args(hint)
    if origin_type in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _convert(next(a for a in args if a is not type(None)), value, path, origin, problems, partial)
    if dataclasses.is_dataclass(hint):
        built = _build(hint, value, path, origin, problems, partial)
        return _INVALID if built is None else built
    if origin_type is Literal:
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint_text = f" (did you mean {close[0]}?)" if close else ""
        return bad(f"one of {', '.join(map(str, args))}{hint_text}")
    if origin_type is list:
        if not isinstance(value, list):
            return bad("a list, e.g. [a, b]")
        items = [_convert(args[0], v, path + (str(i),), origin, problems, partial) for i, v in enumerate(value)]
        return _INVALID if any(i is _INVALID for i in items) else items
    if origin_type is dict:
        return value if isinstance(value, dict) else bad("a mapping")
    return _convert_scalar(hint, value, bad)


def _convert_scalar(hint, value, bad):
    if hint is bool:
        return value if isinstance(value, bool) else bad("true or false")
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else bad("a whole number")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return bad("a number")
        try:  # YAML 1.1 reads `2e-4` as a string; accept what any person would call a number
            number = float(value)
        except (ValueError, OverflowError):
            return bad("a number")
        return number if math.isfinite(number) else bad("a finite number")
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        return value if isinstance(value, str) else bad("text")
    return value


def _suggest(path: tuple[str, ...], siblings: list[str]) -> str:
    close = difflib.get_close_matches(path[-1], siblings, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {'.'.join(path[:-1] + (close[0],))}?)"
    elsewhere = [k for k in _all_keys(Recipe) if k.split(".")[-1] == path[-1]]
    return f" (did you mean {elsewhere[0]}?)" if elsewhere else ""


def _all_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(hint):
            keys += _all_keys(hint, f"{prefix}{f.name}.")
    return keys


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, (dict, list)):
        return type(value).__name__
    return f"{type(value).__name__} {value!r}"
