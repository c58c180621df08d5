"""llama.cpp's own sources, taken from the llama-cpp-python source distribution on PyPI.

That one archive holds llama.cpp (its converter, gguf-py, the quantize and CLI tools) and real tokenizer
vocabularies with test vectors, so the tiny model and the GGUF export need nothing but a package registry.
The archive itself is kept in the cache too: `make setup-export` installs the llama-cpp-python binding from it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from trainer.cache import building, cache_dir
from trainer.errors import UserError

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
"""The pinned llama-cpp-python release; its vendored llama.cpp is the one the project converts and runs with."""

SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"


def llama_cpp_source() -> Path:
    """Return the `llama.cpp` source folder, downloading and unpacking the pinned sdist on first use.

    Set `LLAMA_CPP_SDIST` to a downloaded `llama_cpp_python-<version>.tar.gz` to skip the download.
    """
    target = _source_root() / "llama.cpp"
    if target.is_dir():
        return target
    archive = sdist_archive()
    with building(target) as out:
        _extract_vendor(archive, out)
    return target


def sdist_archive() -> Path:
    """Return the pinned sdist: `LLAMA_CPP_SDIST` if set, else the cached copy, downloaded on first use."""
    given = os.environ.get("LLAMA_CPP_SDIST")
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise UserError("file not found", where=f"LLAMA_CPP_SDIST={given}",
                            fix=f"point it at {SDIST_NAME} or unset it")
        return path
    kept = _source_root() / SDIST_NAME
    if not kept.is_file():
        kept.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=kept.parent, prefix=".download.") as tmp:
            os.replace(_download(Path(tmp)), kept)  # atomic: a half download never has the final name
    return kept


def _source_root() -> Path:
    return cache_dir() / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}"


def _download(download_dir: Path) -> Path:
    # One line, once per cache, that says why a training command fetches 76 MB (issue 15.10).
    print(f"Downloading the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} source from PyPI (76 MB, once): the tiny "
          "model takes its tokenizer from it, `make gguf` and `make serve` build llama.cpp from it.",
          file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "--dest", str(download_dir)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(download_dir.glob("llama_cpp_python-*.tar.gz"))
    if result.returncode != 0 or not found:
        raise UserError(
            f"could not download llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} from PyPI: "
            f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no archive'}",
            where="pip download",
            fix="check the connection to PyPI, or set LLAMA_CPP_SDIST to a downloaded copy of the archive")
    return found[0]


def _extract_vendor(archive: Path, out: Path) -> None:
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
    with tarfile.open(archive, "r:gz") as tar:
        members = []
        for member in tar.getmembers():
            if not member.name.startswith(prefix) or not (member.isfile() or member.isdir()):
                continue
            member.name = member.name[len(prefix):]
            if member.name:
                members.append(member)
        tar.extractall(out, members=members, filter="data")
