"""Fail fast when a hub id is given on a machine that cannot reach the Hugging Face Hub.

Left alone, the libraries retry for about a minute before reporting a network error. One TCP connection with a
short timeout answers the same question at once; a model or dataset already in the local Hugging Face cache is
then used offline instead.
"""
from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

from trainer.errors import UserError

PROBE_TIMEOUT_S = 1.5
"""Seconds to wait for the Hub's TCP handshake; a reachable Hub answers in well under a second."""


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


@functools.lru_cache(maxsize=None)
def hub_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub's host opens within `timeout` seconds (asked once per process)."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _cached(repo_id: str, repo_type: str) -> bool:
    """Whether the local Hugging Face cache holds a snapshot of this repository."""
    try:
        from huggingface_hub import constants, scan_cache_dir

        folder = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
        return any(repo.repo_id == repo_id and repo.repo_type == repo_type and repo.revisions
                   for repo in scan_cache_dir(folder).repos)
    except Exception:  # noqa: BLE001  (no cache folder yet, or an unreadable one: nothing cached)
        return False


def require_hub(repo_id: str, key: str, repo_type: str = "model") -> None:
    """Return at once when `repo_id` can be fetched (Hub reachable) or is cached (then use it offline);
    otherwise raise one UserError saying what to do instead."""
    if not _offline() and hub_reachable(endpoint()):
        return
    if _cached(repo_id, repo_type):
        os.environ["HF_HUB_OFFLINE"] = "1"  # use the cached copy without the libraries' retries
        if repo_type == "dataset":
            os.environ["HF_DATASETS_OFFLINE"] = "1"
        return
    why = "HF_HUB_OFFLINE is set" if _offline() else f"cannot reach the Hugging Face Hub ({endpoint()})"
    kind = "model" if repo_type == "model" else "dataset"
    local = "/path/to/folder" if repo_type == "model" else "/path/to/file.jsonl"
    download = f"hf download {'--repo-type dataset ' if repo_type == 'dataset' else ''}{repo_id}"
    raise UserError(f"{why}, and the {kind} '{repo_id}' is not in the local Hugging Face cache", where=key,
                    fix=f"on a machine with access, `{download} --local-dir DIR`, copy DIR here and set "
                        f"{key}={local}")


def looks_local(path: str) -> bool:
    """A path rather than a hub id (`org/name`): it has a suffix, a leading ./ / ~, or not exactly one slash."""
    from pathlib import Path

    return path.startswith((".", "/", "~")) or Path(path).suffix != "" or path.count("/") != 1


def require_recipe_hub_ids(recipe) -> None:
    """Check every hub id a recipe names (base model, datasets) before any of them is loaded."""
    from pathlib import Path

    from trainer.config import TINY

    if recipe.model.base != TINY and not Path(recipe.model.base).expanduser().exists():
        require_hub(recipe.model.base, "model.base")
    d = recipe.data
    named = [("data.path", d.path), ("data.eval_path", d.eval_path or "")]
    named += [(f"data.mix.{i}.path", m.path) for i, m in enumerate(d.mix)]
    for key, path in named:
        if path and not looks_local(path) and not Path(path).expanduser().exists():
            require_hub(path, key, "dataset")
