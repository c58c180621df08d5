"""Model shapes to benchmark: random-init weights in the real DeepSeek-R1-Distill configs, plus `tiny` for CPU tests.

The configs were checked against copies of the published config.json files (1.5B: hidden 1536, 28 layers, 12
heads, 2 KV heads, intermediate 8960, vocabulary 151,936, max_window_layers 21; 7B: hidden 3584, 28 heads, 4 KV
heads, intermediate 18,944, vocabulary 152,064, max_window_layers 28; both rope_theta 10,000, rms_norm_eps 1e-6,
untied; Llama-8B: hidden 4096, 32 layers, 32 heads, 8 KV heads, head_dim 128, intermediate 14,336, vocabulary
128,256, rope_theta 500,000 with llama3 scaling (factor 8, low 1, high 4, original 8192), rms_norm_eps 1e-5,
untied). Random weights give the same speed and memory as the real ones; no hub is needed.

A shape folder is built once per `--work` folder on the GPU, in bf16 with a fixed seed, saved as safetensors with
the real tokenizer (R1-Distill-Qwen's for the Qwen shapes, R1-Distill-Llama's for the Llama shape; both rebuilt
offline by `trainer.fixtures.tiny_qwen` / `trainer.fixtures.tiny_llama`, or carried as a tarball from `python -m bench export-tokenizers`).
"""
from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.errors import UserError

BUILD_SEED = 1234
META = "bench_shape.json"


@dataclass(frozen=True)
class Shape:
    name: str
    arch: str
    """`qwen2` or `llama`."""
    family: str
    """Tokenizer family: `qwen` or `llama`."""
    hub_id: str
    """The real checkpoint this shape copies (for the report; never downloaded)."""
    config: dict[str, Any] = field(default_factory=dict)


_QWEN = {"hidden_act": "silu", "max_position_embeddings": 131_072, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
         "use_sliding_window": False, "rope_parameters": {"rope_type": "default", "rope_theta": 10_000.0},
         "bos_token_id": 151_643, "eos_token_id": 151_643, "initializer_range": 0.02, "attention_dropout": 0.0}

SHAPES: dict[str, Shape] = {
    "qwen-1.5b": Shape("qwen-1.5b", "qwen2", "qwen", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", {
        **_QWEN, "vocab_size": 151_936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
        "num_attention_heads": 12, "num_key_value_heads": 2, "max_window_layers": 21}),
    "qwen-7b": Shape("qwen-7b", "qwen2", "qwen", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", {
        **_QWEN, "vocab_size": 152_064, "hidden_size": 3584, "intermediate_size": 18_944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "max_window_layers": 28}),
    "llama-8b": Shape("llama-8b", "llama", "llama", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", dict(
        vocab_size=128_256, hidden_size=4096, intermediate_size=14_336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, hidden_act="silu",
        max_position_embeddings=131_072, rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=False,
        mlp_bias=False, initializer_range=0.02, bos_token_id=128_000, eos_token_id=128_001,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
    # CPU tests: the project's embedded 2-layer, width-64 R1-Distill-Qwen (real tokenizer), used as it is.
    "tiny": Shape("tiny", "qwen2", "qwen", "trainer.fixtures.tiny_qwen"),
}


def get_shape(name: str) -> Shape:
    if name not in SHAPES:
        raise UserError(f"unknown shape '{name}'", where="--shapes", fix=f"use one of {', '.join(SHAPES)}")
    return SHAPES[name]


def make_config(shape: Shape, **changes):
    """The transformers config of a shape (`changes` shrink it for tests)."""
    import transformers

    cls = transformers.Qwen2Config if shape.arch == "qwen2" else transformers.LlamaConfig
    return cls(**{**shape.config, **changes})


def matmul_params(config) -> int:
    """Weights that multiply every token: the decoder's linear layers and the LM head (not the embedding lookup,
    not norms or biases). This is the N of the MFU formula in `bench.measure`."""
    d, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * config.intermediate_size
    return layers * per_layer + config.vocab_size * d


