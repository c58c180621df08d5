"""Train with TRL's SFTTrainer on examples that `trainer.data.dataset` already rendered and masked.

The same trainer set-up serves both engines (Unsloth and transformers + PEFT); this module only turns the
recipe into `SFTConfig`, wires the progress and token counting, and writes the run folder's artifacts.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

from trainer.training import resume
from trainer.config import Recipe
from trainer.data.dataset import Prepared
from trainer.training.distributed import is_main, launched, wait_for_everyone, world_size
from trainer.errors import UserError
from trainer.hardware import Hardware
from trainer.model import Loaded, lora_scale, trainable_summary
from trainer.modelcard import write_model_card
from trainer.training.plots import plot_loss
from trainer.training.progress import ProgressBar, TokenCounter
from trainer.runs import RunFolder, RunLog, latest_checkpoint, write_json
from trainer.data.template import Encoded


def train(recipe: Recipe, loaded: Loaded, prepared: Prepared, hardware: Hardware, run_dir: Path,
          log: RunLog, resume_from: str | None = None, on_first_step=None, planned_peak_gib: float | None = None) -> dict:
    """Run the optimisation, evaluate, save weights, tokenizer, state, metrics and the loss curve.

    A resumed run counts as one run: its metrics cover the steps, tokens and time before the interruption too."""
    log.say(f"{loaded.backend}: {trainable_summary(loaded.model)}")
    trainer, counter = build_trainer(recipe, loaded, prepared, hardware, run_dir, log)
    guard, stopper = NonFiniteGuard(), StopOnSignal()
    trainer.add_callback(guard)
    trainer.add_callback(stopper)
    before = resume.read_totals(resume_from)
    started = time.perf_counter()
    ledger = resume.BatchLedger(counter, recipe.train.gradient_accumulation)
    resume.count_training_batches_only(trainer, ledger)
    continuity = resume.Continuity(trainer, recipe, ledger, before, lambda: time.perf_counter() - started,
                                   on_first_step)
    trainer.add_callback(continuity)
    if not hardware.cuda and launched():
        resume.cpu_checkpoint_loading(trainer)
    try:
        if resume_from and resume.already_finished(recipe, resume_from):
            log.say(f"{resume_from} is the last step: finishing the run without training")
            resume.finish_from_checkpoint(trainer, resume_from)
        else:
            trainer.train(resume_from_checkpoint=resume_from)
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch here
            raise out_of_memory(recipe) from None
        raise
    guard.raise_if_tripped(run_dir)
    stopper.raise_if_stopped(run_dir, recipe.name)
    elapsed = time.perf_counter() - started + before.seconds
    counts = continuity.totals(trainer.state.global_step)
    final_eval = final_evaluation(trainer) if prepared.eval else {}
    save_weights(trainer, loaded, run_dir)
    metrics = summarize(trainer.state, final_eval, counts, elapsed, loaded, hardware)
    metrics["engine"] = engine_of(trainer)
    if recipe.train.method == "lora":
        metrics["lora_scale"] = lora_scale(loaded.model)  # what the merge multiplies B @ A by
    metrics["examples"] = {"train": len(prepared.train), "eval": len(prepared.eval)}
    if planned_peak_gib is not None:  # every real run checks the planner (trainer/plan.py)
        metrics["planned_peak_gib"] = round(planned_peak_gib, 3)
    if is_main():
        run = RunFolder(run_dir)
        trainer.state.save_to_json(str(run.trainer_state))
        write_json(run.metrics, metrics)
        plot_loss(trainer.state.log_history, run.loss_curve, f"{recipe.name}: {recipe.model.base}")
        write_model_card(run_dir, recipe)  # replaces PEFT's template README
        remove_if_empty(run.checkpoints)
    return metrics


def remove_if_empty(folder: Path) -> None:
    """The Trainer makes its output folder even when no checkpoint is saved; an empty folder only misleads."""
    try:
        folder.rmdir()
    except OSError:  # missing, or it holds checkpoints
        pass


class NonFiniteGuard(TrainerCallback):
    """Stops at the first NaN or infinite loss or gradient norm, before that step can be checkpointed."""

    def __init__(self):
        self.step: int | None = None
        self.what = ""
        self.span = 1

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, float) and not math.isfinite(value) and self.step is None:
                self.step, self.what = state.global_step, f"{key} is {value}"
                self.span = max(args.logging_steps, 1)  # a logged loss is the mean since the previous log
        if self.step is not None:
            control.should_training_stop = True
            control.should_save = False

    def raise_if_tripped(self, run_dir: Path) -> None:
        if self.step is None:
            return
        wait_for_everyone()
        # a non-finite loss logged at step S (a mean over the last `span` steps) may come from the weights saved
        # after step S-span; a non-finite gradient at S only spoils update S, which the guard kept from being saved
        bad_from = self.step - self.span if self.what.startswith("loss") else self.step
        moved = resume.set_aside_bad(run_dir, bad_from) if is_main() else []
        wait_for_everyone()
        checkpoint = latest_checkpoint(run_dir)
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no good checkpoint was saved"
        if moved:
            kept += f" ({', '.join(p.name for p in moved)} set aside: saved from the update that went wrong)"
        raise UserError(f"training stopped at step {self.step}: {self.what}; {kept}", where=str(run_dir),
                        fix="check the data, then continue from the checkpoint with a lower rate, e.g. RESUME=1 "
                            "ARGS=\"train.learning_rate=1e-4\", or train again with a longer train.warmup_ratio")


class Stopped(UserError):
    """Training was asked to stop (SIGTERM, Ctrl-C, the web UI's Stop) and left a checkpoint to resume from."""


class StopOnSignal(TrainerCallback):
    """SIGTERM or SIGINT ends training after the current step, with a checkpoint, so the run can be resumed.

    A second signal stops at once (KeyboardInterrupt), leaving the last regular checkpoint, if any. The handlers
    are only in place while the steps run: before that there is nothing to save, after it the weights are being
    written and a stop would only leave half of them.
    """

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self):
        self.requested: str | None = None
        self.step: int | None = None
        self.previous: dict = {}

    def on_train_begin(self, args, state, control, **kwargs):
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers (a trainer driven from a worker thread keeps defaults)
        for name in self.SIGNALS:
            self.previous[name] = signal.signal(getattr(signal, name), self._handle)

    def _handle(self, signum, frame) -> None:
        import signal

        if self.requested:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            self.step = state.global_step
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        import signal

        for name, handler in self.previous.items():
            signal.signal(getattr(signal, name), handler)
        self.previous.clear()

    def raise_if_stopped(self, run_dir: Path, recipe_name: str) -> None:
        if self.requested is None:
            return
        checkpoint = latest_checkpoint(run_dir)
        kept = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint (stopped before the first step ended)"
        raise Stopped(f"training stopped by {self.requested} at step {self.step}; kept {kept}", where=str(run_dir),
                      fix=f"continue it with `make train RECIPE={recipe_name} RESUME=1` (same overrides) or the web "
                          "UI's Resume")


