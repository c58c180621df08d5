"""llama.cpp's sources from the pinned sdist: downloaded once with one line saying why, kept, unpacked atomically.

pip is replaced by a stand-in that writes a small archive with the sdist's layout, so nothing is downloaded.
"""
from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from export import llamacpp_source as vendor
from trainer.errors import UserError

TOP = f"llama_cpp_python-{vendor.LLAMA_CPP_PYTHON_VERSION}"


def fake_sdist(path: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in {f"{TOP}/vendor/llama.cpp/convert_hf_to_gguf.py": "print()\n",
                           f"{TOP}/llama_cpp/__init__.py": "__version__ = '0'\n"}.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def pip_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    monkeypatch.setenv("R1TUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LLAMA_CPP_SDIST", raising=False)
    calls: list[list[str]] = []

    def run(cmd, **kw):
        calls.append(cmd)
        fake_sdist(Path(cmd[cmd.index("--dest") + 1]) / f"{TOP}.tar.gz")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(vendor.subprocess, "run", run)
    return calls


def test_download_says_once_in_one_line_why_and_keeps_the_archive(pip_download, capsys) -> None:
    source = vendor.llama_cpp_source()
    assert (source / "convert_hf_to_gguf.py").is_file() and not (source / "llama_cpp").exists()
    archive = vendor.sdist_archive()
    vendor.llama_cpp_source()
    assert len(pip_download) == 1 and archive.name == f"{TOP}.tar.gz"
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "76 MB" in said[0] and "tokenizer" in said[0] and "once" in said[0]
    assert [p.name for p in archive.parent.iterdir() if p.name.startswith(".")] == []  # no half download left


def test_a_given_archive_is_used_and_a_missing_one_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         pip_download) -> None:
    given = tmp_path / "mine.tar.gz"
    fake_sdist(given)
    monkeypatch.setenv("LLAMA_CPP_SDIST", str(given))
    assert vendor.sdist_archive() == given and pip_download == []
    monkeypatch.setenv("LLAMA_CPP_SDIST", str(tmp_path / "absent.tar.gz"))
    with pytest.raises(UserError, match="LLAMA_CPP_SDIST"):
        vendor.sdist_archive()
