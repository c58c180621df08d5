"""Merge a run's LoRA adapter into the 16-bit base weights, one safetensors shard at a time.

Only one shard of the base (plus the small adapter) is in memory at once, so peak host RAM stays near the
largest shard rather than the whole model: a 7B merges on a 16 GB desktop. The merge is done in float32 and
cast back to the base's dtype. The result is written aside and renamed into `merged/` when complete.
"""
from __future__ import annotations

import json
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from trainer.cache import building
from trainer.config import Recipe
from trainer.errors import UserError
from trainer.model import base_path
from trainer.runs import ADAPTER

MERGED = "merged"
METRICS = "metrics.json"  # written by trainer.training.sft; the run-folder type should own this name
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt")
CONFIG_FILES = ("config.json", "generation_config.json")


@dataclass(frozen=True)
class Merged:
    path: Path
    seconds: float
    skipped: bool
    merged_modules: int


def merge_run(run_dir: Path, recipe: Recipe) -> Merged:
    """`run_dir/merged/`: base + adapter as a plain Hugging Face model with the run's tokenizer."""
    target = run_dir / MERGED
    adapter = run_dir / ADAPTER
    if target.is_dir():
        return Merged(target, 0.0, True, 0)
    started = time.perf_counter()
    if recipe.train.method != "lora":  # full or freeze runs saved the whole model
        if not (adapter / "config.json").is_file():
            raise UserError("the run has no trained model (adapter/config.json is missing)", where=str(adapter),
                            fix="train the recipe again; this folder is damaged")
        return Merged(adapter, 0.0, True, 0)
    if not (adapter / "adapter_config.json").is_file():
        raise UserError("the run has no LoRA adapter (adapter/adapter_config.json is missing)", where=str(adapter),
                        fix="train the recipe again; this folder is damaged")
    base = base_folder(recipe)
    scale = recorded_lora_scale(run_dir)
    with building(target) as out:
        deltas = read_adapter(adapter, scale)
        merged = merge_shards(base, deltas, out)
        if merged != len(deltas):
            raise UserError(f"only {merged} of {len(deltas)} adapted layers were found in the base weights",
                            where=str(base), fix="the adapter was trained on a different base model")
        for name in CONFIG_FILES:
            if (base / name).is_file():
                shutil.copy2(base / name, out / name)
        for name in TOKENIZER_FILES:  # the run's tokenizer carries the original R1 chat template
            if (adapter / name).is_file():
                shutil.copy2(adapter / name, out / name)
    return Merged(target, time.perf_counter() - started, False, len(deltas))


def base_folder(recipe: Recipe) -> Path:
    """The 16-bit base weights on disk: the tiny model, a local folder, or the hub snapshot in the HF cache."""
    path = Path(base_path(recipe.model)).expanduser()
    if not path.is_dir():
        path = _hub_snapshot(recipe.model.base)
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if config.get("quantization_config"):
        raise UserError("the base folder holds pre-quantized weights, which cannot be merged into exactly",
                        where=str(path), fix="set model.base to the original 16-bit model, e.g. "
                                             "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B, and export again")
    if not list(path.glob("*.safetensors")):
        raise UserError("no safetensors weights in the base folder", where=str(path),
                        fix="only safetensors are read (a pickle can run code); convert the weights first")
    return path


def _hub_snapshot(repo: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=["*.safetensors", "*.json", "tokenizer*"]))
    except Exception as exc:  # offline, gated, unknown: the library's first line says which
        raise UserError(f"cannot get the 16-bit base '{repo}': {str(exc).splitlines()[0][:200]}",
                        where="model.base", fix="download it once with network access (huggingface-cli download "
                                                f"{repo}) or set model.base to a local folder") from None


