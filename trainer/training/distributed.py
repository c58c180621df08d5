"""Several processes, one per GPU: `python -m trainer train ... --gpus N` starts N copies of itself.

The parent validates the recipe, picks the strategy (DDP, FSDP, DeepSpeed ZeRO-2/3; configs in
`trainer/training/launch/`), chooses the run folder and launches through `accelerate launch`. Each copy trains its share
of every batch; only rank 0 writes the run folder. Without CUDA the copies are CPU processes joined over gloo
(`torch.distributed.run`, DDP only: accelerate sets up FSDP and DeepSpeed for GPUs alone): that checks the
distributed path (tests do), it is not a speed-up.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from trainer.config import Recipe
from trainer.errors import UserError
from trainer.hardware import Hardware

CONFIG_DIR = Path(__file__).resolve().parent / "launch"
"""The accelerate configs, one per strategy (ddp, fsdp, zero2, zero3 .yaml), and DeepSpeed's (zero2, zero3 .json)."""


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """True inside a process started by a launcher (accelerate, torchrun), even the only one of GPUS=1."""
    return "LOCAL_RANK" in os.environ


def strategy_of(recipe: Recipe) -> str:
    """The recipe's strategy; `auto` shards a full fine-tune (ZeRO-2, optimizer state on the CPU), else DDP."""
    if recipe.train.strategy != "auto":
        return recipe.train.strategy
    return "zero2" if recipe.train.method == "full" else "ddp"


def check_launch(recipe: Recipe, processes: int, hardware: Hardware, gpus_found: int) -> str:
    """The strategy to launch with, or a UserError saying why this recipe cannot run on `processes` GPUs."""
    strategy = strategy_of(recipe)
    if hardware.cuda and processes > gpus_found:
        raise UserError(f"GPUS={processes} but this machine has {gpus_found} CUDA GPU(s)", where="GPUS",
                        fix=f"use GPUS={gpus_found} or fewer")
    if not hardware.cuda and strategy != "ddp":
        # accelerate sets up FSDP and DeepSpeed only for GPUs: CPU processes would silently run plain DDP
        raise UserError(f"train.strategy={strategy} needs CUDA GPUs; CPU processes (gloo) run DDP only",
                        where="train.strategy", fix="set train.strategy=ddp, or run on GPUs")
    if strategy.startswith("zero") and importlib.util.find_spec("deepspeed") is None:
        raise UserError(f"train.strategy={strategy} needs DeepSpeed, which is not installed", where="train.strategy",
                        fix='.venv/bin/pip install -e ".[deepspeed]", or use train.strategy=ddp or fsdp')
    if strategy.startswith("zero") and recipe.train.optimizer not in ("auto", "adamw_torch"):
        raise UserError(f"train.strategy={strategy} keeps the optimizer on the CPU and uses DeepSpeed's own CPU AdamW, "
                        f"not train.optimizer={recipe.train.optimizer}", where="train.optimizer",
                        fix="set train.optimizer=auto, or train.strategy=ddp or fsdp")
    if strategy.startswith("zero") and recipe.train.method == "lora" and recipe.lora.loraplus_lr_ratio is not None:
        raise UserError(f"LoRA+ builds its own optimizer, and train.strategy={strategy} uses DeepSpeed's CPU AdamW",
                        where="lora.loraplus_lr_ratio", fix="set train.strategy=ddp, or lora.loraplus_lr_ratio=null")
    return strategy


def launch_command(strategy: str, processes: int, cuda: bool, train_argv: list[str]) -> list[str]:
    """The command (an argument list, never a shell line) that starts `processes` copies of `train_argv`."""
    if cuda:
        # The yaml names its DeepSpeed file relative to the project root; the absolute path works from anywhere.
        zero = strategy.startswith("zero")
        deepspeed = ["--deepspeed_config_file", str(CONFIG_DIR / f"{strategy}.json")] if zero else []
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(CONFIG_DIR / f"{strategy}.yaml"), *deepspeed, "--num_processes", str(processes),
                "-m", "trainer", *train_argv]
    # accelerate starts several CPU processes only through MPI; torch's own launcher needs nothing extra.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            "-m", "trainer", *train_argv]


def sharded(recipe: Recipe) -> bool:
    """FSDP or DeepSpeed: the launcher's engine places and partitions the weights, not our loading code."""
    return launched() and strategy_of(recipe) != "ddp"


def uses_unsloth(recipe: Recipe) -> bool:
    """Unsloth runs under DDP (one whole model per GPU); sharded strategies go through transformers + PEFT."""
    return not sharded(recipe)


def sum_over_processes(*values: float) -> list[float]:
    """Each value summed over all processes (unchanged in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    import torch

    device = f"cuda:{local_rank()}" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def wait_for_everyone() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
