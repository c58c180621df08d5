"""llama.cpp's tools, built once from the pinned llama-cpp-python source distribution.

The build goes into `cache_dir() / "llama.cpp-build-<version>"` through `trainer.cache.building`, so a crash or a
failed compile leaves nothing under the final name and the next call starts over; a finished build is reused.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from trainer.cache import building, cache_dir
from trainer.errors import UserError
from trainer.vendor import LLAMA_CPP_PYTHON_VERSION, llama_cpp_source

TARGETS = ("llama-quantize", "llama-cli", "llama-completion")
"""Binaries the export needs: quantization, the chat CLI users are told to run, and plain completion for scripts."""

CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    # Portable binaries: the cache may be shared between machines with different CPUs.
    "-DGGML_NATIVE=OFF",
    # llama and ggml linked into each binary, so they keep working after `building()` renames the build folder
    # (shared libraries would be found through an RPATH into the temporary name).
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    # llama-cli is built on the server code, so the server option must be on for the target to exist.
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_APP=OFF",
    # No network at build time: the server's web UI would otherwise be downloaded from a Hugging Face bucket.
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    # HTTPS model download is not used here and would need OpenSSL headers.
    "-DLLAMA_OPENSSL=OFF",
)

LOG_NAME = "build.log"


@dataclass(frozen=True)
class LlamaCppTools:
    """Paths to what the export runs: the HF-to-GGUF converter, its gguf-py, and the built binaries."""

    convert_script: Path
    gguf_py: Path
    quantize: Path
    cli: Path
    completion: Path


def build_dir() -> Path:
    """Where the finished build of the pinned llama.cpp lives (it may not exist yet)."""
    return cache_dir() / f"llama.cpp-build-{LLAMA_CPP_PYTHON_VERSION}"


def converter() -> tuple[Path, Path]:
    """Return (`convert_hf_to_gguf.py`, its `gguf-py` folder): pure Python, usable without building anything."""
    src = llama_cpp_source()
    return src / "convert_hf_to_gguf.py", src / "gguf-py"


def tools() -> LlamaCppTools:
    """Return llama.cpp's converter and binaries, building the binaries on first use (several minutes)."""
    src = llama_cpp_source()
    target = build_dir()
    if not _binaries_present(target):
        if target.exists():
            # Built by code that made fewer tools: it is only a cache, so build it again with all of them.
            shutil.rmtree(target)
        _build(src, target)
    script, gguf_py = converter()
    return LlamaCppTools(
        convert_script=script,
        gguf_py=gguf_py,
        quantize=_binary(target, "llama-quantize"),
        cli=_binary(target, "llama-cli"),
        completion=_binary(target, "llama-completion"),
    )


def _failed_log() -> Path:
    """Where the log of a failed build is kept (the build folder itself is deleted)."""
    return build_dir().with_name(build_dir().name + ".failed.log")


def _binary(build: Path, name: str) -> Path:
    return build / "bin" / (name + (".exe" if os.name == "nt" else ""))


def _binaries_present(build: Path) -> bool:
    return all(_binary(build, name).is_file() for name in TARGETS)


def _build(src: Path, target: Path) -> None:
    _require_toolchain()
    jobs = os.cpu_count() or 1
    started = time.monotonic()
    print(f"Building llama.cpp tools ({', '.join(TARGETS)}) with {jobs} jobs; this takes a few minutes, once.",
          file=sys.stderr, flush=True)
    failed_log = _failed_log()
    with building(target) as tmp:
        log_path = tmp / LOG_NAME
        try:
            _run_logged(["cmake", "-S", str(src), "-B", str(tmp), *CMAKE_OPTIONS], log_path, "configure")
            _run_logged(["cmake", "--build", str(tmp), "--config", "Release", "--parallel", str(jobs),
                         "--target", *TARGETS], log_path, "build")
            _flatten_binaries(tmp)
            _prune(tmp)
        except UserError:
            # `building()` deletes the temp folder on the way out, so keep the log where the message points.
            if log_path.exists():
                shutil.copyfile(log_path, failed_log)
            raise
    failed_log.unlink(missing_ok=True)
    print(f"\rBuilt llama.cpp tools in {time.monotonic() - started:.0f} s into {target}".ljust(79),
          file=sys.stderr, flush=True)


def _require_toolchain() -> None:
    # Only cmake is checked here: it finds the C++ compiler itself and says clearly in the log when there is none.
    if shutil.which("cmake") is None:
        raise UserError("building llama.cpp needs cmake, which is not on PATH",
                        fix="install cmake (e.g. `pip install cmake`) and a C++ compiler (build-essential / Xcode)")


_PERCENT = re.compile(r"^\[\s*(\d+)%\]")


def _run_logged(cmd: list[str], log_path: Path, stage: str) -> None:
    """Run `cmd`, appending its output to `log_path` and showing one updating progress line on stderr."""
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace")
        assert proc.stdout is not None
        shown = -1
        for line in proc.stdout:
            log.write(line)
            shown = _show_progress(stage, line, shown)
        code = proc.wait()
    print(file=sys.stderr, flush=True)
    if code != 0:
        raise UserError(f"llama.cpp {stage} step failed (exit code {code})", where=str(_failed_log()),
                        fix="read the end of that log; a missing compiler or too little memory are the usual causes")


def _show_progress(stage: str, line: str, shown: int) -> int:
    """Update the progress line; return the highest percentage shown so far.

    Make prints each target's own percentage, so the numbers can step back; showing the maximum reads better.
    """
    match = _PERCENT.match(line)
    if match and int(match.group(1)) > shown:
        shown = int(match.group(1))
        print(f"\r  llama.cpp {stage}: {shown}%".ljust(40), end="", file=sys.stderr, flush=True)
    elif stage == "configure" and shown < 0:
        shown = 0
        print(f"\r  llama.cpp {stage}: configuring".ljust(40), end="", file=sys.stderr, flush=True)
    return shown


def _flatten_binaries(build: Path) -> None:
    """Make sure the binaries sit in `bin/` (multi-config generators put them in `bin/Release/`)."""
    for name in TARGETS:
        wanted = _binary(build, name)
        if wanted.is_file():
            continue
        found = next((p for p in build.rglob(wanted.name) if p.is_file() and os.access(p, os.X_OK)), None)
        if found is None:
            raise UserError(f"the llama.cpp build finished but produced no {name}",
                            where=str(_failed_log()))
        wanted.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(found, wanted)


def _prune(build: Path) -> None:
    """Keep only `bin/` and the log: the binaries are static, and the object files are ~100 MB of cache."""
    for item in build.iterdir():
        if item.name in ("bin", LOG_NAME):
            continue
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink()
