"""Where built artifacts live (the tiny model, llama.cpp's sources and tools), and how they are written safely.

Everything here is rebuilt from packages on PyPI when missing, so the cache can be deleted at any time.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def cache_dir() -> Path:
    """The project's cache: `$R1TUNE_CACHE`, else `~/.cache/r1-tune`."""
    root = os.environ.get("R1TUNE_CACHE") or Path.home() / ".cache" / "r1-tune"
    path = Path(root).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def building(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder of `target`; on success rename it to `target`.

    A crash or an exception leaves no folder under the final name, so a later call builds again instead of
    trusting half-written files.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    # The pid in the name lets a later run tell a folder left by a killed process from one still being built.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}-", dir=target.parent))
    try:
        yield tmp
        if target.exists():  # another process finished first; keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
