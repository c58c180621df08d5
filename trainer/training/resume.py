"""What a checkpoint carries beyond the Trainer's own state, so that a resumed run behaves and reports like one run.

- `totals.json` in each checkpoint: tokens and seconds trained so far (metrics.json then covers the whole run),
  and the learning rate and step settings the checkpoint was trained with;
- a resume may change train.learning_rate (the optimizer's and scheduler's rates are rescaled after the Trainer
  restores them), train.max_steps and train.epochs;
- resuming from the final checkpoint finishes the run without training a step past the end;
- after a NaN, checkpoints written from the bad update on are set aside and the newest kept one is checked finite.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from trainer.config import Recipe
from trainer.training.distributed import is_main, sum_over_processes
from trainer.runs import write_json

TOTALS = "totals.json"
SET_ASIDE = "nonfinite-"
"""Prefix of a checkpoint folder set aside after a NaN: outside `checkpoint-*`, so neither a resume nor the
Trainer's rotation uses it, but kept for inspection."""


@dataclass(frozen=True)
class Totals:
    """Counted before this process started: zero for a fresh run."""

    trained: int = 0
    tokens: int = 0
    seconds: float = 0.0
    learning_rate: float | None = None
    epochs: float | None = None
    max_steps: int | None = None


def read_totals(checkpoint: str | Path | None) -> Totals:
    if checkpoint is None:
        return Totals()
    try:
        raw = json.loads((Path(checkpoint) / TOTALS).read_text(encoding="utf-8"))
        return Totals(**{k: raw[k] for k in Totals.__dataclass_fields__ if k in raw})
    except (OSError, ValueError, TypeError):
        return Totals()  # a checkpoint from before this file existed: the counts start at this process


def read_state(checkpoint: str | Path) -> dict:
    return json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))


def already_finished(recipe: Recipe, checkpoint: str | Path) -> bool:
    """Whether `checkpoint` is the run's last step, with the step settings unchanged (nothing left to train)."""
    state, before = read_state(checkpoint), read_totals(checkpoint)
    t = recipe.train
    target = t.max_steps if t.max_steps else (
        state.get("max_steps") if (before.epochs, before.max_steps) == (t.epochs, None) else None)
    return bool(target) and state.get("global_step", 0) >= target


class BatchLedger:
    """Wraps the training collator (a TokenCounter) and remembers each training batch's counts.

    The data loader builds one batch ahead of the step that uses it, so the counter's running total is a batch
    ahead at a checkpoint (and at the end); `consumed(steps)` counts only the batches those steps trained on."""

    def __init__(self, counter, accumulation: int):
        self.counter, self.accumulation = counter, accumulation
        self.batches: list[tuple[int, int]] = []

    def __call__(self, examples):
        trained, tokens = self.counter.trained, self.counter.tokens
        batch = self.counter(examples)
        self.batches.append((self.counter.trained - trained, self.counter.tokens - tokens))
        return batch

    def consumed(self, steps: int) -> tuple[int, int]:
        """Trained and input tokens of this process's first `steps` optimizer steps since it started."""
        used = self.batches[:max(steps, 0) * self.accumulation]
        return sum(b[0] for b in used), sum(b[1] for b in used)


def count_training_batches_only(trainer, ledger: BatchLedger) -> None:
    """Evaluation batches go through the plain collator, so they neither count as trained tokens nor as steps."""
    trainer.data_collator = ledger
    original = trainer.get_eval_dataloader

    def eval_loader(*args, **kwargs):
        trainer.data_collator = ledger.counter.collator
        try:
            return original(*args, **kwargs)
        finally:
            trainer.data_collator = ledger

    trainer.get_eval_dataloader = eval_loader


class Continuity(TrainerCallback):
    """Keeps a resumed run one run: new learning rate applied, TRL's token count continued, totals saved."""

    def __init__(self, trainer, recipe: Recipe, ledger: BatchLedger, before: Totals, clock, on_first_step=None):
        self.trainer, self.recipe, self.ledger, self.before, self.clock = trainer, recipe, ledger, before, clock
        self.on_first_step = on_first_step
        self.first_step = 0

    def totals(self, global_step: int) -> tuple[int, int]:
        """Trained and input tokens of the whole run up to `global_step`, over all processes (call on each)."""
        trained, tokens = sum_over_processes(*self.ledger.consumed(global_step - self.first_step))
        return int(trained) + self.before.trained, int(tokens) + self.before.tokens

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        self.first_step = state.global_step
        old = self.before.learning_rate
        if old and optimizer is not None and not math.isclose(old, self.recipe.train.learning_rate):
            rescale_learning_rate(optimizer, lr_scheduler, self.recipe.train.learning_rate / old)
        if state.global_step and optimizer is not None:
            follow_schedule(optimizer, lr_scheduler)
        seen = [h["num_tokens"] for h in state.log_history if "num_tokens" in h]
        if seen and hasattr(self.trainer, "_total_train_tokens"):
            self.trainer._total_train_tokens = int(seen[-1])  # TRL restarts it at 0 on every train()

    def on_step_end(self, args, state, control, **kwargs):
        if self.on_first_step is not None:
            self.on_first_step()
            self.on_first_step = None

    def on_save(self, args, state, control, **kwargs):
        trained, tokens = self.totals(state.global_step)  # every process calls this: it sums over them
        if not is_main():
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            write_json(folder / TOTALS, {
                "trained": trained, "tokens": tokens,
                "seconds": round(self.clock() + self.before.seconds, 3),
                "learning_rate": self.recipe.train.learning_rate, "epochs": self.recipe.train.epochs,
                "max_steps": self.recipe.train.max_steps})


