"""Model architectures for the memory planner: from a folder's config.json (local or the Hugging Face cache,
never downloaded) or from the published figures of the R1-Distill family."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import UserError


@dataclass(frozen=True)
class Arch:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = False
    qkv_bias: bool = False

    @property
    def linear_params(self) -> int:
        """Weights of the decoder's linear layers (what 4-bit quantizes)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return self.layers * (2 * self.hidden * q + 2 * self.hidden * kv + 3 * self.hidden * self.intermediate)

    @property
    def matmul_params(self) -> int:
        """Weights that multiply every token: decoder linears and the LM head (the N of 6N)."""
        return self.linear_params + self.vocab * self.hidden

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each LoRA-able linear layer of one decoder layer."""
        d, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
                "gate_proj": (d, i), "up_proj": (d, i), "down_proj": (i, d)}


def _qwen(hidden, layers, heads, kv, inter, vocab=152_064):
    return Arch(hidden, layers, heads, kv, hidden // heads, inter, vocab, qkv_bias=True)


def _llama(hidden, layers, heads, kv, inter):
    return Arch(hidden, layers, heads, kv, hidden // heads, inter, 128_256)


KNOWN_MODELS = {
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": _qwen(1536, 28, 12, 2, 8960, vocab=151_936),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": _qwen(3584, 28, 28, 4, 18_944),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": _qwen(5120, 48, 40, 8, 13_824),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": _qwen(5120, 64, 40, 8, 27_648),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": _llama(4096, 32, 32, 8, 14_336),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-70B": _llama(8192, 80, 64, 8, 28_672),
}
"""The published config.json figures of the R1-Distill family (used when nothing is downloaded)."""

TINY_ARCH = Arch(64, 2, 4, 2, 16, 256, 151_936, qkv_bias=True)


def arch_for(base: str) -> tuple[Arch, str]:
    """The base model's architecture and where it came from: config.json (folder or HF cache), or the table."""
    if base == "tiny":
        return TINY_ARCH, "the embedded tiny model"
    config = _config_json(base)
    if config is not None:
        return arch_from_config(json.loads(config.read_text(encoding="utf-8"))), str(config)
    for name, arch in KNOWN_MODELS.items():
        if name.lower() == base.lower() or name.split("/")[1].lower() == base.rstrip("/").split("/")[-1].lower():
            return arch, f"built-in table ({name})"
    raise UserError(f"no config.json for '{base}' here, and it is not an R1-Distill model the planner knows",
                    where="model.base", fix=f"download the model first, or use one of {', '.join(KNOWN_MODELS)}")


def arch_from_config(c: dict) -> Arch:
    c = c.get("text_config", c)
    heads = c["num_attention_heads"]
    return Arch(hidden=c["hidden_size"], layers=c["num_hidden_layers"], heads=heads,
                kv_heads=c.get("num_key_value_heads") or heads,
                head_dim=c.get("head_dim") or c["hidden_size"] // heads, intermediate=c["intermediate_size"],
                vocab=c["vocab_size"], tied=bool(c.get("tie_word_embeddings", False)),
                qkv_bias=bool(c.get("attention_bias", c.get("model_type") == "qwen2")))


def _config_json(base: str) -> Path | None:
    local = Path(base).expanduser()
    if (local / "config.json").is_file():
        return local / "config.json"
    if "/" not in base or local.exists():
        return None
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or
                                                      Path.home() / ".cache" / "huggingface") / "hub")
    snapshots = hub / f"models--{base.replace('/', '--')}" / "snapshots"
    found = sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
    return found[-1] if found else None
