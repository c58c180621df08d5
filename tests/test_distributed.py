"""Multi-GPU launch: the shipped accelerate configs, the command built from them, and what is refused up front."""
from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser

from trainer.cli import main
from trainer.config import check
from trainer.distributed import CONFIG_DIR, check_launch, cpu_environment, launch_command, strategy_of
from trainer.errors import UserError
from trainer.hardware import Hardware
from trainer.recipe import find_recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]
GPU = Hardware(True, "NVIDIA H100", 80.0)


def recipe(*overrides: str, name: str = "medical", hardware: Hardware = GPU):
    return load_recipe(find_recipe(name, ROOT / "recipes"), ["profile=none", *overrides], hardware)


@pytest.mark.parametrize(("strategy", "mode", "stage"), [
    ("ddp", "multi_gpu", None), ("fsdp", "use_fsdp", None), ("zero2", "use_deepspeed", 2),
    ("zero3", "use_deepspeed", 3)])
def test_each_strategy_launches_accelerate_with_its_config(strategy, mode, stage):
    command = launch_command(strategy, 4, True, ["train", "medical", "--run-dir", "/x"])
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(command[3:]))
    assert getattr(args, mode) and args.num_processes == 4
    assert args.module and args.training_script == "trainer"
    assert args.training_script_args == ["train", "medical", "--run-dir", "/x"]
    if stage:
        assert args.zero_stage == stage and args.offload_optimizer_device == "cpu"
        assert args.offload_param_device == ("cpu" if stage == 3 else "none")


def test_every_shipped_config_is_one_accelerate_reads():
    configs = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert configs == ["ddp", "fsdp", "zero2", "zero3"]
    fsdp = load_config_from_file(str(CONFIG_DIR / "fsdp.yaml"))
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # saved weights load as they are


def test_without_cuda_the_processes_are_started_by_torch():
    command = launch_command("ddp", 2, False, ["train", "news"])
    assert command[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "trainer",
                           "train", "news"]


def test_auto_strategy_shards_full_fine_tunes_and_copies_adapters():
    assert strategy_of(recipe()) == "ddp"
    assert strategy_of(recipe("train.method=full", "model.quantization=none")) == "zero2"
    assert strategy_of(recipe("train.strategy=fsdp", "model.quantization=none")) == "fsdp"


def test_sharding_a_4bit_model_is_a_recipe_error():
    problems = dict(check(recipe("train.strategy=zero2")))
    assert "train.strategy" not in problems  # ZeRO-2 shards optimizer state only: QLoRA is fine
    with pytest.raises(UserError) as error:
        recipe("train.strategy=fsdp")
    assert "train.strategy" in error.value.render() and "model.quantization=none" in error.value.render()


def test_refused_before_any_process_starts():
    with pytest.raises(UserError, match="has 1 CUDA GPU"):
        check_launch(recipe(), 2, GPU, gpus_found=1)
    cpu = Hardware(False)
    with pytest.raises(UserError, match="needs CUDA GPUs"):
        check_launch(recipe("train.strategy=zero2", "model.quantization=none", hardware=cpu), 2, cpu, 0)
    assert check_launch(recipe("model.quantization=none", hardware=cpu), 2, cpu, 0) == "ddp"
    fsdp = recipe("train.strategy=fsdp", "model.quantization=none", hardware=cpu)
    assert check_launch(fsdp, 2, cpu, 0) == "fsdp"


def test_cpu_processes_get_the_fsdp_settings_accelerate_would_give_them():
    from accelerate.utils.launch import prepare_multi_gpu_env

    assert cpu_environment("ddp") == {}
    ours = cpu_environment("fsdp")
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(
        launch_command("fsdp", 2, True, ["train"])[3:]))
    theirs = prepare_multi_gpu_env(args)
    assert ours["ACCELERATE_USE_FSDP"] == "true" and ours["FSDP_VERSION"] == "2"
    assert {k: theirs[k] for k in ours} == ours


def test_cli_reports_a_strategy_the_machine_cannot_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("trainer.hardware.detect", lambda: Hardware(False))
    code = main(["train", "news", "profile=cpu", "train.strategy=zero3", "model.quantization=none",
                 f"train.output_dir={tmp_path}", "--gpus", "2"])
    assert code == 2 and "train.strategy=zero3 (DeepSpeed) needs CUDA GPUs" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_process_of_a_foreign_launch_is_told_how_to_start(monkeypatch):
    monkeypatch.setattr("trainer.cli.launched", lambda: True)
    from trainer.cli import run_folder

    class Args:
        run_dir = None

    with pytest.raises(UserError, match="GPUS=N"):
        run_folder(Args(), recipe(), None)
