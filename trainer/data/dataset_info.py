"""Read a dataset from LLaMA-Factory's `dataset_info.json`, as that file describes it.

`data.path=.../dataset_info.json data.name=KEY` (or a `data.mix` entry with both) turns into the source the
entry describes: `file_name` (relative to the json file) or `hf_hub_url` with its `subset` and `split`,
`formatting` (alpaca or sharegpt), `columns`, `tags` and `num_samples`. What this project cannot train
(ranking pairs, images, tool calls) is refused with the entry named, never skipped silently.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from trainer.config import Columns, Source, Tags
from trainer.errors import UserError
from trainer.data.sources import read_utf8

FILE_NAME = "dataset_info.json"
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
                  "system": "system"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools"}
REFUSED_COLUMNS = {"images": "images", "videos": "videos", "audios": "audio", "chosen": "preference pairs",
                   "rejected": "preference pairs", "kto_tag": "KTO labels"}
KNOWN_KEYS = {"file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name", "formatting",
              "ranking", "subset", "split", "folder", "num_samples", "columns", "tags"}


@dataclass(frozen=True)
class Described:
    source: Source
    """The source with path, format, columns and tags taken from the entry."""
    num_samples: int | None
    """LLaMA-Factory's `num_samples`: rows to draw (fewer than the file: a sample; more: repeats)."""


def is_dataset_info(path: str) -> bool:
    return Path(path).name == FILE_NAME


def describe(source: Source, key: str = "data") -> Described:
    """The source that `source.name`'s entry of the dataset_info.json at `source.path` describes."""
    info_path = Path(source.path).expanduser()
    info = _read(info_path)
    if not source.name:
        raise UserError(f"{key}.name: which dataset of {FILE_NAME}?", where=str(info_path),
                        fix=f"set {key}.name to one of: {', '.join(sorted(info)[:12])}")
    entry = info.get(source.name)
    if not isinstance(entry, dict):
        close = difflib.get_close_matches(source.name, list(info), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"{key}.name: no dataset '{source.name}' in it{hint}", where=str(info_path),
                        fix=f"one of: {', '.join(sorted(info)[:12])}")
    where = f"{info_path}: {source.name}"
    _refuse_unsupported(entry, where)
    formatting = entry.get("formatting", "alpaca")
    columns = _mapping(entry, "columns", where)
    tags = _mapping(entry, "tags", where)
    if formatting == "alpaca":
        described = replace(source, format="alpaca", columns=_columns(columns, ALPACA_COLUMNS, where))
    elif formatting == "sharegpt":
        unknown = set(tags) - {f.name for f in Tags.__dataclass_fields__.values()}
        if unknown:
            raise UserError(f"unknown tag {sorted(unknown)[0]}", where=f"{where}.tags",
                            fix="LLaMA-Factory's tags are role_tag, content_tag, user_tag, assistant_tag, "
                                "observation_tag, function_tag, system_tag")
        described = replace(source, format="sharegpt", columns=_columns(columns, SHAREGPT_COLUMNS, where),
                            tags=Tags(**{k: str(v) for k, v in tags.items()}))
    else:
        raise UserError(f"formatting '{formatting}' is not supported", where=f"{where}.formatting",
                        fix="use alpaca or sharegpt")
    described = replace(described, **{"name": None, **_location(entry, info_path, where)})
    num_samples = entry.get("num_samples")
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
        raise UserError(f"num_samples must be a whole number from 1, got {num_samples!r}", where=where)
    return Described(described, num_samples)


def _read(path: Path) -> dict:
    try:
        info = json.loads(read_utf8(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"malformed JSON: {exc.msg} (column {exc.colno})", where=f"{path}:{exc.lineno}") from None
    if not isinstance(info, dict):
        raise UserError("expected a JSON object of dataset descriptions", where=str(path))
    return info


def _refuse_unsupported(entry: dict, where: str) -> None:
    unknown = set(entry) - KNOWN_KEYS
    if unknown:
        raise UserError(f"unknown key {sorted(unknown)[0]}", where=where,
                        fix=f"LLaMA-Factory's keys are {', '.join(sorted(KNOWN_KEYS))}")
    if entry.get("ranking"):
        raise UserError("ranking (preference) datasets are not supported: this project trains SFT",
                        where=f"{where}.ranking", fix="pick an SFT dataset, or set ranking: false")
    for column, what in REFUSED_COLUMNS.items():
        if column in (entry.get("columns") or {}):
            raise UserError(f"{what} are not supported (R1-Distill SFT on text)", where=f"{where}.columns.{column}",
                            fix="pick a text-only SFT dataset")
    if not entry.get("file_name") and not entry.get("hf_hub_url"):
        other = next((k for k in ("ms_hub_url", "om_hub_url", "script_url", "cloud_file_name") if entry.get(k)), None)
        raise UserError(f"{other} is not supported" if other else "has no file_name or hf_hub_url", where=where,
                        fix="download the data and give its file as file_name")


def _mapping(entry: dict, name: str, where: str) -> dict:
    value = entry.get(name) or {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise UserError(f"{name} must map names to texts", where=f"{where}.{name}")
    return value


def _columns(given: dict, defaults: dict, where: str) -> Columns:
    """Our column settings from LLaMA-Factory's; columns it does not read without being told stay unread."""
    unknown = set(given) - set(defaults)
    if unknown:
        raise UserError(f"column {sorted(unknown)[0]} does not apply to this formatting", where=f"{where}.columns",
                        fix=f"use {', '.join(defaults)}")
    ours = {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
            "system": "system", "messages": "conversations", "tools": "tools"}
    optional = {"history", "system", "tools"}  # LLaMA-Factory reads these only when the entry names them
    values = {ours[k]: given.get(k, "" if k in optional else default) for k, default in defaults.items()}
    return Columns(**values)


def _location(entry: dict, info_path: Path, where: str) -> dict:
    if entry.get("file_name"):
        path = info_path.parent / str(entry["file_name"])
        if path.is_dir():
            raise UserError("file_name names a folder; folders are not supported", where=f"{where}.file_name",
                            fix="name one .json, .jsonl, .csv or .parquet file")
        if not path.is_file():
            raise UserError(f"file not found: {path}", where=f"{where}.file_name",
                            fix=f"file_name is read relative to the folder of {FILE_NAME}")
        return {"path": str(path)}
    return {"path": str(entry["hf_hub_url"]), "name": entry.get("subset"), "split": entry.get("split", "train")}
