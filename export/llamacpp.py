"""llama.cpp, compiled once from the pinned llama-cpp-python source distribution: tools and shared library.

One cmake build makes the tools the export and the server run (llama-quantize, llama-cli, llama-completion,
llama-perplexity, llama-server) and `libllama`, the library llama-cpp-python loads (`LLAMA_CPP_LIB_PATH`, set by
`load_llama_cpp`), so llama.cpp is compiled once, not once more inside `pip install llama-cpp-python`.
It goes into `build_dir()` through `trainer.cache.building`, so a crash or a failed compile leaves nothing under the
final name and the next call starts over; a finished build is reused.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from export.progress import BuildProgress
from trainer.cache import building, cache_dir
from trainer.errors import UserError
from export.llamacpp_source import LLAMA_CPP_PYTHON_VERSION, llama_cpp_source

TARGETS = ("llama-quantize", "llama-cli", "llama-completion", "llama-perplexity", "llama-server")
"""Binaries: quantization, the chat CLI users are told to run, plain completion for scripts, perplexity for GGUF
checks, and the OpenAI-compatible server of `make serve`."""

LIBRARY = "llama"
"""The shared library target llama-cpp-python loads (its ggml libraries are built with it)."""

_RPATH = "@loader_path" if sys.platform == "darwin" else "$ORIGIN"

CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    # Portable binaries: the cache may be shared between machines with different CPUs.
    "-DGGML_NATIVE=OFF",
    # Shared libraries, so llama-cpp-python can load the same libllama the tools use. llama.cpp puts binaries and
    # libraries together in bin/, and an RPATH relative to the binary ($ORIGIN) keeps them finding each other after
    # `building()` renames the folder (the default RPATH would point into the temporary name).
    "-DBUILD_SHARED_LIBS=ON",
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
    f"-DCMAKE_INSTALL_RPATH={_RPATH}",
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
    "-DLLAMA_CURL=OFF",
)

LOG_NAME = "build.log"
OPTIONS_NAME = "cmake-options.txt"
"""The extra options (`CMAKE_ARGS`) a build was made with, so a setup asking for other ones builds again."""


@dataclass(frozen=True)
class LlamaCppTools:
    """Paths to what the export runs: the HF-to-GGUF converter, its gguf-py, and the built binaries."""

    convert_script: Path
    gguf_py: Path
    quantize: Path
    cli: Path
    completion: Path
    perplexity: Path
    server: Path
    lib_dir: Path
    """The folder holding libllama (and its ggml libraries): llama-cpp-python's `LLAMA_CPP_LIB_PATH`."""


def build_dir() -> Path:
    """Where the finished build of the pinned llama.cpp lives (it may not exist yet).

    "-shared" marks the layout with shared libraries; builds of the earlier static-only layout are left alone.
    """
    return cache_dir() / f"llama.cpp-build-{LLAMA_CPP_PYTHON_VERSION}-shared"


def converter() -> tuple[Path, Path]:
    """Return (`convert_hf_to_gguf.py`, its `gguf-py` folder): pure Python, usable without building anything."""
    src = llama_cpp_source()
    return src / "convert_hf_to_gguf.py", src / "gguf-py"


def tools(extra_options: tuple[str, ...] | None = None) -> LlamaCppTools:
    """Return llama.cpp's converter, binaries and library, building them on first use (several minutes, once).

    `extra_options` (from `CMAKE_ARGS` at setup, e.g. `-DGGML_CUDA=ON`) rebuilds a build made with other ones;
    None takes whatever build there is.
    """
    target = build_dir()
    if not _build_present(target) or (extra_options is not None and _options_of(target) != extra_options):
        if target.exists():
            # Incomplete, or made with other options: it is only a cache, so build it again.
            shutil.rmtree(target)
        _build(llama_cpp_source(), target, extra_options or ())
    script, gguf_py = converter()
    return LlamaCppTools(
        convert_script=script, gguf_py=gguf_py, quantize=_binary(target, "llama-quantize"),
        cli=_binary(target, "llama-cli"), completion=_binary(target, "llama-completion"),
        perplexity=_binary(target, "llama-perplexity"), server=_binary(target, "llama-server"),
        lib_dir=target / "bin")


def options_from_env() -> tuple[str, ...]:
    """`CMAKE_ARGS` split as a shell would, never run by one (e.g. `-DGGML_CUDA=ON` for a CUDA build)."""
    return tuple(shlex.split(os.environ.get("CMAKE_ARGS", "")))


