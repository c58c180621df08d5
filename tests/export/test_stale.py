"""What a killed export leaves behind is cleaned by the next one, and the converter does not outlive its parent."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from export import gguf
from export.modelfile import render_modelfile
from export.pipeline import with_earlier

ROOT = Path(__file__).resolve().parents[2]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_next_export_removes_what_a_killed_one_left(tmp_path, monkeypatch):
    run_dir, temp = tmp_path / "run", tmp_path / "tmp"
    (run_dir / "gguf").mkdir(parents=True)
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    gone, me = dead_pid(), os.getpid()
    stale = [run_dir / f".merged.{gone}-k2x9", run_dir / "gguf" / f".run-f16.gguf.{gone}-0a1b2c3d.part",
             temp / f"r1tune-stage-{gone}-ab_c1"]
    busy = [run_dir / f".merged.{me}-q7w1", run_dir / "gguf" / f".run-q8_0.gguf.{me}-deadbeef.part",
            temp / f"r1tune-stage-{me}-zz9"]
    old_style = run_dir / ".merged.abcd1234"  # made before names carried a pid: stale after an hour
    for path in stale + busy + [old_style]:
        path.mkdir() if not path.name.endswith(".part") else path.write_bytes(b"x" * 10)
    os.utime(old_style, (time.time() - 7200, time.time() - 7200))
    removed = gguf.clean_stale(run_dir, run_dir / "gguf")
    assert sorted(removed) == sorted(stale + [old_style])
    assert all(p.exists() for p in busy) and not any(p.exists() for p in stale + [old_style])


def test_the_converter_dies_with_a_killed_export(tmp_path):
    """A stand-in for the converter, run through export.gguf._run; the parent is killed with SIGKILL."""
    pid_file = tmp_path / "child.pid"
    child_code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    parent_code = ("import os, sys; from export.gguf import _run; "
                   f"_run([sys.executable, '-c', {child_code!r}], dict(os.environ), what='converting')")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 120
    while not (pid_file.is_file() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    child = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for _ in range(50):
        if not alive(child):
            break
        time.sleep(0.1)
    assert not alive(child), "the converter outlived the killed export"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.is_file() and "zombie" in status.read_text())


def test_export_json_keeps_the_files_of_an_earlier_export(tmp_path):
    q8, q4, removed = tmp_path / "r-q8_0.gguf", tmp_path / "r-q4_k_m.gguf", tmp_path / "r-q6_k.gguf"
    q8.write_bytes(b"gguf")
    q4.write_bytes(b"gguf")
    earlier = {"files": [{"path": str(q8)}, {"path": str(removed)}],
               "checks": [{"name": "perplexity", "passed": True, "numbers": {"file": q8.name}},
                          {"name": "perplexity", "passed": True, "numbers": {"file": removed.name}},
                          {"name": "greedy", "passed": True, "numbers": {}}], "passed": True}
    (tmp_path / "export.json").write_text(json.dumps(earlier))
    new = {"files": [{"path": str(q4)}], "passed": True,
           "checks": [{"name": "perplexity", "passed": True, "numbers": {"file": q4.name}}]}
    merged = with_earlier(new, tmp_path / "export.json")
    assert [f["path"] for f in merged["files"]] == [str(q4), str(q8)]  # the removed file is not listed
    assert [c["numbers"]["file"] for c in merged["checks"]] == [q4.name, q8.name]
    assert merged["passed"] is True
    earlier["checks"][0]["passed"] = False  # a kept file that failed its check leaves the folder not good
    (tmp_path / "export.json").write_text(json.dumps(earlier))
    assert with_earlier(new, tmp_path / "export.json")["passed"] is False
    assert with_earlier({**new, "passed": None}, tmp_path / "export.json")["passed"] is None  # --no-verify


def test_modelfile_names_the_other_files_and_uses_the_system_prompt():
    text = render_modelfile("r-q4_k_m.gguf", system="Answer briefly.", others=["r-f16.gguf", "r-q8_0.gguf"])
    assert "FROM ./r-q4_k_m.gguf" in text and "r-q8_0.gguf" in text.splitlines()[0]
    assert 'SYSTEM """Answer briefly."""' in text
