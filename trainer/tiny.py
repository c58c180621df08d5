"""A tiny, offline stand-in for DeepSeek-R1-Distill-Qwen: the real tokenizer and a 2-layer Qwen2 model.

Tests and smoke runs need a model that loads with `from_pretrained`, tokenizes exactly like the real one and
can still learn, without any hub access. The tokenizer is rebuilt from the Qwen2 vocabulary that llama.cpp ships
as a test fixture (inside the llama-cpp-python sdist on PyPI), with the R1-Distill added tokens on top; the chat
template is the original R1-Distill one that ships with trl.
"""
from __future__ import annotations

import contextlib
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from trainer.cache import building, cache_dir
from trainer.config import TINY  # noqa: F401  (re-exported: the model name that selects this model)
from trainer.errors import UserError
from trainer.r1 import ASSISTANT, BOS, BOS_ID, EOS, EOS_ID, THINK_CLOSE, THINK_OPEN, USER, chat_template
from trainer.vendor import llama_cpp_source

TINY_VERSION = "v3"
"""Bump whenever the build below changes, so cached copies from older code are rebuilt, not trusted."""

VOCAB_SIZE = 151_936  # the real checkpoints' embedding rows (padded beyond the 151,665 tokens)
N_BASE_TOKENS = 151_643  # Qwen2's byte-level BPE tokens; everything after them is an added token

# R1-Distill-Qwen's added tokens from id 151643 on, in order, with the real tokenizer.json's `special` flag:
# only eos, bos and Qwen2.5's vision tokens are special there, so decoding with skip_special_tokens keeps
# `<｜User｜>`, `<｜Assistant｜>` and `<think>` (and llama.cpp marks the same tokens as control tokens).
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    (EOS, True), (USER, False), (ASSISTANT, False), (BOS, True), ("<|EOT|>", False),
    (THINK_OPEN, False), (THINK_CLOSE, False),
    ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
)

# Qwen2's pre-tokenizer split (as in its tokenizer.json and llama.cpp's `qwen2` pre-tokenizer type).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Shape of the tiny model: a standard Qwen2 config (so llama.cpp's converter accepts it) that mirrors the real
# checkpoints where it matters to our code: untied embeddings, grouped KV heads, the full vocabulary, the ids.
TINY_CONFIG = dict(
    vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131_072, max_window_layers=2,
    rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
    tie_word_embeddings=False, use_sliding_window=False, sliding_window=4096, hidden_act="silu",
    # At the usual 0.02 the final norm keeps the logits nearly flat and LoRA cannot move them; 0.2 lets it learn.
    initializer_range=0.2,
    # The real config.json says bos = eos = 151643; its generation_config.json has bos 151646 (below).
    bos_token_id=EOS_ID, eos_token_id=EOS_ID,
)
FINAL_NORM_GAIN = 2.0
"""Start value of the final RMSNorm weight. At 1, a 64-wide hidden state cannot give any of 151,936 tokens more
than ~40% probability (the other logits' spread wins); at 2 a trained model can be confident, and LoRA on the
tiny model reaches a held-out accuracy that 1 never does. Trained checkpoints' final-norm gains are well above 1."""

GENERATION_CONFIG = dict(bos_token_id=BOS_ID, eos_token_id=EOS_ID, do_sample=True, temperature=0.6, top_p=0.95)

_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def read_gguf_metadata(path: Path) -> dict[str, object]:
    """Return the key/value metadata of a little-endian GGUF file (tensors are not read).

    `gguf.GGUFReader` takes about 20 s on this 6 MB vocabulary because it wraps every string in numpy views;
    walking the format with `struct` takes well under a second.
    """
    data = Path(path).read_bytes()
    fix = "point at a GGUF file from llama.cpp; if it came from the cache, delete the cache folder to unpack it again"
    if data[:4] != b"GGUF":
        raise UserError("not a GGUF file", where=str(path), fix=fix)
    (version,) = struct.unpack_from("<I", data, 4)
    if version not in (2, 3):  # v1 used 32-bit counts; a byte-swapped (big-endian) file shows a huge number
        raise UserError(f"unsupported GGUF version {version}", where=str(path), fix=fix)
    (n_kv,) = struct.unpack_from("<Q", data, 16)
    pos = 24  # after magic, version, tensor count and key/value count

    def take(fmt: str) -> tuple:
        nonlocal pos
        values = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return values

    def string() -> str:
        nonlocal pos
        (size,) = take("<Q")
        pos += size
        return data[pos - size:pos].decode("utf-8")

    def value(kind: int) -> object:
        if kind == _GGUF_STRING:
            return string()
        if kind == _GGUF_ARRAY:
            item_kind, count = take("<IQ")
            if item_kind in _GGUF_SCALARS:  # one unpack for the whole array
                return list(take(f"<{count}{_GGUF_SCALARS[item_kind]}"))
            return [value(item_kind) for _ in range(count)]
        return take("<" + _GGUF_SCALARS[kind])[0]

    metadata = {}
    for _ in range(n_kv):
        key = string()
        metadata[key] = value(take("<I")[0])
    return metadata


