"""What the user sees while training: one progress bar with loss and tokens/s, eval lines, and the log file.

Tokens are counted where the batches are made (`TokenCounter` wraps the trainer's collator), so tokens/s is
exact: `trained` counts label tokens (what the loss sees), `tokens` counts every non-pad input token.

The same numbers go to `progress.json` in the run folder (`Progress.snapshot`, written atomically), which the
web UI and any other tool read: state, step of total, loss, tokens/s, elapsed and estimated time left.
"""
from __future__ import annotations

import json
import math
import time

from transformers import TrainerCallback

from trainer.training.distributed import world_size
from trainer.runs import RunFolder, RunLog, write_json
from trainer.data.template import IGNORE


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



PROGRESS_EVERY_S = 1.0
"""Write progress.json at most this often between log lines (each write is a small atomic file)."""


def write_progress(run: RunFolder, **fields) -> None:
    """Update the run's progress file: the fields given replace those of the last snapshot."""
    snapshot = {**run.read_progress(), **fields, "updated": round(time.time(), 3)}
    write_json(run.progress, snapshot)


class Progress:
    """The live numbers of one training process: what the terminal bar shows and progress.json holds."""

    def __init__(self, counter: TokenCounter, run: RunFolder | None):
        self.counter, self.run = counter, run
        self.start = time.perf_counter()
        self.first_step = 0
        self.fields: dict = {}
        self.written = 0.0

    def begin(self, trainer_state) -> None:
        self.start, self.first_step = time.perf_counter(), trainer_state.global_step
        self.update(trainer_state, state="training", force=True)

    def update(self, trainer_state, force: bool = False, **fields) -> dict:
        """`fields` (loss, tokens/s, the `state` word, ...) are kept until replaced; step, total and times are
        read from the trainer's state."""
        step, total = trainer_state.global_step, trainer_state.max_steps
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        done = step - self.first_step
        left = max(total - step, 0)
        self.fields.update(fields)
        self.fields.update(step=step, total=total, epoch=trainer_state.epoch,
                           elapsed_s=round(elapsed, 1),
                           eta_s=round(elapsed / done * left, 1) if done else None)
        now = time.perf_counter()
        if self.run is not None and (force or now - self.written >= PROGRESS_EVERY_S):
            write_progress(self.run, **self.fields)
            self.written = now
        return self.fields


class ProgressBar(TrainerCallback):
    """Replaces transformers' progress output: a tqdm bar with loss, learning rate and tokens/s, and the
    same numbers in the run folder's progress.json (rank 0 only)."""

    def __init__(self, counter: TokenCounter, log: RunLog, run: RunFolder | None = None):
        self.counter, self.log = counter, log
        self.progress = Progress(counter, run)
        self.bar = None
        self.start = 0.0
        self.in_training = False

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                            dynamic_ncols=True)
        else:
            self.progress.run = None
        self.start = time.perf_counter()
        self.in_training = True
        self.progress.begin(state)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
        self.progress.update(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        if "loss" in logs and self.in_training:
            scale = world_size()  # each process counts its own batches; they are alike on average
            logs["trained_tokens_per_s"] = round(scale * self.counter.trained / elapsed, 1)
            logs["tokens_per_s"] = round(scale * self.counter.tokens / elapsed, 1)
            logs["elapsed_s"] = round(elapsed, 3)  # with the rates above: tokens between any two log lines
            shown = self.progress.update(state, force=True, **_finite({k: logs[k] for k in LIVE_KEYS if k in logs}))
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{shown['loss']:.4f}", lr=f"{shown.get('learning_rate') or 0:.2e}",
                                     tok_s=f"{shown['tokens_per_s']:.0f}", refresh=False)
        self.log.record(json.dumps({"step": state.global_step, **_finite(logs)}))
        if "eval_loss" in logs:
            self.progress.update(state, force=True, eval_loss=logs["eval_loss"])
            self._write(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}")
        if logs.get("loss") is not None and not math.isfinite(logs["loss"]):
            self._write(f"step {state.global_step}: loss is {logs['loss']}")

    def on_train_end(self, args, state, control, **kwargs):
        self.progress.update(state, force=True, state="saving")
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


LIVE_KEYS = ("loss", "learning_rate", "grad_norm", "tokens_per_s", "trained_tokens_per_s")


def _finite(logs: dict) -> dict:
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in logs.items()}