def load_llama_cpp() -> ModuleType:
    """Import llama-cpp-python so that it runs this build's libllama, building it first if needed.

    `make setup-export` installs llama-cpp-python without a library of its own; `LLAMA_CPP_LIB_PATH` (read once,
    at import) points it here. A `LLAMA_CPP_LIB_PATH` the user set is kept.
    """
    if "llama_cpp" not in sys.modules and not os.environ.get("LLAMA_CPP_LIB_PATH"):
        os.environ["LLAMA_CPP_LIB_PATH"] = str(tools().lib_dir)
    try:
        import llama_cpp
    except ModuleNotFoundError as err:
        raise UserError("llama-cpp-python is not installed", fix="run `make setup-export`") from err
    except (OSError, RuntimeError) as err:  # its loader raises these for a missing or broken library
        raise UserError(f"llama-cpp-python could not load libllama: {err}",
                        where=f"LLAMA_CPP_LIB_PATH={os.environ.get('LLAMA_CPP_LIB_PATH')}",
                        fix="unset LLAMA_CPP_LIB_PATH, or run `make setup-export` again") from err
    return llama_cpp


def library_file(lib_dir: Path, name: str = LIBRARY) -> Path:
    """The file llama-cpp-python looks for in `lib_dir` (`libllama.so`, `libllama.dylib`, `llama.dll`)."""
    if os.name == "nt":
        return lib_dir / f"{name}.dll"
    return lib_dir / f"lib{name}{'.dylib' if sys.platform == 'darwin' else '.so'}"


def _failed_log() -> Path:
    """Where the log of a failed build is kept (the build folder itself is deleted)."""
    return build_dir().with_name(build_dir().name + ".failed.log")


def _binary(build: Path, name: str) -> Path:
    return build / "bin" / (name + (".exe" if os.name == "nt" else ""))


def _build_present(build: Path) -> bool:
    return all(_binary(build, name).is_file() for name in TARGETS) and library_file(build / "bin").exists()


def _options_of(build: Path) -> tuple[str, ...]:
    path = build / OPTIONS_NAME
    return tuple(path.read_text("utf-8").splitlines()) if path.is_file() else ()


def _build(src: Path, target: Path, extra_options: tuple[str, ...] = ()) -> None:
    _require_toolchain()
    jobs = os.cpu_count() or 1
    started = time.monotonic()
    print(f"Building llama.cpp ({', '.join(TARGETS)} and lib{LIBRARY}) with {jobs} jobs, once: about 10 minutes "
          f"on 2 cores, full log in {target.name}/{LOG_NAME}.", file=sys.stderr, flush=True)
    failed_log = _failed_log()
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []  # exact [n/N] progress, and a faster start
    with building(target) as tmp:
        log_path = tmp / LOG_NAME
        try:
            _run_logged(["cmake", "-S", str(src), "-B", str(tmp), *generator, *CMAKE_OPTIONS, *extra_options],
                        log_path, "configure")
            _run_logged(["cmake", "--build", str(tmp), "--config", "Release", "--parallel", str(jobs),
                         "--target", *TARGETS, LIBRARY], log_path, "build")
            _flatten_outputs(tmp)
            _prune(tmp)
            (tmp / OPTIONS_NAME).write_text("".join(f"{o}\n" for o in extra_options), "utf-8")
        except UserError:
            # `building()` deletes the temp folder on the way out, so keep the log where the message points.
            if log_path.exists():
                shutil.copyfile(log_path, failed_log)
            raise
    failed_log.unlink(missing_ok=True)
    print(f"Built llama.cpp in {_minutes(time.monotonic() - started)} into {target}", file=sys.stderr, flush=True)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def _require_toolchain() -> None:
    # Only cmake is checked here: it finds the C++ compiler itself and says clearly in the log when there is none.
    if shutil.which("cmake") is None:
        raise UserError("building llama.cpp needs cmake, which is not on PATH",
                        fix="install cmake (e.g. `pip install cmake`) and a C++ compiler (build-essential / Xcode)")


def _run_logged(cmd: list[str], log_path: Path, stage: str) -> None:
    """Run `cmd`, appending its output to `log_path` while a progress line (percent, elapsed time) stays on."""
    with open(log_path, "a", encoding="utf-8") as log, BuildProgress(f"llama.cpp {stage}") as progress:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace")
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            progress.feed(line)
        code = proc.wait()
    if code != 0:
        raise UserError(f"llama.cpp {stage} step failed (exit code {code})", where=str(_failed_log()),
                        fix="read the end of that log; a missing compiler or too little memory are the usual causes")


def _flatten_outputs(build: Path) -> None:
    """Make sure binaries and the library sit in `bin/` (multi-config generators put them in `bin/Release/`)."""
    wanted = [_binary(build, name) for name in TARGETS] + [library_file(build / "bin")]
    for path in wanted:
        if path.exists():
            continue
        found = next((p for p in build.rglob(path.name) if p.is_file()), None)
        if found is None:
            raise UserError(f"the llama.cpp build finished but produced no {path.name}", where=str(_failed_log()))
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(found, path)


def _prune(build: Path) -> None:
    """Keep only `bin/` (binaries and shared libraries) and the log: the object files are ~100 MB of cache."""
    for item in build.iterdir():
        if item.name in ("bin", LOG_NAME):
            continue
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink()