def _qwen2_backend(vocab_gguf: Path) -> Tokenizer:
    """Byte-level BPE over Qwen2's base tokens, plus the R1-Distill added tokens at their real ids."""
    metadata = read_gguf_metadata(vocab_gguf)
    if metadata.get("tokenizer.ggml.pre") != "qwen2":
        raise UserError(f"expected the qwen2 vocabulary, found {metadata.get('tokenizer.ggml.pre')!r}",
                        where=str(vocab_gguf), fix="point at models/ggml-vocab-qwen2.gguf from llama.cpp")
    # GGUF already stores tokens in byte-level unicode form and merges as "left right" strings.
    tokens = metadata["tokenizer.ggml.tokens"][:N_BASE_TOKENS]
    merges = [tuple(merge.split(" ")) for merge in metadata["tokenizer.ggml.merges"]]
    backend = Tokenizer(BPE(vocab={token: i for i, token in enumerate(tokens)}, merges=merges,
                            fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()  # Qwen2's tokenizer.json normalizes to NFC, and so does transformers
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    add_in_id_order(backend, ADDED_TOKENS)
    return backend


def add_in_id_order(backend: Tokenizer, tokens: Iterable[tuple[str, bool]]) -> None:
    """Add (text, special) tokens one by one, so each lands on the next id, exactly as in the real tokenizer."""
    for content, special in tokens:
        token = AddedToken(content, special=special, normalized=False)
        if special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])


def build_r1_qwen_tokenizer(vocab_gguf: Path) -> transformers.PreTrainedTokenizerFast:
    """Build the R1-Distill-Qwen tokenizer from llama.cpp's `ggml-vocab-qwen2.gguf`."""
    return r1_tokenizer(_qwen2_backend(vocab_gguf))


def r1_tokenizer(backend: Tokenizer) -> transformers.PreTrainedTokenizerFast:
    """Wrap a tokenizer backend as the R1-Distill tokenizers (Qwen and Llama) are set up.

    Like the real ones it adds bos when asked for special tokens (so text rendered by the chat template, which
    already starts with bos, must be encoded with `add_special_tokens=False`), pads with eos and has no unk.
    """
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=None,
        add_bos_token=True, add_eos_token=False,
        model_max_length=16_384, clean_up_tokenization_spaces=False,
        chat_template=chat_template(),
    )


def tiny_model_path() -> Path:
    """Return the cached tiny R1-Distill-Qwen folder, building it on first use."""
    return cached_model("R1-Distill-Qwen", f"tiny-r1-distill-qwen-{TINY_VERSION}", build_tiny_model)


def cached_model(label: str, folder: str, build: Callable[[Path], None]) -> Path:
    """The cache folder `folder`, written by `build` on first use.

    The folder loads offline with `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`.
    One flat, descriptive folder name: llama.cpp's converter derives the GGUF's general.name from it.
    """
    target = cache_dir() / folder
    if not target.is_dir():  # `building` only ever leaves complete folders under this name
        print(f"Building the tiny {label} model in {target} (once)...", file=sys.stderr, flush=True)
        with building(target) as out:
            build(out)
    return target


def build_tiny_model(out: Path) -> None:
    """Write the seeded tiny model (float32 safetensors), its generation config and tokenizer into `out`."""
    tokenizer = build_r1_qwen_tokenizer(llama_cpp_source() / "models" / "ggml-vocab-qwen2.gguf")
    config = transformers.Qwen2Config(**TINY_CONFIG, dtype="float32")
    with torch.random.fork_rng(devices=[]):  # seed the build without disturbing the caller's random state
        torch.manual_seed(0)
        model = transformers.Qwen2ForCausalLM(config)
        with torch.no_grad():
            model.model.norm.weight.fill_(FINAL_NORM_GAIN)
    save_model(out, model, GENERATION_CONFIG, tokenizer)


def save_model(out: Path, model, generation_config: dict, tokenizer) -> None:
    """Model (safetensors) with its generation config, and tokenizer, as the real checkpoints ship them."""
    model.generation_config = transformers.GenerationConfig(**generation_config)
    with _no_progress_bars():
        model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence transformers' progress bars for a moment, so building prints the one announced line only."""
    logging = transformers.utils.logging
    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()
