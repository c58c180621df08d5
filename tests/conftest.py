"""Shared pytest fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    """The cached tiny R1-Distill-Qwen folder (built on first use, from the cache's llama.cpp sources)."""
    from trainer.fixtures.tiny_qwen import tiny_model_path

    return tiny_model_path()


@pytest.fixture(scope="session")
def exported_run(tiny_path: Path, tmp_path_factory) -> Path:
    """A finished run folder of the news recipe (cpu profile) whose GGUF is the tiny model's f16, as `make gguf`
    leaves it. Training is not needed: serving and GGUF chat read only the GGUF and the recipe. Needs llama.cpp's
    sources (the converter), like the other `llamacpp` tests."""
    from export.gguf import convert
    from trainer.r1 import chat_template as r1_chat_template
    from trainer.recipe import RESOLVED_NAME, find_recipe, load_recipe, save_resolved
    from trainer.runs import RunFolder

    run = RunFolder(tmp_path_factory.mktemp("runs") / "news-20261130-120000")
    run.gguf.mkdir(parents=True)
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    save_resolved(load_recipe(find_recipe("news", recipes), ["profile=cpu"]), run.path / RESOLVED_NAME)
    convert(tiny_path, run.gguf / f"{run.name}-f16.gguf", "f16", chat_template=r1_chat_template())
    run.mark_complete()
    return run.path