def out_of_memory(recipe: Recipe) -> UserError:
    """One message with the knobs of this recipe that cut GPU memory, instead of a CUDA traceback."""
    t, m = recipe.train, recipe.model
    knobs = [f"train.batch_size={max(1, t.batch_size // 2)} train.gradient_accumulation="
             f"{t.gradient_accumulation * 2} (same effective batch)" if t.batch_size > 1 else None,
             f"model.max_seq_length={m.max_seq_length // 2}" if m.max_seq_length > 512 else None,
             "model.quantization=4bit" if m.quantization != "4bit" and t.method == "lora" else None,
             "train.gradient_checkpointing=true" if not t.gradient_checkpointing else None,
             "train.planner=true (fit the settings to the card)" if not recipe.train.planner else None]
    return UserError(f"CUDA ran out of memory (profile {recipe.profile}, batch {t.batch_size}, "
                     f"max_seq_length {m.max_seq_length}, {m.quantization})", where="train",
                     fix="try " + "; or ".join(k for k in knobs if k))


def final_evaluation(trainer) -> dict:
    """Eval metrics at the last step: reused when the schedule just evaluated there, computed otherwise."""
    last = trainer.state.log_history[-2:] if len(trainer.state.log_history) > 1 else []
    done = [h for h in last if "eval_loss" in h and h.get("step") == trainer.state.global_step]
    if done and not trainer.args.load_best_model_at_end:
        return done[-1]
    return trainer.evaluate()


