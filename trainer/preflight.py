"""Checks made before anything heavy is loaded: a fault found here costs seconds, not a model load.

Each raises a UserError naming the setting and the fix; none of them creates a run folder.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from trainer.config import TINY, Recipe
from trainer.errors import UserError, machine_fault

GIB = 2**30
FREE_DISK_GIB = {"tiny": 0.05, "lora": 1.0, "full": 40.0, "freeze": 40.0}
"""Least free space in train.output_dir to start a run: the adapter and `keep_checkpoints` checkpoints (LoRA on a
7-8B base: ~0.3 GiB with its optimizer state each; a full fine-tune of a 7B: ~15 GiB of weights per save)."""


def check_before_training(recipe: Recipe) -> None:
    """Output folder writable, enough free disk, max_seq_length within the model's positions."""
    folder = writable_folder(recipe.train.output_dir)
    check_free_disk(folder, required_gib(recipe))
    check_positions(recipe)


def writable_folder(output_dir: str) -> Path:
    """The folder that holds (or will hold) `output_dir`, once a file was written there; nothing is created."""
    folder = Path(output_dir).expanduser().absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(folder))
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        fault = machine_fault(exc)
        reason = fault.message.removeprefix("cannot write: ") if fault else (exc.strerror or str(exc))
        raise UserError(f"cannot write run folders here: {reason}", where=f"train.output_dir={output_dir}",
                        fix="choose a writable folder, e.g. ARGS=\"train.output_dir=$HOME/runs\"") from None
    return folder


def required_gib(recipe: Recipe) -> float:
    return FREE_DISK_GIB["tiny"] if recipe.model.base == TINY else FREE_DISK_GIB[recipe.train.method]


def check_free_disk(folder: Path, need_gib: float) -> None:
    free = shutil.disk_usage(folder).free / GIB
    if free < need_gib:
        raise UserError(f"only {free:.2f} GiB free, a run of this recipe needs about {need_gib:g} GiB for its "
                        f"weights and checkpoints", where=f"train.output_dir={folder}",
                        fix="free some space, choose another train.output_dir, or lower train.keep_checkpoints")


def check_positions(recipe: Recipe) -> None:
    """model.max_seq_length must fit the positions the base model was trained for (when its config is on disk)."""
    positions = model_positions(recipe.model.base)
    if positions and recipe.model.max_seq_length > positions:
        raise UserError(f"{recipe.model.max_seq_length} tokens, but {recipe.model.base} has only {positions} "
                        f"positions (max_position_embeddings)", where="model.max_seq_length",
                        fix=f"use model.max_seq_length={positions} or less")


def model_positions(base: str) -> int | None:
    """max_position_embeddings from the base's config.json, read only from disk (never downloads)."""
    config = _local_config(base)
    if config is None:
        return None
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def _local_config(base: str) -> Path | None:
    if base == TINY:
        from trainer.cache import cache_dir

        found = sorted(cache_dir().glob("tiny-r1-distill-qwen-*/config.json"))
        return found[-1] if found else None
    folder = Path(base).expanduser()
    if (folder / "config.json").is_file():
        return folder / "config.json"
    if base.count("/") == 1 and not base.startswith((".", "/", "~")):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(base, "config.json")
        except Exception:  # an odd id or cache: the check is skipped, the model load reports what is wrong
            return None
        return Path(cached) if isinstance(cached, str) else None
    return None