def shape_facts(path: Path) -> dict[str, Any]:
    """What the MFU formula needs, read from a shape folder's config.json."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(path))
    return {"matmul_params": matmul_params(config), "n_layers": config.num_hidden_layers,
            "hidden": config.hidden_size, "vocab": config.vocab_size}


def shape_dir(name: str, work: Path) -> Path:
    if name == "tiny":
        from trainer.fixtures.tiny_qwen import tiny_model_path

        return tiny_model_path()
    return Path(work) / "shapes" / name


def is_built(name: str, work: Path) -> bool:
    return name == "tiny" or (shape_dir(name, work) / META).is_file()


def build_shape(shape: Shape, dest: Path, tokenizer_path: Path, device: str = "cuda", **changes) -> float:
    """Write random-init weights (bf16, fixed seed) and the tokenizer into `dest`; returns seconds taken."""
    import time

    import torch
    import transformers

    from trainer.cache import building

    started = time.perf_counter()
    config = make_config(shape, **changes)
    with building(Path(dest)) as out:
        torch.manual_seed(BUILD_SEED)
        if device == "cuda":
            torch.cuda.manual_seed_all(BUILD_SEED)
        with torch.device(device):
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(str(out), safe_serialization=True)
        del model
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_path))
        tokenizer.save_pretrained(str(out))
        seconds = time.perf_counter() - started
        meta = {"shape": shape.name, "copies": shape.hub_id, "seed": BUILD_SEED, "dtype": "bfloat16",
                "matmul_params": matmul_params(config), "tokenizer": str(tokenizer_path),
                "build_s": round(seconds, 1), "changes": changes}
        (out / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return seconds


def tokenizer_path(family: str, tokenizers: str | None, work: Path) -> Path:
    """Folder holding the real tokenizer of a family: from `--tokenizers` (a folder or a .tgz made by
    `export-tokenizers`), else built offline by the project's tiny-model modules."""
    if tokenizers:
        root = Path(tokenizers)
        if root.is_file():
            root = _unpacked(root, Path(work) / "tokenizers")
        if (root / family / "tokenizer.json").is_file():
            return root / family
        raise UserError(f"no {family} tokenizer in {tokenizers}", where="--tokenizers",
                        fix="make it with `python -m bench export-tokenizers FILE.tgz` on a machine with the cache")
    if family == "qwen":
        from trainer.fixtures.tiny_qwen import tiny_model_path

        return tiny_model_path()
    try:
        from trainer.fixtures.tiny_llama import tiny_llama_path
    except ImportError:
        raise UserError("the Llama shape needs the R1-Distill-Llama tokenizer, and trainer/fixtures/tiny_llama.py is missing",
                        where="--shapes", fix="pass --tokenizers with a llama/ folder, or leave llama-8b out") from None
    return tiny_llama_path()


def export_tokenizers(dest: Path) -> dict[str, int]:
    """Write a .tgz with `qwen/` and `llama/` tokenizer folders (a few MB) for machines without the cache."""
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        sizes = {}
        for family in ("qwen", "llama"):
            try:
                source = tokenizer_path(family, None, Path(tmp))
            except UserError as error:
                print(f"skipped {family}: {error}")
                continue
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(source))
            tokenizer.save_pretrained(str(Path(tmp) / family))
            sizes[family] = len(tokenizer)
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(dest, "w:gz") as tar:
            for family in sizes:
                tar.add(str(Path(tmp) / family), arcname=family)
    return sizes


def _unpacked(archive: Path, target: Path) -> Path:
    stamp = target / ".from"
    if stamp.is_file() and stamp.read_text() == f"{archive.resolve()}:{archive.stat().st_mtime_ns}":
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(target, filter="data")
    stamp.write_text(f"{archive.resolve()}:{archive.stat().st_mtime_ns}")
    return target