def build_trainer(recipe: Recipe, loaded: Loaded, prepared: Prepared, hardware: Hardware, run_dir: Path,
                  log: RunLog):
    from datasets import Dataset
    from transformers import EarlyStoppingCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import SFTTrainer

    has_eval = bool(prepared.eval)
    args = sft_config(recipe, hardware, loaded.backend, run_dir, has_eval)
    if hardware.cuda and not launched():
        _ = args.device  # sets the GPU count, which the next line overrides
        args._n_gpu = 1  # one process trains on one GPU: several GPUs go through GPUS=N (DDP), never DataParallel
    callbacks = []
    if recipe.train.early_stopping_patience and has_eval:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.train.early_stopping_patience))
    with packing_warnings_checked(loaded.model), dataset_bars_hidden():
        trainer = SFTTrainer(
            model=loaded.model, args=args, processing_class=loaded.tokenizer,
            train_dataset=_dataset(Dataset, prepared.train),
            eval_dataset=_dataset(Dataset, prepared.eval) if has_eval else None,
            callbacks=callbacks, optimizers=(make_optimizer(recipe, loaded.model), None))
    counter = TokenCounter(trainer.data_collator)
    trainer.data_collator = counter  # counting happens where batches are built; see trainer.training.progress
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ProgressBar(counter, log, RunFolder(run_dir) if is_main() else None))
    return trainer, counter


@contextmanager
def dataset_bars_hidden():
    """TRL runs `datasets.map` over our already encoded rows ("Truncating", "Dropping fully masked examples"):
    four progress bars of a step that takes a second and changes nothing. Hub dataset downloads keep theirs."""
    from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_on = not are_progress_bars_disabled()
    if was_on:
        disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            enable_progress_bars()


PACKING_CHECKED_ATTENTION = ("sdpa", "eager")
"""Attention implementations for which packed rows were shown not to see each other (`python -m bench
packing-check`: tests/bench/test_bench.py on the CPU, Unsloth and transformers on the H100)."""
TRL_PACKING_WARNING = "not set to a supported Flash Attention variant"


@contextmanager
def packing_warnings_checked(model):
    """Silence TRL's packing and padding-free warnings where we measured them to be false alarms.

    TRL warns that packed rows may attend to each other unless attention is a flash kernel. In transformers 5,
    SDPA and eager attention build a block-diagonal mask from the position ids that restart with each row, so
    the warning only alarms users; for any other implementation it stays.
    """
    attention = getattr(model.config, "_attn_implementation", None)
    sft_logger = logging.getLogger("trl.trainer.sft_trainer")
    drop = _MessageFilter(TRL_PACKING_WARNING)
    if attention in PACKING_CHECKED_ATTENTION:
        sft_logger.addFilter(drop)
    try:
        yield
    finally:
        sft_logger.removeFilter(drop)