def recorded_lora_scale(run_dir: Path) -> float:
    """The LoRA scale training used, as it recorded it in metrics.json (`trainer.model.lora_scale`)."""
    metrics = run_dir / METRICS
    try:
        return float(json.loads(metrics.read_text(encoding="utf-8"))["lora_scale"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError("the run does not record its LoRA scale (metrics.json, key lora_scale)", where=str(metrics),
                        fix="train the run again with this version; or add \"lora_scale\": lora.alpha / lora.rank "
                            "(alpha / sqrt(rank) with use_rslora) to metrics.json") from None


def read_adapter(adapter: Path, scale: float) -> dict[str, tuple]:
    """Base weight name -> (A, B, scale, is_embedding) for every adapted layer."""
    from safetensors.torch import load_file

    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise UserError("per-layer LoRA ranks are not supported by the merge", where=str(adapter))
    weights_file = adapter / "adapter_model.safetensors"
    if not weights_file.is_file():
        raise UserError("no adapter_model.safetensors (only safetensors are read)", where=str(adapter))
    tensors = load_file(str(weights_file))
    deltas: dict[str, tuple] = {}
    for key, a in tensors.items():
        for marker, embedding in ((".lora_A.weight", False), (".lora_embedding_A", True)):
            if key.endswith(marker):
                module = key[: -len(marker)].removeprefix("base_model.model.")
                b = tensors[key.replace("_A", "_B")]
                deltas[f"{module}.weight"] = (a, b, scale, embedding)
    return deltas


def merge_shards(base: Path, deltas: dict[str, tuple], out: Path) -> int:
    """Write every base shard with its adapted tensors merged; returns how many tensors were changed.

    Tensors are streamed one at a time with plain reads (no mmap, no whole-shard dict): a merged tensor keeps its
    dtype and shape, so the shard's header and offsets stay valid and only the bytes of adapted tensors change.
    Peak memory is the largest tensor a few times over, not the shard (R1-Distill-Qwen-1.5B is one 3.5 GB shard)."""
    changed = 0
    for shard in sorted(base.glob("*.safetensors")):
        changed += _stream_shard(shard, out / shard.name, deltas)
    index = base / "model.safetensors.index.json"
    if index.is_file():
        shutil.copy2(index, out / index.name)
    return changed


_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64", "I64": "int64",
           "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
_COPY_CHUNK = 64 << 20


def _stream_shard(source: Path, target: Path, deltas: dict[str, tuple]) -> int:
    import torch

    changed = 0
    with source.open("rb") as src, target.open("wb") as dst:
        header_bytes = src.read(struct.unpack("<Q", src.read(8))[0])
        header = json.loads(header_bytes)
        metadata = {**(header.pop("__metadata__", None) or {}), "format": "pt"}
        names = sorted(header, key=lambda name: header[name]["data_offsets"][0])
        text = json.dumps({"__metadata__": metadata, **{n: header[n] for n in names}}, separators=(",", ":"))
        encoded = text.encode("utf-8")
        encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned, as safetensors writes it
        dst.write(struct.pack("<Q", len(encoded)) + encoded)
        for name in names:
            begin, end = header[name]["data_offsets"]
            if name not in deltas:
                _copy(src, dst, end - begin)
                continue
            raw = bytearray(end - begin)
            src.readinto(raw)
            dtype = getattr(torch, _DTYPES[header[name]["dtype"]])
            weight = torch.frombuffer(raw, dtype=dtype).reshape(header[name]["shape"])
            dst.write(_merged(weight, *deltas[name]).contiguous().view(torch.uint8).numpy().tobytes())
            changed += 1
    return changed


def _copy(src, dst, length: int) -> None:
    while length:
        chunk = src.read(min(length, _COPY_CHUNK))
        if not chunk:
            raise UserError("a base weight file ends early", where=src.name, fix="download the base model again")
        dst.write(chunk)
        length -= len(chunk)


def _merged(weight, a, b, scale: float, embedding: bool):
    import torch

    delta = (b.float() @ a.float()) * scale
    if embedding:  # PEFT stores embedding LoRA as A: (r, vocab), B: (dim, r)
        delta = delta.T
    if delta.shape != weight.shape:
        raise UserError(f"adapter shape {tuple(delta.shape)} does not fit base weight {tuple(weight.shape)}",
                        where="adapter", fix="the adapter was trained on a different base model")
    with torch.no_grad():
        return (weight.float() + delta).to(weight.dtype)
