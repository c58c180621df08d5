"""Resume and recovery pieces that need no training: schedules, loss means, checkpoints, machine faults."""
from __future__ import annotations

import errno
import json
import math
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from trainer.training import resume
from trainer.config import Recipe, TrainConfig
from trainer.errors import UserError, run_command
from trainer.runs import latest_checkpoint


def cosine(lr: float, steps: int, done: int):
    from transformers import get_cosine_schedule_with_warmup

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 1, steps)
    for _ in range(done):
        optimizer.step()
        scheduler.step()
    return optimizer, scheduler


def test_resume_with_a_new_rate_and_more_steps_follows_the_new_schedule():
    """Trained 6 of 6 steps at 5e-3, resumed to 8 steps at 1e-3: the rate for step 7 is the one a fresh 8-step
    schedule at 1e-3 has after 6 steps (not the old schedule's 0, not 5e-3)."""
    old_opt, old_sched = cosine(5e-3, 6, 6)
    new_opt, new_sched = cosine(1e-3, 8, 0)
    new_opt.load_state_dict(old_opt.state_dict())  # what the Trainer restores from the checkpoint
    new_sched.load_state_dict(old_sched.state_dict())
    assert new_opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    resume.rescale_learning_rate(new_opt, new_sched, 1e-3 / 5e-3)
    resume.follow_schedule(new_opt, new_sched)
    oracle_opt, _ = cosine(1e-3, 8, 6)
    assert new_opt.param_groups[0]["lr"] == pytest.approx(oracle_opt.param_groups[0]["lr"], rel=1e-9)
    assert new_opt.param_groups[0]["lr"] > 0
    new_opt.step()
    new_sched.step()
    oracle_opt2, _ = cosine(1e-3, 8, 7)
    assert new_opt.param_groups[0]["lr"] == pytest.approx(oracle_opt2.param_groups[0]["lr"], rel=1e-9)


def test_loss_mean_counts_each_logged_loss_for_its_steps():
    history = [{"step": 1, "loss": 4.0}, {"step": 5, "loss": 2.0}, {"step": 5, "eval_loss": 9.0},
               {"step": 9, "loss": 1.0}]
    # steps 1 | 2-5 | 6-9: (4*1 + 2*4 + 1*4) / 9
    assert resume.train_loss_mean(history) == pytest.approx(16 / 9)
    assert resume.train_loss_mean([]) is None


def fake_checkpoint(run_dir: Path, step: int, value: float = 0.5, state: str | None = None) -> Path:
    from safetensors.torch import save_file

    folder = run_dir / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    save_file({"w": torch.full((3,), value)}, str(folder / "adapter_model.safetensors"))
    (folder / "trainer_state.json").write_text(state if state is not None else json.dumps(
        {"global_step": step, "max_steps": 12, "log_history": []}))
    return folder


def test_nan_sets_aside_the_checkpoint_of_the_bad_update_and_non_finite_ones(tmp_path):
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 4, value=math.inf)
    fake_checkpoint(tmp_path, 6, value=1e20)  # finite, but saved from the update whose loss came out NaN
    moved = resume.set_aside_bad(tmp_path, bad_from_step=6)
    assert sorted(p.name for p in moved) == ["nonfinite-checkpoint-4", "nonfinite-checkpoint-6"]
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"


def test_truncated_trainer_state_falls_back_to_the_previous_checkpoint(tmp_path):
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 4, state='{"global_step": 4, "log_hist')
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"
    assert latest_checkpoint(tmp_path, readable=False).name == "checkpoint-4"


def test_resume_refuses_other_changes_and_warns_about_allowed_ones(tmp_path):
    from trainer.cli import resumable
    from trainer.recipe import save_resolved

    run_dir = tmp_path / "r-20260101-000000"
    run_dir.mkdir()
    started = Recipe(name="r", train=TrainConfig(output_dir=str(tmp_path), max_steps=12, learning_rate=5e-3))
    save_resolved(started, run_dir / "config.yaml")
    fake_checkpoint(run_dir, 4)
    fake_checkpoint(run_dir, 8, state="{")
    lowered = Recipe(name="r", train=TrainConfig(output_dir=str(tmp_path), max_steps=40, learning_rate=1e-4))
    found, checkpoint, notes = resumable(lowered)
    assert found == run_dir and checkpoint.endswith("checkpoint-4")
    assert any("train.learning_rate (was 0.005, now 0.0001)" in n for n in notes)
    assert any("train.max_steps (was 12, now 40)" in n for n in notes)
    assert any("checkpoint-8 is damaged" in n for n in notes)
    with pytest.raises(UserError, match="lora.rank"):
        resumable(Recipe(name="r", lora=type(started.lora)(rank=4), train=started.train))


def test_final_checkpoint_means_nothing_left_to_train(tmp_path):
    folder = fake_checkpoint(tmp_path, 12)
    (folder / resume.TOTALS).write_text(json.dumps({"epochs": 1.0, "max_steps": None}))
    assert resume.already_finished(Recipe(train=TrainConfig(max_steps=12)), folder)
    assert not resume.already_finished(Recipe(train=TrainConfig(max_steps=40)), folder)
    assert resume.already_finished(Recipe(train=TrainConfig(epochs=1.0)), folder)  # epochs: the saved max_steps
    assert not resume.already_finished(Recipe(train=TrainConfig(epochs=2.0)), folder)


@pytest.mark.parametrize("fault", [
    OSError(errno.ENOSPC, "No space left on device", "/runs/x/adapter"),
    OSError(errno.EROFS, "Read-only file system", "/runs/x"),
    RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file data/0: "
                 "file write failed"),
    Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left\" })"),
])
def test_disk_full_or_read_only_while_saving_is_one_line(fault, capsys):
    def command(args):
        raise fault

    assert run_command(Namespace(command=command)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "cannot write" in err, err


def test_a_bug_still_shows_its_traceback():
    def command(args):
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        run_command(Namespace(command=command))


def test_several_processes_report_a_problem_once(capsys, monkeypatch):
    def command(args):
        raise UserError("training stopped at step 3: loss is nan", where="runs/x")

    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        assert run_command(Namespace(command=command)) == 2
    assert capsys.readouterr().err.count("loss is nan") == 1


@pytest.mark.parametrize("key,kept", [("loss", "checkpoint-4"), ("grad_norm", "checkpoint-6")])
def test_nan_guard_names_a_checkpoint_from_before_the_bad_update(tmp_path, key, kept):
    from transformers import TrainerControl, TrainerState

    from trainer.training.sft import NonFiniteGuard

    fake_checkpoint(tmp_path, 4)
    fake_checkpoint(tmp_path, 6)
    guard, state = NonFiniteGuard(), TrainerState()
    state.global_step = 7
    guard.on_log(Namespace(logging_steps=1), state, TrainerControl(), logs={key: math.nan})
    with pytest.raises(UserError) as err:
        guard.raise_if_tripped(tmp_path)
    assert f"the last good checkpoint is {tmp_path / 'checkpoints' / kept}" in err.value.message
    assert latest_checkpoint(tmp_path).name == kept
