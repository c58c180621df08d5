"""Read raw rows from a local file (.jsonl, .json, .csv, .parquet) or a Hugging Face hub dataset.

Every row carries where it came from (`file:line`, or `hub-id[split] row N`) so that a bad field can be
reported precisely. Problems with the file itself raise `UserError`.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import UserError, UserErrors
from trainer.hub import looks_local

LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass(frozen=True)
class Row:
    where: str
    """`file:line` or `file: item N` or `hub-id[split] row N`."""
    data: dict[str, Any]


def read_rows(path: str, *, name: str | None = None, split: str = "train", key: str = "data.path") -> list[Row]:
    """All rows of a local file or hub dataset; `key` names the recipe key for error messages."""
    local = Path(path).expanduser()
    if local.is_file():
        rows = _read_local(local)
    elif local.is_dir() or looks_local(path):
        raise UserError("this is a folder, not a data file" if local.is_dir() else "file not found",
                        where=f"{key}={path}",
                        fix=f"give an existing {', '.join(LOCAL_SUFFIXES)} file or a hub dataset id")
    else:
        rows = _read_hub(path, name, split, key)
    if not rows:
        raise UserError("no rows: the data is empty", where=str(path), fix="check the file or the split")
    return rows


def _read_local(path: Path) -> list[Row]:
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise UserError(f"unsupported file type '{path.suffix}'", where=str(path),
                        fix=f"use one of {', '.join(LOCAL_SUFFIXES)}")
    return reader(path)


def read_utf8(path: Path) -> str:
    """The file's text; a byte that is not UTF-8 is reported with its line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x})", where=f"{path}:{line}",
                        fix="re-save the file as UTF-8") from None


def _read_jsonl(path: Path, text: str | None = None) -> list[Row]:
    """One JSON object per line. Lines end at `\\n` only: U+2028 and friends are valid inside JSON strings
    (`json.dumps(ensure_ascii=False)` writes them raw), so `str.splitlines` would cut rows apart."""
    rows, problems = [], []
    for number, line in enumerate((read_utf8(path) if text is None else text).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(UserError(f"malformed JSON: {exc.msg} (column {exc.colno})", where=f"{path}:{number}",
                                      fix="each line must be one JSON object"))
            continue
        if not isinstance(value, dict):
            problems.append(UserError(f"expected a JSON object, got {type(value).__name__}", where=f"{path}:{number}"))
            continue
        rows.append(Row(f"{path}:{number}", value))
    if problems:
        raise UserErrors(problems)
    return rows


def _read_json(path: Path) -> list[Row]:
    text = read_utf8(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            return _read_jsonl(path, text)  # JSON lines saved as .json: read them as such
        raise UserError(f"malformed JSON: {exc.msg} (column {exc.colno})", where=f"{path}:{exc.lineno}") from None
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise UserError("expected a JSON list of objects", where=str(path),
                        fix="use [ {...}, {...} ] or one object per line (JSON lines)")
    rows, problems = [], []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            problems.append(UserError(f"expected a JSON object, got {type(item).__name__}",
                                      where=f"{path}: item {index}"))
            continue
        rows.append(Row(f"{path}: item {index}", item))
    if problems:
        raise UserErrors(problems)
    return rows


def _read_csv(path: Path) -> list[Row]:
    reader = csv.DictReader(io.StringIO(read_utf8(path), newline=""))
    rows = []
    for record in reader:
        if None in record:
            raise UserError("more values than header columns", where=f"{path}:{reader.line_num}")
        rows.append(Row(f"{path}:{reader.line_num}", dict(record)))
    return rows


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise UserError(f"cannot read Parquet: {exc}", where=str(path)) from None
    return [Row(f"{path}: row {i}", record) for i, record in enumerate(table.to_pylist())]


def _read_hub(dataset_id: str, name: str | None, split: str, key: str) -> list[Row]:
    import datasets

    from trainer.hub import require_hub

    require_hub(dataset_id, key, "dataset")  # at once, rather than after a minute of retries
    label = f"{dataset_id}{'/' + name if name else ''}[{split}]"
    print(f"Loading {label} from the Hugging Face hub...", flush=True)
    try:
        dataset = datasets.load_dataset(dataset_id, name, split=split)
    except Exception as exc:  # offline, unknown id, unknown split: all end here with the library's reason
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load hub dataset {label}: {reason[:300]}", where=f"{key}={dataset_id}",
                        fix=f"without hub access, download it elsewhere and set {key}=/path/to/file.jsonl "
                            "(or .json/.csv/.parquet)") from None
    return [Row(f"{label} row {i}", record) for i, record in enumerate(dataset)]
