"""Reading rows from every supported source, and the errors for broken files."""
from __future__ import annotations

import json

import pytest

from trainer.errors import UserError
from trainer.data.sources import read_rows

ROWS = [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}]


def test_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n", encoding="utf-8")
    rows = read_rows(str(path))
    assert [r.data for r in rows] == ROWS
    assert [r.where for r in rows] == [f"{path}:1", f"{path}:2"]


def test_json_list_and_data_key(tmp_path):
    plain, wrapped = tmp_path / "a.json", tmp_path / "b.json"
    plain.write_text(json.dumps(ROWS), encoding="utf-8")
    wrapped.write_text(json.dumps({"data": ROWS}), encoding="utf-8")
    assert [r.data for r in read_rows(str(plain))] == ROWS
    assert [r.data for r in read_rows(str(wrapped))] == ROWS
    assert read_rows(str(plain))[1].where == f"{plain}: item 1"


def test_csv_with_bom(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("\ufeffquestion,answer\nq1,a1\n\"q2, quoted\",a2\n".encode("utf-8"))
    rows = read_rows(str(path))
    assert [r.data for r in rows] == [{"question": "q1", "answer": "a1"},
                                      {"question": "q2, quoted", "answer": "a2"}]
    assert rows[1].where == f"{path}:3"


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    rows = read_rows(str(path))
    assert [r.data for r in rows] == ROWS and rows[0].where == f"{path}: row 0"


@pytest.mark.parametrize("content, message, line", [
    (b'{"a": 1}\n{"a": 2\n', "malformed JSON", 2),
    (b'{"a": 1}\n[1, 2]\n', "expected a JSON object, got list", 2),
    (b'{"a": "ok"}\n{"a": "caf\xe9"}\n', "not UTF-8 text (byte 0xe9)", 2),
])
def test_jsonl_errors_name_the_line(tmp_path, content, message, line):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError) as caught:
        read_rows(str(path))
    assert caught.value.where == f"{path}:{line}" and message in caught.value.message


def test_empty_missing_and_unsupported(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(UserError, match="no rows"):
        read_rows(str(empty))
    with pytest.raises(UserError, match="file not found") as caught:
        read_rows(str(tmp_path / "nope.jsonl"))
    assert caught.value.where == f"data.path={tmp_path / 'nope.jsonl'}"
    text = tmp_path / "d.txt"
    text.write_text("hello", encoding="utf-8")
    with pytest.raises(UserError, match="unsupported file type '.txt'"):
        read_rows(str(text))


def test_hub_dataset_without_network_says_how_to_use_a_local_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError) as caught:
        read_rows("FreedomIntelligence/medical-o1-reasoning-SFT", name="en")
    # Refused before the datasets library starts its retries (trainer.hub).
    assert "dataset 'FreedomIntelligence/medical-o1-reasoning-SFT' is not in the local Hugging Face cache" in \
        caught.value.message
    assert "data.path=/path/to/file.jsonl" in caught.value.fix


def test_jsonl_line_separator_inside_a_string_is_not_a_line_break(tmp_path):
    rows = [{"question": "one\u2028two\u2029three\x85four", "answer": "a"}, {"question": "q2", "answer": "a2"}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), encoding="utf-8")
    assert "\u2028" in path.read_text(encoding="utf-8")  # written raw, as ensure_ascii=False does
    read = read_rows(str(path))
    assert [r.data for r in read] == rows and read[1].where == f"{path}:2"


def test_json_file_holding_json_lines_is_read(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    read = read_rows(str(path))
    assert [r.data for r in read] == ROWS and read[1].where == f"{path}:2"


def test_every_bad_line_is_reported_at_once(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": \n[1]\n{"a": 2}\n', encoding="utf-8")
    with pytest.raises(UserError) as caught:
        read_rows(str(path))
    lines = caught.value.render().splitlines()
    assert lines[0] == "2 problems:"
    assert lines[1].startswith(f"  {path}:2: malformed JSON")
    assert lines[2] == f"  {path}:3: expected a JSON object, got list"
