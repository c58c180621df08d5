"""Do packed rows attend to each other? Per-row losses, packed versus one row at a time.

Packed (padding-free) batches put several rows into one sequence whose position ids restart at 0 for each row, with
no attention mask (TRL's padding-free collator; Unsloth adds `packed_seq_lengths`). If the attention keeps the rows
apart, the loss of each row computed inside the packed sequence equals its loss computed alone, unpadded, up to
rounding. A control makes sure the model can tell: the same packed sequence with continuous position ids (and one
`packed_seq_lengths` entry) lets every row see the ones before it, and must change the losses clearly; if it does
not, the verdict is `inconclusive`.

The model, its attention implementation and (for Unsloth) the collator are the ones the project's trainer uses:
the model comes from `trainer.model.load_for_training` and the packed batch from the trainer's own collator when
it is padding-free, else from TRL's padding-free collator.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

IGNORE = -100


def tolerance(loss: float, dtype: str) -> float:
    """Allowed |packed - alone| for one row's mean loss: rounding only."""
    return 1e-4 + 1e-5 * abs(loss) if dtype == "float32" else 5e-3 + 1e-3 * abs(loss)


def verdict(alone: list[float], packed: list[float], leaky: list[float], dtype: str) -> dict[str, Any]:
    tol = max(tolerance(x, dtype) for x in alone)
    packed_diff = max(abs(a - b) for a, b in zip(alone, packed))
    leaky_diff = max(abs(a - b) for a, b in zip(alone, leaky))
    if packed_diff <= tol and leaky_diff > 3 * tol:
        word = "isolated"
    elif packed_diff > tol and packed_diff > 0.5 * leaky_diff:
        word = "leaks"
    elif packed_diff > tol:
        word = "mismatch"
    else:
        word = "inconclusive"
    return {"verdict": word, "tolerance": tol, "max_packed_diff": packed_diff, "max_leaky_diff": leaky_diff,
            "alone": alone, "packed": packed, "leaky_control": leaky}


def row_losses(model, rows: list[dict], packed: dict, device) -> dict[str, list[float]]:
    """Each row's mean loss alone, inside `packed`, and inside the leaky control."""
    import torch

    lengths = [len(r["input_ids"]) for r in rows]
    owner = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(lengths)).to(device)[None]
    total = sum(lengths)
    batch = {k: v.to(device) for k, v in packed.items() if k != "labels"}
    labels = packed["labels"].to(device)
    leaky = dict(batch, position_ids=torch.arange(total, device=device)[None])
    if "packed_seq_lengths" in batch:
        leaky["packed_seq_lengths"] = torch.tensor([total], dtype=batch["packed_seq_lengths"].dtype, device=device)
    out: dict[str, list[float]] = {"alone": [], "packed": [], "leaky": []}
    with torch.no_grad():
        for i, row in enumerate(rows):
            ids = torch.tensor([row["input_ids"]], device=device)
            out["alone"].append(float(model(input_ids=ids, labels=torch.tensor([row["labels"]], device=device),
                                            use_cache=False).loss))
            mine = torch.where(owner == i, labels, torch.full_like(labels, IGNORE))
            out["packed"].append(float(model(**batch, labels=mine, use_cache=False).loss))
            out["leaky"].append(float(model(**leaky, labels=mine, use_cache=False).loss))
    return out


def trl_padding_free(rows: list[dict], pad_token_id: int, with_lengths: bool) -> dict:
    """TRL's own padding-free collation (plus Unsloth's `packed_seq_lengths` when asked)."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    batch = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)(
        [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    if with_lengths:
        batch["packed_seq_lengths"] = torch.tensor([len(r["input_ids"]) for r in rows], dtype=torch.int32)
    return dict(batch)


def check_job(job: dict) -> dict[str, Any]:
    """Subprocess body of `python -m bench packing-check`: load as the variant does, compare, judge."""
    import torch

    from bench.variants import VARIANTS, project_trainer
    from bench.workload import load_rows

    variant = VARIANTS["d" if job["backend"] == "unsloth" else "b"]
    spec, rows = load_rows(Path(job["rows"]))
    rows = [r for r in rows if not r["truncated"]][: job.get("n_rows", 4)]
    run_dir = Path(job["work"]) / "runs" / f"{job['shape']}-packing-{job['backend']}"
    run_dir.mkdir(parents=True, exist_ok=True)
    job = dict(job, batch_size=len(rows), grad_accum=1, warmup=0, steps=1)
    trainer, info = project_trainer(job, variant, spec, rows, run_dir)
    model = trainer.model
    if job.get("attn"):
        model.set_attn_implementation(job["attn"])
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
    collator = getattr(trainer.data_collator, "collator", trainer.data_collator)  # inside the TokenCounter
    packed = dict(collator([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]))
    source = "trainer collator"
    if "attention_mask" in packed or packed["input_ids"].shape[0] != 1:
        packed = trl_padding_free(rows, trainer.processing_class.pad_token_id, job["backend"] == "unsloth")
        source = "TRL padding-free collator" + (" + packed_seq_lengths" if job["backend"] == "unsloth" else "")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    compute = "bfloat16" if torch.cuda.is_available() else "float32"  # what load_for_training picks (dtype auto)
    model.train()  # the mode the trainer runs in (LoRA dropout is 0)
    losses = row_losses(model, rows, packed, device)
    return {"check": verdict(losses["alone"], losses["packed"], losses["leaky"], compute),
            "backend": info["backend"], "attn_implementation": attn, "batch_keys": sorted(packed),
            "batch_source": source, "row_lengths": [len(r["input_ids"]) for r in rows], "compute_dtype": compute,
            "card": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "trainer_padding_free": info.get("padding_free")}
