"""A tiny, offline stand-in for DeepSeek-R1-Distill-Llama-8B: the real tokenizer and a 2-layer Llama model.

Benchmarks of the Llama-8B shape need data tokenized exactly as the real model would (Llama-3's 128k byte-level
BPE), without any hub access. The tokenizer is rebuilt from the Llama-3 vocabulary that llama.cpp ships as a test
fixture (`ggml-vocab-llama-bpe.gguf`, inside the llama-cpp-python sdist on PyPI); its 256 special slots are then
named as in R1-Distill-Llama-8B, which is Llama-3.1 with five reserved slots renamed to DeepSeek's tokens.
"""
from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE

from trainer.errors import UserError
from trainer.r1 import BOS, EOS
from trainer.tiny import add_in_id_order, cached_model, r1_tokenizer, read_gguf_metadata, save_model
from trainer.vendor import llama_cpp_source

TINY_LLAMA_VERSION = "v1"
"""Bump whenever the build below changes, so cached copies from older code are rebuilt, not trusted."""

VOCAB_SIZE = 128_256  # 128,000 byte-level BPE tokens + 256 special slots; the embedding has exactly these rows
N_BASE_TOKENS = 128_000
PAD = "<｜▁pad▁｜>"  # BOS and EOS are the same strings as in R1-Distill-Qwen
BOS_ID, EOS_ID = 128_000, 128_001

# Where R1-Distill-Llama differs from Llama-3.1 in the special slots, with the `special` flag. No public copy of
# its tokenizer.json that we could read shows the flags of the four chat tokens; they follow R1-Distill-Qwen's, where
# <｜User｜>, <｜Assistant｜>, <think> and </think> are plain added tokens (so skip_special_tokens keeps them).
R1_TOKENS: dict[int, tuple[str, bool]] = {
    BOS_ID: (BOS, True), EOS_ID: (EOS, True),
    128_011: ("<｜User｜>", False), 128_012: ("<｜Assistant｜>", False),
    128_013: ("<think>", False), 128_014: ("</think>", False), 128_015: (PAD, True),
}
# Llama-3.1's named slots (the GGUF fixture is Llama-3.0, whose slots 128004, 128008 and 128010 were still reserved).
LLAMA31_NAMED = {128_000: "<|begin_of_text|>", 128_001: "<|end_of_text|>", 128_004: "<|finetune_right_pad_id|>",
                 128_006: "<|start_header_id|>", 128_007: "<|end_header_id|>", 128_008: "<|eom_id|>",
                 128_009: "<|eot_id|>", 128_010: "<|python_tag|>"}

# Llama-3's split (its tokenizer.json; llama.cpp's `llama-bpe` uses the same one with the (?i:) group spelled out).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# The real config.json at 1/64 of the width and 1/16 of the depth: same vocabulary, untied head, grouped KV heads,
# Llama-3.1 rope scaling and 128k positions, so code paths that depend on them run as on the 8B model.
TINY_LLAMA_CONFIG = {
    "vocab_size": VOCAB_SIZE, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-5, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
    "tie_word_embeddings": False,
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    # At the usual 0.02 the final norm keeps the logits nearly flat and LoRA cannot move them; 0.2 lets it learn.
    "initializer_range": 0.2,
    "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,  # as in the real config.json, which sets no pad id
}
# The real generation_config.json.
GENERATION_CONFIG = {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "do_sample": True, "temperature": 0.6,
                     "top_p": 0.95}


def special_slots() -> list[tuple[str, bool]]:
    """(text, special) for ids 128000..128255 in R1-Distill-Llama-8B, in id order."""
    slots = []
    reserved = 0  # Llama-3.1 numbers the reserved slots consecutively, skipping the named ones
    for token_id in range(N_BASE_TOKENS, VOCAB_SIZE):
        name = LLAMA31_NAMED.get(token_id)
        if name is None:
            name, reserved = f"<|reserved_special_token_{reserved}|>", reserved + 1
        slots.append(R1_TOKENS.get(token_id, (name, True)))  # DeepSeek renamed bos, eos and 128011-128015
    return slots


def _llama3_backend(vocab_gguf: Path) -> Tokenizer:
    """Byte-level BPE over Llama-3's base tokens, plus the 256 special slots at their real ids."""
    metadata = read_gguf_metadata(vocab_gguf)
    if metadata.get("tokenizer.ggml.pre") != "llama-bpe":
        raise UserError(f"expected the llama-bpe vocabulary, found {metadata.get('tokenizer.ggml.pre')!r}",
                        where=str(vocab_gguf), fix="point at models/ggml-vocab-llama-bpe.gguf from llama.cpp")
    tokens = metadata["tokenizer.ggml.tokens"]
    if len(tokens) != VOCAB_SIZE or set(metadata["tokenizer.ggml.token_type"][N_BASE_TOKENS:]) != {3}:
        raise UserError("the llama-bpe vocabulary does not have 128,000 tokens followed by 256 control tokens",
                        where=str(vocab_gguf), fix="delete the cache folder so llama.cpp's sources are unpacked again")
    merges = [tuple(merge.split(" ")) for merge in metadata["tokenizer.ggml.merges"]]
    # ignore_merges: a pre-token that is itself in the vocabulary is taken whole, as Llama-3's tokenizer.json and
    # llama.cpp's llama-bpe do; merging it pair by pair can end in a different split.
    backend = Tokenizer(BPE(vocab={token: i for i, token in enumerate(tokens[:N_BASE_TOKENS])}, merges=merges,
                            fuse_unk=False, byte_fallback=False, ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence([  # no normalizer: Llama-3 has none
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    add_in_id_order(backend, special_slots())
    return backend


def build_r1_llama_tokenizer(vocab_gguf: Path) -> transformers.PreTrainedTokenizerFast:
    """Build the R1-Distill-Llama-8B tokenizer from llama.cpp's `ggml-vocab-llama-bpe.gguf`."""
    return r1_tokenizer(_llama3_backend(vocab_gguf))


def tiny_llama_path() -> Path:
    """Return the cached tiny R1-Distill-Llama folder, building it on first use."""
    return cached_model("R1-Distill-Llama", f"tiny-r1-distill-llama-{TINY_LLAMA_VERSION}", build_tiny_llama)


def build_tiny_llama(out: Path) -> None:
    """Write the seeded tiny model (float32 safetensors), its generation config and tokenizer into `out`."""
    tokenizer = build_r1_llama_tokenizer(llama_cpp_source() / "models" / "ggml-vocab-llama-bpe.gguf")
    config = transformers.LlamaConfig(**TINY_LLAMA_CONFIG, dtype="float32")
    with torch.random.fork_rng(devices=[]):  # seed the build without disturbing the caller's random state
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config)
    save_model(out, model, GENERATION_CONFIG, tokenizer)
