"""Multi-GPU launch: the shipped accelerate configs, the command built from them, and what is refused up front."""
from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser

from trainer.cli import main
from trainer.config import check
from trainer.training.distributed import CONFIG_DIR, check_launch, launch_command, strategy_of
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
    if stage:  # the DeepSpeed settings come from the JSON beside the yaml, by absolute path
        assert Path(args.deepspeed_config_file) == CONFIG_DIR / f"{strategy}.json"
        assert Path(args.deepspeed_config_file).is_absolute()


def test_every_shipped_config_is_one_accelerate_reads():
    configs = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert configs == ["ddp", "fsdp", "zero2", "zero3"]
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.json")) == ["zero2", "zero3"]
    fsdp = load_config_from_file(str(CONFIG_DIR / "fsdp.yaml"))
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # saved weights load as they are


@pytest.mark.parametrize(("strategy", "stage", "params_on"), [("zero2", 2, None), ("zero3", 3, "cpu")])
def test_deepspeed_gets_the_recipe_and_its_own_cpu_optimizer(strategy, stage, params_on, monkeypatch):
    """What a training process builds from the launch: accelerate's plugin, then the Trainer fills in the recipe."""
    from accelerate.utils import DeepSpeedPlugin
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    for key, value in accelerate_environment(strategy).items():
        monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()  # raises if the yaml set a field that the JSON file must own
    config = HfTrainerDeepSpeedConfig(plugin.hf_ds_config.config)
    args = TrainingArguments(output_dir="/tmp/unused", per_device_train_batch_size=3, gradient_accumulation_steps=5,
                             learning_rate=2e-4, weight_decay=0.01, max_grad_norm=0.7, bf16=True, use_cpu=True)
    config.trainer_config_process(args)
    ds = config.config
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (3, 5)
    assert ds["gradient_clipping"] == 0.7 and ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    # DeepSpeed refuses a client optimizer beside CPU offload: the config must name one (it becomes its CPU Adam)
    assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["lr"] == 2e-4
    assert ds["optimizer"]["params"]["weight_decay"] == 0.01
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage and zero["offload_optimizer"]["device"] == "cpu"
    assert zero.get("offload_param", {}).get("device") == params_on


def accelerate_environment(strategy: str) -> dict[str, str]:
    """The ACCELERATE_* variables `accelerate launch` gives each process for this strategy (as on GPUs)."""
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args, defaults, mixed_from_config = _validate_launch_command(launch_command_parser().parse_args(
        launch_command(strategy, 2, True, ["train"])[3:]))
    args.deepspeed_fields_from_accelerate_config = ",".join(
        [*defaults.deepspeed_config, *(["mixed_precision"] if mixed_from_config else [])])
    _, env = prepare_deepspeed_cmd_env(args)
    return {k: v for k, v in env.items() if k.startswith("ACCELERATE_")}


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
    with pytest.raises(UserError, match="DeepSpeed's own CPU AdamW"):
        check_launch(recipe("train.strategy=zero2", "train.optimizer=adamw_8bit"), 2, GPU, 2)
    with pytest.raises(UserError, match="LoRA\\+ builds its own optimizer"):
        check_launch(recipe("train.strategy=zero2", "lora.loraplus_lr_ratio=16"), 2, GPU, 2)
    assert check_launch(recipe("model.quantization=none", hardware=cpu), 2, cpu, 0) == "ddp"
    for strategy in ("fsdp", "zero2", "zero3"):  # accelerate would quietly run these as DDP on CPU processes
        sharded = recipe(f"train.strategy={strategy}", "model.quantization=none", hardware=cpu)
        with pytest.raises(UserError, match="CPU processes \\(gloo\\) run DDP only"):
            check_launch(sharded, 2, cpu, 0)


def test_cli_reports_a_strategy_the_machine_cannot_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("trainer.hardware.detect", lambda: Hardware(False))
    code = main(["train", "news", "profile=cpu", "train.strategy=fsdp", "model.quantization=none",
                 f"train.output_dir={tmp_path}", "--gpus", "2"])
    assert code == 2 and "train.strategy=fsdp needs CUDA GPUs" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_missing_deepspeed_is_reported_before_anything_starts(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "deepspeed" else object())
    with pytest.raises(UserError, match="needs DeepSpeed, which is not installed"):
        check_launch(recipe("train.strategy=zero2", "model.quantization=none"), 2, GPU, 2)


def test_a_process_count_below_one_is_refused(tmp_path, capsys):
    code = main(["train", "news", "profile=cpu", f"train.output_dir={tmp_path}", "--gpus", "0"])
    assert code == 2 and "GPUS=0" in capsys.readouterr().err


def test_a_process_of_a_foreign_launch_is_told_how_to_start(monkeypatch):
    monkeypatch.setattr("trainer.cli.launched", lambda: True)
    from trainer.cli import run_folder

    class Args:
        run_dir = None

    with pytest.raises(UserError, match="GPUS=N"):
        run_folder(Args(), recipe(), None)
