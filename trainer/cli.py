"""`python -m trainer {train,plan,preview,eval,chat} ...`: thin entry points, one per stage.

Each command reads like its table of contents; the work is in the library modules. A `UserError` anywhere
becomes one message on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path

from trainer.training.distributed import is_main, launched
from trainer.errors import UserError, run_command

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # `train medical --resume train.max_steps=40`: overrides after a flag are overrides too
    if extra and hasattr(args, "overrides") and not any(e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return run_command(args)


def train_command(args) -> int:
    from trainer.preflight import check_before_training

    from trainer.hub import require_recipe_hub_ids

    recipe, hardware = _recipe_and_hardware(args)
    require_recipe_hub_ids(recipe)  # one line now, not a minute of download retries later
    if args.gpus is not None and not launched():
        return launch_training(args, recipe, hardware)
    recipe, plan = planned(recipe, hardware, several=args.gpus is not None)
    if not launched():  # a launched process's parent checked already
        check_before_training(recipe)
    resume_dir, checkpoint, notes = resumable(recipe, args.run_dir) if args.resume else (None, None, [])
    fresh = resume_dir is None and not args.run_dir
    try:
        _train(args, recipe, hardware, resume_dir, checkpoint, notes, plan)
    except BaseException:
        if fresh and is_main():
            _remove_unstarted()
        raise
    return 0


def _train(args, recipe, hardware, resume_dir, checkpoint, notes, plan=None) -> None:
    from trainer.model import start_engine

    start_engine(recipe, hardware)
    # Only now: trainer.training.sft imports transformers, TRL and PEFT, which Unsloth (imported by start_engine) must
    # patch first (tests/test_cli.py checks that none of them is loaded before start_engine).
    from trainer.data.dataset import encode, load_conversations, save_conversations
    from trainer.model import load_for_training, load_tokenizer
    from trainer.recipe import save_resolved
    from trainer.runs import RunFolder, RunLog
    from trainer.training.sft import train

    log = RunLog(quiet=not is_main())
    log.say(banner(recipe, hardware))
    for note in notes:
        log.say(note)
    conversations = load_conversations(recipe)
    tokenizer = load_tokenizer(recipe.model)
    prepared = encode(conversations, tokenizer, recipe)
    log.say("\n".join(prepared.report.summary()))
    plan = _plan_for_rows(recipe, plan, prepared, log)
    loaded = load_for_training(recipe, hardware, tokenizer)
    run = RunFolder(run_folder(args, recipe, resume_dir))
    _STARTED[run.path] = False
    log.attach(run.train_log)
    with training_in(run, args, owner=is_main() and not launched()):
        if is_main():
            save_resolved(recipe, run.config)
            save_conversations(prepared.eval_conversations, run.eval_data)
        log.say(f"resuming {run.path} from {checkpoint}" if checkpoint else f"run folder: {run.path}")
        metrics = train(recipe, loaded, prepared, hardware, run.path, log, resume_from=checkpoint,
                        on_first_step=lambda: _STARTED.__setitem__(run.path, True),
                        planned_peak_gib=plan.peak_gib if plan else None)
        if is_main():
            run.mark_complete()
    log.say(finished(run.path, metrics))


def _plan_for_rows(recipe, plan, prepared, log):
    """The plan's peak for this data (short unpacked rows peak below the settings' bound), said when it differs."""
    from trainer.plan import for_rows

    if plan is None:
        return None
    for_data = for_rows(recipe, plan, [len(row.input_ids) for row in prepared.train])
    if for_data is not plan:
        log.say(f"predicted peak for these rows: {for_data.peak_gib:.2f} GiB (the longest row has "
                f"{for_data.settings.longest_row} of model.max_seq_length={plan.settings.max_seq_length} tokens)")
    return for_data


_STARTED: dict = {}
"""Run folder -> whether a training step ran: a folder whose run failed before its first step is removed."""


def _remove_unstarted() -> None:
    import shutil

    for run_dir, started in _STARTED.items():
        if not started:
            shutil.rmtree(run_dir, ignore_errors=True)


@contextmanager
def training_in(run, args, owner: bool):
    """While training: `RUNNING` holds this process's pid (the folder's state is `running`), the command is
    kept for a later resume, and progress.json ends in `finished`, `stopped` or `failed`."""
    from trainer.training.progress import write_progress
    from trainer.runs import write_json
    from trainer.training.sft import Stopped

    if not is_main():
        yield
        return
    if owner:
        run.claim()
    write_json(run.command, {"argv": [args.recipe, *args.overrides]})
    write_progress(run, state="starting")
    try:
        yield
    except Stopped:
        write_progress(run, state="stopped")
        raise
    except BaseException as error:
        write_progress(run, state="failed", error=str(error).splitlines()[0] if str(error) else type(error).__name__)
        raise
    else:
        write_progress(run, state="finished")
    finally:
        if owner:
            run.release()


def planned(recipe, hardware, several: bool = False):
    """On a CUDA GPU: the recipe with the planner's settings for this card (or the card GPU= named), the plan
    printed before any weights load; a recipe that cannot fit stops here (exit 2). Elsewhere: unchanged."""
    from trainer.plan import apply, card_choice, describe, plan_recipe, settings_of

    if not hardware.cuda or several or launched():  # several processes (GPUS=N): memory per GPU not modelled
        return recipe, None
    card = card_choice(recipe.profile, hardware.memory_gib)
    plan = plan_recipe(recipe, card, choose_settings=recipe.train.planner)
    print(describe(plan, settings_of(recipe)), flush=True)
    return apply(recipe, plan), plan


def plan_command(args) -> int:
    """`python -m trainer plan RECIPE [--gpu CARD] [--json]`: the predicted peak, and with a card the settings."""
    import json

    from trainer.hardware import Hardware
    from trainer.plan import CannotFit, describe, parse_card, plan_recipe, settings_of

    if args.gpu == "auto":  # make's default GPU=auto: no card named
        args.gpu = None
    if args.gpu:
        parse_card(args.gpu)  # an unknown card is an error before the recipe is read
    recipe = _recipe(args, Hardware(cuda=True, name=args.gpu or "a CUDA GPU"))
    try:
        plan = plan_recipe(recipe, args.gpu, choose_settings=recipe.train.planner)
    except CannotFit as error:
        if args.json:
            print(json.dumps(error.plan.as_json()))
        raise
    print(describe(plan, settings_of(recipe)))
    if args.json:
        print(json.dumps(plan.as_json()))
    return 0


def launch_training(args, recipe, hardware) -> int:
    """`--gpus N`: check what can be checked once, choose the run folder, start N training processes.

    A SIGTERM (the web UI's Stop) is handed to `accelerate launch`, which signals its workers; whether each then
    saves its checkpoint as a single process does was not checked on several GPUs."""
    import signal
    import subprocess

    import torch

    from trainer.data.dataset import load_conversations
    from trainer.training.distributed import check_launch, launch_command
    from trainer.runs import RunFolder, new_run_dir

    if args.gpus < 1:
        raise UserError(f"GPUS={args.gpus}: the number of processes must be at least 1", where="GPUS",
                        fix="use GPUS=1 or more, or leave GPUS out for a plain single-process run")
    from trainer.preflight import check_before_training

    strategy = check_launch(recipe, args.gpus, hardware, torch.cuda.device_count())
    check_before_training(recipe)
    load_conversations(recipe)  # bad data is reported here, once, rather than by every process
    # a resume is checked here; its warnings are shown by the first process, which also logs them
    run_dir = resumable(recipe, args.run_dir)[0] if args.resume else new_run_dir(recipe.train.output_dir,
                                                                                  recipe.name)
    many = args.gpus > 1
    where = f"{args.gpus} GPU{'s' * many}" if hardware.cuda else \
        f"{args.gpus} CPU process{'es' * many} over gloo (no CUDA: a check of the path, not faster)"
    print(f"launching {strategy} on {where}; run folder {run_dir}", flush=True)
    argv = ["train", args.recipe, *args.overrides, "--run-dir", str(run_dir), *(["--resume"] if args.resume else [])]
    run = RunFolder(run_dir)
    run.claim()  # this launcher is the process a Stop signals; it hands SIGTERM on to accelerate
    process = subprocess.Popen(launch_command(strategy, args.gpus, hardware.cuda, argv))
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signum))
    try:
        code = process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        run.release()
    if code != 0 and not args.resume and not run.read_progress().get("step"):
        # The workers stopped before their first step (a model that does not load, a full disk): like a single
        # process, leave no run folder that looks like a run.
        import shutil

        shutil.rmtree(run.path, ignore_errors=True)
    return code


def run_folder(args, recipe, resume_dir: Path | None) -> Path:
    """The run folder: the one the multi-GPU parent chose, the one being resumed, or a new one."""
    from trainer.runs import new_run_dir

    if args.run_dir:
        return Path(args.run_dir)
    if launched():
        raise UserError("this process is one of several, but no run folder was chosen for them", where="train",
                        fix="start multi-GPU runs with `make train GPUS=N` (python -m trainer train ... --gpus N)")
    return resume_dir or new_run_dir(recipe.train.output_dir, recipe.name)


RESUME_MAY_CHANGE = ("train.learning_rate", "train.max_steps", "train.epochs")
"""Settings a resumed run may change (lower the learning rate after a NaN, train longer); anything else would
make the checkpoint's optimizer state or data order mean something else."""


def resumable(recipe, chosen: str | None = None) -> tuple[Path, str, list[str]]:
    """The run to resume (the one chosen with --run-dir, else the newest unfinished run of this recipe that has a
    checkpoint), its last readable checkpoint, and warnings to show."""
    from trainer.recipe import load_resolved
    from trainer.runs import RunFolder, latest_checkpoint, latest_run

    if chosen:
        run = RunFolder(chosen)
        if run.state != "stopped" and not launched():  # a launched worker resumes the folder its launcher holds
            raise UserError(f"cannot resume this run: it is {run.state}", where=str(run.path),
                            fix="only a stopped run with a checkpoint can be resumed")
    run_dir = run.path if chosen else latest_run(recipe.train.output_dir, recipe.name, complete=False,
                                                 with_checkpoint=True)
    if run_dir is None:
        raise UserError(f"nothing to resume: no unfinished run of '{recipe.name}' with a checkpoint",
                        where=recipe.train.output_dir,
                        fix="checkpoints are written every train.checkpoint_steps; train without RESUME=1")
    saved = load_resolved(run_dir)
    changed = _differences(saved, recipe)
    refused = [c for c in changed if c.split(" ")[0] not in RESUME_MAY_CHANGE]
    if refused:
        raise UserError(f"the recipe differs from the one {run_dir} was started with: {', '.join(refused)}",
                        where="RESUME=1", fix=f"resume with the same recipe and overrides (only "
                                              f"{', '.join(RESUME_MAY_CHANGE)} may change), or start a new run")
    checkpoint = latest_checkpoint(run_dir)
    notes = [f"warning: resuming with {c}" for c in changed]
    newest = latest_checkpoint(run_dir, readable=False)
    if newest != checkpoint:
        notes.append(f"warning: {newest} is damaged (its trainer_state.json cannot be read); using {checkpoint}")
    return run_dir, str(checkpoint), notes


def _differences(saved, current) -> list[str]:
    import dataclasses

    def flat(value, prefix=""):
        if dataclasses.is_dataclass(value):
            return {k: v for f in dataclasses.fields(value) if f.name != "profiles"
                    for k, v in flat(getattr(value, f.name), f"{prefix}{f.name}.").items()}
        return {prefix.rstrip("."): value}

    old, new = flat(saved), flat(current)
    return [f"{key} (was {old[key]!r}, now {new[key]!r})" for key in old if old[key] != new.get(key)]


def preview_command(args) -> int:
    from trainer.data.dataset import encode, load_conversations
    from trainer.model import load_tokenizer
    from trainer.data.preview import print_examples

    recipe, _ = _recipe_and_hardware(args)
    conversations = load_conversations(recipe)
    tokenizer = load_tokenizer(recipe.model)
    prepared = encode(conversations, tokenizer, recipe)
    print_examples(prepared, tokenizer, limit=args.limit, as_json=args.json or args.ids, ids=args.ids)
    return 0


def eval_command(args) -> int:
    from trainer.evaluation.evaluate import evaluate
    from trainer.evaluation.report import metric_table

    run, overrides = _run_and_overrides(args)
    metrics = evaluate(run, samples=args.samples, overrides=overrides)
    print(metric_table(metrics))
    print(f"\nwrote predictions.jsonl, eval_metrics.json and report.md in {metrics['run']}")
    return 0


def chat_command(args) -> int:
    from trainer.chat import run_chat

    run, overrides = _run_and_overrides(args)
    return run_chat(run, prompt=args.prompt, base=args.base, max_new_tokens=args.max_new_tokens,
                    temperature=args.temperature, overrides=overrides)


def _run_and_overrides(args) -> tuple[str, list[str]]:
    """`eval [RUN] [eval.key=value ...]`: a first argument with `=` is an override, and the run is `latest`."""
    if "=" in args.run:
        return "latest", [args.run, *args.overrides]
    return args.run, list(args.overrides)


def grpo_command(args) -> int:
    from trainer.training.grpo import run_grpo

    recipe, hardware = _recipe_and_hardware(args)
    run_grpo(recipe, hardware, sft_run=args.run)
    return 0


def banner(recipe, hardware) -> str:
    """Says what is about to run, and loudly so when it is the offline stand-in rather than a real model."""
    lines = [f"recipe {recipe.name}: {recipe.description}".rstrip(": "),
             f"profile {recipe.profile} on {hardware.name if hardware.cuda else 'CPU'}; base {recipe.model.base}"]
    if recipe.model.base == "tiny":
        lines += ["No CUDA GPU: this run uses the embedded tiny R1-Distill-Qwen model (2 layers, width 64,",
                  f"real tokenizer) and the bundled sample {recipe.data.path}.",
                  "It proves the pipeline end to end in about a minute; it does not make a useful model.",
                  "On a CUDA GPU the same command trains the recipe's real base model."] if not hardware.cuda else \
                 ["model.base is `tiny`: the embedded test model, not a real R1-Distill checkpoint."]
    width = max(map(len, lines))
    return "\n".join(["=" * width, *lines, "=" * width])


def finished(run_dir: Path, metrics: dict) -> str:
    eval_part = f", eval loss {metrics['eval_loss']:.4f}" if metrics.get("eval_loss") is not None else ""
    return (f"done in {metrics['train_runtime_s']:.0f} s: loss {metrics['first_loss']:.4f} -> "
            f"{metrics['final_loss']:.4f}{eval_part}, {metrics['trained_tokens_per_s']:.0f} trained tokens/s\n"
            f"adapter: {run_dir / 'adapter'}\nnext: make eval RUN={run_dir}  |  make chat RUN={run_dir}  |  "
            f"make gguf RUN={run_dir}")


def _recipe(args, hardware):
    from trainer.recipe import find_recipe, load_recipe

    return load_recipe(find_recipe(args.recipe, RECIPES_DIR), args.overrides, hardware)


def _recipe_and_hardware(args):
    """Find the recipe file first (a typo is reported before torch loads), then detect the machine."""
    from trainer.hardware import detect
    from trainer.recipe import find_recipe, load_recipe

    path = find_recipe(args.recipe, RECIPES_DIR)
    hardware = detect()
    return load_recipe(path, args.overrides, hardware), hardware


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer",
                                     description="Fine-tune DeepSeek-R1-Distill models on your data.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    train = commands.add_parser("train", help="train a recipe and write runs/<recipe>-<time>/")
    _recipe_args(train)
    train.add_argument("--resume", action="store_true",
                       help="continue the newest unfinished run of this recipe from its last checkpoint")
    train.add_argument("--gpus", type=int, metavar="N",
                       help="train on N GPUs through accelerate (train.strategy picks DDP, FSDP or ZeRO; "
                            "N=1 with zero2/zero3 offloads to the CPU on one card); without CUDA, N CPU processes")
    train.add_argument("--run-dir", metavar="RUN",
                       help="with --resume: the stopped run folder to continue (default: the newest of this recipe)")
    train.set_defaults(command=train_command)
    grpo = commands.add_parser("grpo", help="continue a finished SFT run with GRPO on checkable answers")
    _recipe_args(grpo)
    grpo.add_argument("--run", help="SFT run folder to continue (default: the newest finished one of the recipe)")
    grpo.set_defaults(command=grpo_command)
    plan = commands.add_parser("plan", help="predict the training peak GPU memory; with --gpu, the fastest "
                                             "settings that fit that card")
    _recipe_args(plan)
    plan.add_argument("--gpu", metavar="CARD", help="card name (4060, 4090, 3090, ...) or its memory in GB")
    plan.add_argument("--json", action="store_true", help="also print the plan as one JSON object (last line)")
    plan.set_defaults(command=plan_command)
    preview = commands.add_parser("preview", help="show rendered training examples with the trained span")
    _recipe_args(preview)
    preview.add_argument("--limit", type=int, default=3, help="examples to show (default 3)")
    preview.add_argument("--json", action="store_true",
                         help='one JSON object per example on stdout, then a {"summary": ...} line')
    preview.add_argument("--ids", action="store_true",
                         help="JSON with each example's input_ids and labels (-100 where masked)")
    preview.set_defaults(command=preview_command)
    evaluate = commands.add_parser("eval", help="compare the base and the trained model on the eval rows")
    evaluate.add_argument("run", nargs="?", default="latest", help="run folder, or `latest` (default)")
    evaluate.add_argument("--samples", type=int, help="eval rows to use (default: the recipe's eval.samples)")
    _after_training_args(evaluate)
    evaluate.set_defaults(command=eval_command)
    chat = commands.add_parser("chat", help="chat with the trained model in the terminal")
    chat.add_argument("run", nargs="?", default="latest", help="run folder, or `latest` (default)")
    _after_training_args(chat)
    chat.add_argument("--prompt", help="answer this one message and exit")
    chat.add_argument("--base", action="store_true", help="chat with the base model instead of the trained one")
    chat.add_argument("--max-new-tokens", type=int, help="longest reply (default: the recipe's eval.max_new_tokens)")
    chat.add_argument("--temperature", type=float, default=0.6,
                      help="sampling temperature with top_p 0.95 (default 0.6); 0 for greedy")
    chat.set_defaults(command=chat_command)
    return parser


def _after_training_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="eval.key=value",
                        help="change the run's eval settings, e.g. eval.max_new_tokens=2048 (checked like training's)")


def _recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe name (recipes/<name>.yaml) or path to a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override recipe values, e.g. train.max_steps=50")
