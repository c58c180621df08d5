"""What the user sees while training: one progress bar with loss and tokens/s, eval lines, and the log file.

Tokens are counted where the batches are made (`TokenCounter` wraps the trainer's collator), so tokens/s is
exact: `trained` counts label tokens (what the loss sees), `tokens` counts every non-pad input token.
"""
from __future__ import annotations

import json
import math
import time

from transformers import TrainerCallback

from trainer.distributed import world_size
from trainer.runs import RunLog
from trainer.template import IGNORE


class TokenCounter:
    """A collator wrapper that counts trained and input tokens of every batch it builds."""

    def __init__(self, collator):
        self.collator = collator
        self.trained = 0
        self.tokens = 0

    def __call__(self, examples):
        batch = self.collator(examples)
        counts = batch_counts(batch)
        self.trained += counts["trained"]
        self.tokens += counts["tokens"]
        return batch


def batch_counts(batch: dict) -> dict[str, int]:
    """Real (non-pad) tokens, trained tokens, positions, squared row lengths and rows of one batch: padded
    (attention mask), padding-free (position ids restart at 0 per row) or packed (`packed_seq_lengths`).
    The benchmarks count with this too (`bench.measure`), so their figures and `train.log`'s agree."""
    ids, labels = batch["input_ids"], batch.get("labels")
    mask, positions = batch.get("attention_mask"), batch.get("position_ids")
    if mask is not None and mask.dim() == 2:
        lengths = [int(x) for x in mask.sum(-1).tolist()]
    elif batch.get("packed_seq_lengths") is not None:
        lengths = [int(x) for x in batch["packed_seq_lengths"].tolist()]
    elif positions is not None:
        lengths = segment_lengths(positions)
    else:
        lengths = [int(ids.shape[-1])] * int(ids.shape[0])
    # the first label of a row has no position to predict it
    trained = int((labels[..., 1:] != IGNORE).sum()) if labels is not None else 0
    return {"tokens": sum(lengths), "trained": trained, "positions": int(ids.numel()),
            "sum_sq": sum(n * n for n in lengths), "rows": len(lengths), "micro_batches": 1}


def segment_lengths(position_ids) -> list[int]:
    """Row lengths of flattened batches, where position ids restart at 0 for every row."""
    lengths = []
    for row in position_ids:
        starts = (row == 0).nonzero().flatten().tolist() + [len(row)]
        lengths += [end - start for start, end in zip(starts, starts[1:]) if end > start]
    return lengths


class ProgressBar(TrainerCallback):
    """Replaces transformers' progress output: a tqdm bar with loss, learning rate and tokens/s."""

    def __init__(self, counter: TokenCounter, log: RunLog):
        self.counter, self.log = counter, log
        self.bar = None
        self.start = 0.0
        self.in_training = False

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                            dynamic_ncols=True)
        self.start = time.perf_counter()
        self.in_training = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        if "loss" in logs and self.in_training:
            scale = world_size()  # each process counts its own batches; they are alike on average
            logs["trained_tokens_per_s"] = round(scale * self.counter.trained / elapsed, 1)
            logs["tokens_per_s"] = round(scale * self.counter.tokens / elapsed, 1)
            logs["elapsed_s"] = round(elapsed, 3)  # with the rates above: tokens between any two log lines
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0):.2e}",
                                     tok_s=f"{logs['tokens_per_s']:.0f}", refresh=False)
        self.log.record(json.dumps({"step": state.global_step, **_finite(logs)}))
        if "eval_loss" in logs:
            self._write(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}")
        if logs.get("loss") is not None and not math.isfinite(logs["loss"]):
            self._write(f"step {state.global_step}: loss is {logs['loss']}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.in_training = False

    def _write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)
        self.log.record(text)


def _finite(logs: dict) -> dict:
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in logs.items()}
