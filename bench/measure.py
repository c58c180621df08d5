"""Counting, timing and the figures derived from them: tokens/s, peak memory, MFU, and the printed table.

Tokens are counted by the trainer's own `trainer.training.progress.batch_counts`, on the batches the trainer actually
feeds to the model (a wrapper around `trainer.training_step`), per optimizer step, so warm-up steps are excluded
exactly and a dataloader that prefetches cannot skew the count. Time is taken at `on_step_end` after
`torch.cuda.synchronize()`.

MFU (model FLOPs utilisation), written into every output:
    FLOPs = c * N * T + 12 * n_layers * hidden * sum(L_i ** 2)
    MFU   = FLOPs / (timed seconds * peak dense bf16 FLOP/s of the card)
N = weights that multiply every token (decoder linears + LM head; `bench.shapes.matmul_params`), T = real (non-pad)
input tokens, L_i = the real length of each row (a packed sequence counts as its rows), c = 6 (the usual
convention: forward 2N, backward 4N) or 4 (LoRA-honest: frozen base weights need no weight gradients, so
backward is 2N). The attention term is PaLM's (non-causal; causal kernels do about half). Recomputation by
gradient checkpointing is not counted (that would be HFU). Peak: H100 SXM / H200 dense bf16 989.4 TFLOP/s.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

MFU_FORMULA = ("FLOPs = c*N*T + 12*n_layers*hidden*sum(L_i^2); MFU = FLOPs / (seconds * peak); N = matmul weights "
               "(decoder linears + LM head), T = non-pad input tokens, L_i = real row lengths; c = 6 (mfu_6n) or "
               "4 (mfu_4n, LoRA-honest: no weight gradients for the frozen base); checkpoint recompute not counted")
PEAK_BF16_DENSE = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989.4e12), ("H200", 989.4e12),
                   ("H800", 989.4e12), ("GH200", 989.4e12), ("A100", 312e12))
"""Datasheet dense (no sparsity) bf16 tensor-core peaks, matched in order against the card's name."""


def peak_flops(card: str | None) -> float | None:
    for key, value in PEAK_BF16_DENSE:
        if card and key in card:
            return value
    return None


def make_meter(warmup: int, steps: int, cuda: bool):
    """A trainer callback that times steps warmup+1 .. warmup+steps and counts their tokens (see `attach`)."""
    from transformers import TrainerCallback  # here, not at import: unsloth must come before transformers

    from trainer.training.progress import batch_counts  # the trainer's own count, so bench and train.log agree

    class Meter(TrainerCallback):
        def __init__(self):
            self.per_step: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            self.marks: dict[str, float] = {}
            self.peak_timed = None
            self.peak_before = 0
            self.trainer = None

        def attach(self, trainer) -> None:
            original = trainer.training_step

            def training_step(model, inputs, *args, **kwargs):
                counts = self.per_step[trainer.state.global_step + 1]
                for key, value in batch_counts(inputs).items():
                    counts[key] += value
                return original(model, inputs, *args, **kwargs)

            trainer.training_step = training_step
            trainer.add_callback(self)
            self.trainer = trainer

        def _mark(self, name: str) -> None:
            if cuda:
                import torch

                torch.cuda.synchronize()
            self.marks[name] = time.perf_counter()

        def on_train_begin(self, args, state, control, **kwargs):
            self._mark("begin")
            if warmup == 0:
                self._start()

        def _start(self):
            self._mark("start")
            if cuda:
                import torch

                self.peak_before = torch.cuda.max_memory_allocated()  # load + warm-up
                torch.cuda.reset_peak_memory_stats()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup and warmup > 0:
                self._start()
            if state.global_step == warmup + steps:
                self._mark("end")
                if cuda:
                    import torch

                    self.peak_timed = torch.cuda.max_memory_allocated()

        def result(self) -> dict[str, Any]:
            timed = [self.per_step[s] for s in range(warmup + 1, warmup + steps + 1)]
            totals = {key: sum(c.get(key, 0) for c in timed) for key in
                      ("tokens", "trained", "positions", "sum_sq", "rows", "micro_batches")}
            history = self.trainer.state.log_history if self.trainer else []
            losses = [h["loss"] for h in history if "loss" in h]
            out = {**totals, "steps_timed": steps, "warmup_steps": warmup,
                   "steps_done": self.trainer.state.global_step if self.trainer else None,
                   "seconds": self.marks["end"] - self.marks["start"] if "end" in self.marks else None,
                   "warmup_seconds": self.marks.get("start", 0) - self.marks.get("begin", 0),
                   "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
                   "per_step_tokens": [c.get("tokens", 0) for c in timed]}
            if cuda:
                import torch

                whole = max(self.peak_before, torch.cuda.max_memory_allocated())
                out["peak_gib"] = round(whole / 2**30, 3)  # the whole process: load, warm-up, timed steps
                out["peak_timed_gib"] = round((self.peak_timed or 0) / 2**30, 3)  # timed steps only
                out["reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
            return out

    return Meter()


def derive(result: dict[str, Any], facts: dict[str, Any], peak: float | None) -> dict[str, Any]:
    """tokens/s, trained tokens/s, padding share and both MFU figures of one finished variant."""
    seconds = result.get("seconds")
    if not seconds:
        return {}
    out = {"tokens_per_s": round(result["tokens"] / seconds, 1),
           "trained_tokens_per_s": round(result["trained"] / seconds, 1),
           "step_s": round(seconds / result["steps_timed"], 3),
           "pad_share": round(1 - result["tokens"] / max(result["positions"], 1), 3)}
    attention = 12 * facts["n_layers"] * facts["hidden"] * result["sum_sq"]
    for name, c in (("mfu_6n", 6), ("mfu_4n", 4)):
        flops = c * facts["matmul_params"] * result["tokens"] + attention
        out[name] = round(flops / (seconds * peak), 4) if peak else None
    return out


def versions() -> dict[str, str]:
    import importlib.metadata
    import platform

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "unsloth", "unsloth_zoo",
                 "bitsandbytes", "xformers", "flash_attn", "deepspeed"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per shape and variant."""
    head = ("| shape | variant | tok/s | trained tok/s | step s | peak GiB train/all | MFU 6N | MFU 4N | pad "
            "| trained/step | what |")
    lines = [head, "|" + "---|" * 11]
    for r in results:
        d = r.get("derived") or {}
        if r.get("error") or not d:
            why = (r.get("error") or "no timing").splitlines()[0][:80]
            lines.append(f"| {r['shape']} | {r['variant']} | - | - | - | - | - | - | - | - | failed: {why} |")
            continue
        res = r["result"]
        mfu = {k: f"{100 * d[k]:.1f}%" if d.get(k) is not None else "-" for k in ("mfu_6n", "mfu_4n")}
        peak = f"{res['peak_timed_gib']:.2f}/{res['peak_gib']:.2f}" if res.get("peak_gib") is not None else "-"
        lines.append(f"| {r['shape']} | {r['variant']} | {d['tokens_per_s']:,.0f} | {d['trained_tokens_per_s']:,.0f} "
                     f"| {d['step_s']:.2f} | {peak} | {mfu['mfu_6n']} | {mfu['mfu_4n']} | {100 * d['pad_share']:.0f}% "
                     f"| {res['trained'] // max(res['steps_timed'], 1):,} | {r.get('summary', '')} |")
    return "\n".join(lines)