def rescale_learning_rate(optimizer, lr_scheduler, ratio: float) -> None:
    """Multiply every parameter group's rate (LoRA+ groups keep their ratios) after the Trainer restored the
    checkpoint's: the scheduler's base rates, and the current and initial rate of each group."""
    for group in optimizer.param_groups:
        for key in ("lr", "initial_lr"):
            if key in group:
                group[key] = group[key] * ratio
    if lr_scheduler is not None and hasattr(lr_scheduler, "base_lrs"):
        lr_scheduler.base_lrs = [lr * ratio for lr in lr_scheduler.base_lrs]
        if getattr(lr_scheduler, "_last_lr", None):
            lr_scheduler._last_lr = [lr * ratio for lr in lr_scheduler._last_lr]


def follow_schedule(optimizer, lr_scheduler) -> None:
    """Set each group's current rate from this run's schedule at the restored step. The checkpoint holds the rate
    of the old schedule (0 at the end of a cosine), which would be used for the first resumed step when
    train.max_steps or epochs grew."""
    lambdas = getattr(lr_scheduler, "lr_lambdas", None)
    if not lambdas or len(lambdas) != len(optimizer.param_groups):
        return
    step = lr_scheduler.last_epoch
    rates = [base * fn(step) for base, fn in zip(lr_scheduler.base_lrs, lambdas)]
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    lr_scheduler._last_lr = rates


def finish_from_checkpoint(trainer, checkpoint: str) -> None:
    """Load the final checkpoint's weights and state into `trainer` without running a step."""
    from transformers import TrainerState

    trainer._load_from_checkpoint(checkpoint)
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))


def cpu_checkpoint_loading(trainer) -> None:
    """Several CPU processes: the Trainer loads the optimizer state onto `args.device` (`cpu:0`), a location
    torch.load cannot restore to; map it to the plain CPU for that call."""
    import torch

    original = trainer._load_optimizer_and_scheduler

    def load(checkpoint):
        real_load = torch.load

        def cpu_load(*args, **kwargs):
            if str(kwargs.get("map_location", "")).startswith("cpu"):
                kwargs["map_location"] = "cpu"
            return real_load(*args, **kwargs)

        torch.load = cpu_load
        try:
            return original(checkpoint)
        finally:
            torch.load = real_load

    trainer._load_optimizer_and_scheduler = load


def train_loss_mean(history: list[dict]) -> float | None:
    """Mean training loss over every step of the run, resumed parts included: each logged loss is the mean
    over the steps since the previous one, so it counts for that many steps."""
    total, steps, last = 0.0, 0, 0
    for entry in history:
        if "loss" in entry and "step" in entry:
            span = max(entry["step"] - last, 1)
            total, steps, last = total + entry["loss"] * span, steps + span, entry["step"]
    return total / steps if steps else None


def set_aside_bad(run_dir: Path, bad_from_step: int) -> list[Path]:
    """After a non-finite loss or gradient at step S: the weights saved at step S-1 produced it, so checkpoints
    from S-1 on are renamed out of the way, and then any newer one whose weights are not finite. Returns them."""
    from trainer.runs import latest_checkpoint

    folder = Path(run_dir) / "checkpoints"
    moved = []
    for path in sorted(folder.glob("checkpoint-*")):
        if path.name.split("-")[-1].isdigit() and int(path.name.split("-")[-1]) >= bad_from_step:
            moved.append(_set_aside(path))
    while (newest := latest_checkpoint(run_dir)) is not None and not weights_finite(newest):
        moved.append(_set_aside(newest))
    return moved


def _set_aside(path: Path) -> Path:
    target = path.with_name(SET_ASIDE + path.name)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    path.rename(target)
    return target


def weights_finite(checkpoint: Path) -> bool:
    """Every tensor in the checkpoint's safetensors files is finite (no file: nothing to object to)."""
    import torch
    from safetensors import safe_open

    for file in Path(checkpoint).glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    return False
    return True
