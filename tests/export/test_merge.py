"""The streaming merge, checked against PEFT's own `merge_and_unload` and against a case worked out by hand."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from export.merge import merge_run, merge_shards, read_adapter
from trainer.errors import UserError

RANK, ALPHA = 4, 8


def merged_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for p in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(p)).items()}


def tiny_base(folder: Path) -> None:
    """A 2-layer Qwen2 in float32, saved in many small shards (so the merge streams several files)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(
        str(folder), safe_serialization=True, max_shard_size="20KB")


def trained_adapter(base: Path, adapter: Path, use_rslora: bool):
    """A LoRA on attention, MLP, the embeddings and the head, with random (non-zero) B; saved as training does.
    Returns PEFT's merged weights: the oracle."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trainer.model import lora_scale

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(
        r=RANK, lora_alpha=ALPHA, use_rslora=use_rslora, init_lora_weights=False,
        target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens", "lm_head"]))
    peft_model.save_pretrained(str(adapter), safe_serialization=True, save_embedding_layers=False)
    scale = ALPHA / math.sqrt(RANK) if use_rslora else ALPHA / RANK  # hand-computed: 4 with rsLoRA, else 2
    assert lora_scale(peft_model) == scale
    return {k: v.clone() for k, v in peft_model.merge_and_unload().state_dict().items()}, scale


@pytest.mark.parametrize("use_rslora", [False, True])
def test_merge_equals_peft_merge_and_unload(use_rslora, tmp_path):
    base, run, out = tmp_path / "base", tmp_path / "run", tmp_path / "out"
    tiny_base(base)
    out.mkdir()
    expected, scale = trained_adapter(base, run / "adapter", use_rslora)
    deltas = read_adapter(run / "adapter", scale)
    assert merge_shards(base, deltas, out) == len(deltas) == 2 * 3 + 2
    merged = merged_tensors(out)
    assert merged.keys() == merged_tensors(base).keys() == expected.keys()
    for name, weight in expected.items():
        torch.testing.assert_close(merged[name], weight, rtol=1e-6, atol=1e-6, msg=name)
    assert not torch.equal(merged["lm_head.weight"], merged_tensors(base)["lm_head.weight"])


def test_merge_run_applies_the_scale_recorded_by_training(tmp_path):
    """The whole `merge_run`: the scale comes from metrics.json, so a wrong record shows in the weights."""
    from trainer.config import DataConfig, ModelConfig, Recipe

    base, run = tmp_path / "base", tmp_path / "run"
    tiny_base(base)
    expected, scale = trained_adapter(base, run / "adapter", use_rslora=False)
    recipe = Recipe(name="t", model=ModelConfig(base=str(base), quantization="none"), data=DataConfig(path="x.jsonl"))
    with pytest.raises(UserError, match="lora_scale"):
        merge_run(run, recipe)
    (run / "metrics.json").write_text(json.dumps({"lora_scale": scale}))
    merged = merged_tensors(merge_run(run, recipe).path)
    torch.testing.assert_close(merged["model.layers.1.self_attn.q_proj.weight"],
                               expected["model.layers.1.self_attn.q_proj.weight"], rtol=1e-6, atol=1e-6)


def test_a_case_worked_out_by_hand(tmp_path):
    base, out = tmp_path / "base", tmp_path / "out"
    base.mkdir(), out.mkdir()
    save_file({"proj.weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
               "embed.weight": torch.zeros(3, 2), "norm.weight": torch.ones(2)}, str(base / "model.safetensors"))
    deltas = {"proj.weight": (torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0], [2.0]]), 0.5, False),
              # PEFT's embedding LoRA: A is (r, vocab), B is (dim, r); the update is (B @ A) transposed
              "embed.weight": (torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0], [-1.0]]), 2.0, True)}
    merge_shards(base, deltas, out)
    merged = merged_tensors(out)
    assert merged["proj.weight"].tolist() == [[1.5, 2.0], [4.0, 4.0]]
    assert merged["embed.weight"].tolist() == [[2.0, -2.0], [4.0, -4.0], [6.0, -6.0]]
    assert merged["norm.weight"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_bases_keep_their_dtype_and_untouched_bytes(dtype, tmp_path):
    base, out = tmp_path / "base", tmp_path / "out"
    base.mkdir(), out.mkdir()
    g = torch.Generator().manual_seed(1)
    weights = {"a.weight": torch.randn(8, 8, generator=g).to(dtype),
               "b.weight": torch.randn(4, 8, generator=g).to(dtype)}
    save_file(weights, str(base / "model.safetensors"), metadata={"format": "pt"})
    a, b = torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g)
    merge_shards(base, {"a.weight": (a, b, 2.0, False)}, out)
    merged = merged_tensors(out)
    assert merged["a.weight"].dtype == dtype and torch.equal(merged["b.weight"], weights["b.weight"])
    exact = weights["a.weight"].double() + 2.0 * (b.double() @ a.double())
    torch.testing.assert_close(merged["a.weight"].double(), exact, rtol=1e-2, atol=1e-2)  # rounded once, to dtype


def test_a_delta_of_the_wrong_shape_is_refused(tmp_path):
    base, out = tmp_path / "base", tmp_path / "out"
    base.mkdir(), out.mkdir()
    save_file({"model.layers.0.q_proj.weight": torch.zeros(8, 8)}, str(base / "model.safetensors"))
    wrong = {"model.layers.0.q_proj.weight": (torch.zeros(2, 9), torch.zeros(8, 2), 1.0, False)}
    with pytest.raises(UserError, match="different base model"):
        merge_shards(base, wrong, out)
