"""llama-cpp-python installed without a llama.cpp of its own: it loads the library of the one build.

The pinned sdist's CMakeLists has a switch, `LLAMA_BUILD`: off, its build compiles nothing and the package ships
no library; `llama_cpp` then loads `libllama` from `LLAMA_CPP_LIB_PATH`, which `export.llamacpp.load_llama_cpp`
points at `build_dir()/bin`. So `make setup-export` compiles llama.cpp once, not twice.
"""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

from export.progress import BuildProgress
from trainer.errors import UserError
from export.llamacpp_source import LLAMA_CPP_PYTHON_VERSION, sdist_archive

NO_LIBRARY = "-DLLAMA_BUILD=OFF"


def installed_version() -> str | None:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return None


def install_binding() -> None:
    """Install the pinned llama-cpp-python from the cached sdist with `LLAMA_BUILD=OFF` (about a minute, once).

    An installed copy of the pinned version is kept, whether it has a library of its own or not: the project
    points every copy at the same libllama anyway.
    """
    if installed_version() == LLAMA_CPP_PYTHON_VERSION:
        print(f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} is installed; it runs the library built above.",
              file=sys.stderr)
        return
    archive = sdist_archive()
    print(f"Installing llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} against that library (nothing to compile)...",
          file=sys.stderr, flush=True)
    # The user's CMAKE_ARGS went to the one build; here only the switch matters. No wheel cache: a wheel without
    # a library must not be reused by some other project's `pip install llama-cpp-python`.
    env = {**os.environ, "CMAKE_ARGS": NO_LIBRARY}
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-cache-dir", str(archive)]
    with BuildProgress("llama-cpp-python install") as _:
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit code {result.returncode}"
        raise UserError(f"installing llama-cpp-python failed: {last}", where=" ".join(cmd[2:]),
                        fix="run that pip command to see its whole output")
