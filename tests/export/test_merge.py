"""The streaming merge: every tensor equals base + B @ A * scale (in the base's dtype), nothing else changes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from export.merge import _merged, merge_shards
from trainer.errors import UserError


def shards(folder: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    first = {"model.embed_tokens.weight": torch.randn(50, 8, generator=g).to(dtype),
             "model.layers.0.q_proj.weight": torch.randn(8, 8, generator=g).to(dtype),
             "model.norm.weight": torch.ones(8, dtype=dtype)}
    second = {"lm_head.weight": torch.randn(50, 8, generator=g).to(dtype),
              "model.layers.0.k_proj.weight": torch.randn(4, 8, generator=g).to(dtype)}
    save_file(first, str(folder / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file(second, str(folder / "model-00002-of-00002.safetensors"), metadata={"format": "pt"})
    return {**first, **second}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_streamed_merge_equals_the_in_memory_formula(dtype, tmp_path):
    base, out = tmp_path / "base", tmp_path / "out"
    base.mkdir(), out.mkdir()
    weights = shards(base, dtype)
    g = torch.Generator().manual_seed(2)
    deltas = {"model.layers.0.q_proj.weight": (torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g), 2.0,
                                               False),
              "model.embed_tokens.weight": (torch.randn(2, 50, generator=g), torch.randn(8, 2, generator=g), 0.5,
                                            True),
              "lm_head.weight": (torch.randn(2, 8, generator=g), torch.randn(50, 2, generator=g), 1.0, False)}
    assert merge_shards(base, deltas, out) == 3
    merged = {k: v for p in sorted(out.glob("*.safetensors")) for k, v in load_file(str(p)).items()}
    assert merged.keys() == weights.keys()
    for name, weight in weights.items():
        expected = _merged(weight, *deltas[name]) if name in deltas else weight
        assert merged[name].dtype == dtype and torch.equal(merged[name], expected), name
    assert not torch.equal(merged["lm_head.weight"], weights["lm_head.weight"])


def test_a_delta_of_the_wrong_shape_is_refused(tmp_path):
    base, out = tmp_path / "base", tmp_path / "out"
    base.mkdir(), out.mkdir()
    shards(base, torch.bfloat16)
    wrong = {"model.layers.0.q_proj.weight": (torch.zeros(2, 9), torch.zeros(8, 2), 1.0, False)}
    with pytest.raises(UserError, match="different base model"):
        merge_shards(base, wrong, out)