class _MessageFilter(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def sft_config(recipe: Recipe, hardware: Hardware, backend: str, run_dir: Path, has_eval: bool):
    from trl import SFTConfig

    t = recipe.train
    evaluate_during = has_eval and t.eval_steps is not None
    early = bool(t.early_stopping_patience) and evaluate_during
    save_steps = t.eval_steps if early else t.checkpoint_steps
    if t.tensorboard:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    precision = _precision(recipe, hardware)
    return SFTConfig(
        output_dir=str(RunFolder(run_dir).checkpoints),
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        num_train_epochs=t.epochs, max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        optim=_optimizer_name(t.optimizer, hardware),
        seed=t.seed, data_seed=t.seed,
        logging_steps=t.logging_steps, logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN must reach NonFiniteGuard, not be averaged away
        eval_strategy="steps" if evaluate_during else "no", eval_steps=t.eval_steps if evaluate_during else None,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps,
        save_total_limit=t.keep_checkpoints, save_only_model=False,
        load_best_model_at_end=early, metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        report_to=["tensorboard"] if t.tensorboard else "none",
        bf16=precision == "bf16", fp16=precision == "fp16",
        # Unsloth applies its own (offloaded) checkpointing inside the model; asking the Trainer too would
        # checkpoint twice.
        gradient_checkpointing=t.gradient_checkpointing and backend == "transformers",
        gradient_checkpointing_kwargs={"use_reentrant": False},
        max_length=recipe.model.max_seq_length, packing=t.packing, loss_type=_loss_type(recipe, hardware, backend),
        dataset_num_proc=None, disable_tqdm=True, use_cpu=not hardware.cuda,
        dataloader_pin_memory=hardware.cuda,
        ddp_find_unused_parameters=False,  # every trainable weight takes part in each step (multi-GPU only)
    )


def make_optimizer(recipe: Recipe, model):
    """LoRA+ needs its own optimizer (two learning rates); everything else lets the Trainer build one."""
    ratio = recipe.lora.loraplus_lr_ratio
    if ratio is None or recipe.train.method != "lora":
        return None
    import torch
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(model=model, optimizer_cls=torch.optim.AdamW,
                                     lr=recipe.train.learning_rate, loraplus_lr_ratio=ratio,
                                     weight_decay=recipe.train.weight_decay)


def save_weights(trainer, loaded: Loaded, run_dir: Path) -> Path:
    """Adapter (or full model) and tokenizer into `adapter/`, written aside and renamed when complete."""
    final = RunFolder(run_dir).adapter
    tmp = final.with_name(f".{final.name}.tmp")
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        trainer.save_model(str(tmp))  # every process takes part: the shards are gathered, rank 0 writes
    elif is_main():
        extra = {}
        if hasattr(trainer.model, "peft_config"):  # LoRA on embeddings: the vocabulary is unchanged, keep the base's
            extra["save_embedding_layers"] = False
        trainer.model.save_pretrained(str(tmp), safe_serialization=True, **extra)
    if is_main():
        loaded.tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    wait_for_everyone()
    return final


def engine_of(trainer) -> str:
    """What actually ran the steps: deepspeed, fsdp, ddp (several processes) or single."""
    if trainer.is_deepspeed_enabled:
        return "deepspeed"
    if trainer.is_fsdp_enabled:
        return "fsdp"
    return "ddp" if world_size() > 1 else "single"


def summarize(state, final_eval: dict, counts: tuple[int, int], elapsed: float,
              loaded: Loaded, hardware: Hardware) -> dict:
    """`state`: the Trainer's state (its log_history spans the resumed parts too); `counts`: trained and input
    tokens of the whole run, summed over all processes; `elapsed`: seconds of training of the whole run."""
    trained, tokens = counts
    history = state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    mean = resume.train_loss_mean(history)
    metrics = {
        "backend": loaded.backend, "device": hardware.name, "processes": world_size(),
        "steps": state.global_step, "train_runtime_s": round(elapsed, 2),
        "train_loss_mean": round(mean, 6) if mean is not None else None,
        "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "eval_loss": final_eval.get("eval_loss"),
        "eval_perplexity": _perplexity(final_eval.get("eval_loss")),
        "trained_tokens": trained, "input_tokens": tokens,
        "trained_tokens_per_s": round(trained / max(elapsed, 1e-9), 1),
        "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1),
    }
    if hardware.cuda:
        import torch

        metrics["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return metrics


def _dataset(dataset_cls, examples: list[Encoded]):
    return dataset_cls.from_dict({"input_ids": [e.input_ids for e in examples],
                                  "labels": [e.labels for e in examples]})


def _precision(recipe: Recipe, hardware: Hardware) -> str:
    if not hardware.cuda:
        return "fp32"
    from trainer.model import torch_dtype

    dtype = str(torch_dtype(recipe.model, hardware))
    return "bf16" if "bfloat16" in dtype else "fp16" if "float16" in dtype else "fp32"


def _loss_type(recipe: Recipe, hardware: Hardware, backend: str) -> str:
    """TRL's chunked loss saves memory for transformers on a GPU. Under Unsloth plain `nll` lets Unsloth's fused
    cross-entropy run, which measured faster and smaller on the H100 (bench/RESULTS.md); on a CPU the chunks'
    recomputation only costs time, and neither path handles a LoRA-wrapped lm_head."""
    if recipe.train.loss != "auto":
        return recipe.train.loss
    wraps_head = recipe.train.method == "lora" and "lm_head" in recipe.lora.target_modules
    return "chunked_nll" if hardware.cuda and backend == "transformers" and not wraps_head else "nll"


def _optimizer_name(choice: str, hardware: Hardware) -> str:
    if choice != "auto":
        return choice
    if hardware.cuda and importlib.util.find_spec("bitsandbytes") is not None:
        return "adamw_8bit"
    return "adamw_torch"


def _perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    return math.exp(loss) if loss < 700 else math.inf

