"""Shared pytest fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    """The cached tiny R1-Distill-Qwen folder (built on first use, from the cache's llama.cpp sources)."""
    from trainer.fixtures.tiny_qwen import tiny_model_path

    return tiny_model_path()
