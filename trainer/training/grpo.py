"""The second stage: GRPO on answers that can be checked, continuing a finished SFT run's LoRA adapter.

`make grpo RECIPE=news` takes the newest finished SFT run of the recipe (or RUN=...), loads its base model and
adapter through `trainer.model` (Unsloth on CUDA, transformers + PEFT elsewhere), samples `num_generations`
completions per training prompt, scores them with `trainer.training.rewards`, and trains the same adapter with TRL's
`GRPOTrainer`. The result is a run folder like `make train`'s (config.yaml, adapter/, eval_data.jsonl,
metrics.json, reward_curve.png, train.log, COMPLETE last), so eval, chat and export take it unchanged.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections import Counter
from pathlib import Path

from trainer.config import Recipe
from trainer.data.dataset import Conversation, load_conversations
from trainer.errors import UserError
from trainer.data.formats import Message
from trainer.generate import history_of
from trainer.hardware import Hardware
from trainer.model import Loaded, load_for_training, load_tokenizer, start_engine, trainable_summary
from trainer.r1 import split_reasoning
from trainer.recipe import load_resolved, save_resolved
from trainer.training.rewards import RewardSpec, completion_text, describe, resolve, trl_reward_functions
from trainer.runs import ADAPTER, RunLog, is_complete, mark_complete, new_run_dir, require_complete, write_json
from trainer.data.template import assistant_text

STAGE = "grpo"
EVAL_DATA = "eval_data.jsonl"
CURVE = "reward_curve.png"


def run_grpo(requested: Recipe, hardware: Hardware, sft_run: str | None = None, log: RunLog | None = None) -> Path:
    """Table of contents of `make grpo`; returns the finished run folder."""
    log = log or RunLog()
    sft_dir = find_sft_run(requested, sft_run)
    recipe = continued_recipe(load_resolved(sft_dir), requested)
    start_engine(recipe, hardware)
    prompts = prompt_rows(load_conversations(recipe).train)
    spec = resolve(recipe, [p["reference"] for p in prompts])
    tokenizer = load_tokenizer(recipe.model)
    loaded = load_sft_adapter(recipe, hardware, tokenizer, sft_dir / ADAPTER)
    run_dir = new_run_dir(recipe.train.output_dir, f"{recipe.name}-{STAGE}")
    log.attach(run_dir / "train.log")
    save_resolved(recipe, run_dir / "config.yaml")
    shutil.copyfile(sft_dir / EVAL_DATA, run_dir / EVAL_DATA)
    log.say(f"GRPO on {sft_dir} ({len(prompts)} prompts); run folder: {run_dir}\n{describe(spec)}\n"
            f"{loaded.backend}: {trainable_summary(loaded.model)}")
    metrics = train_grpo(recipe, loaded, prompts, spec, hardware, run_dir, log)
    metrics["sft_run"] = str(sft_dir)
    write_json(run_dir / "metrics.json", metrics)
    plot_rewards(metrics["curves"], run_dir / CURVE, f"{recipe.name}: GRPO after {sft_dir.name}")
    mark_complete(run_dir)
    log.say(finished(run_dir, metrics))
    return run_dir


def find_sft_run(recipe: Recipe, run: str | None) -> Path:
    """RUN= when given; else the newest finished run of this recipe that is not itself a GRPO run."""
    if run and run != "latest":
        return require_complete(run)
    root = Path(recipe.train.output_dir)
    done = [p for p in sorted(root.glob(f"{recipe.name}-*")) if p.is_dir() and is_complete(p) and not is_grpo_run(p)]
    if not done:
        raise UserError(f"no finished SFT run of '{recipe.name}' to continue", where=str(root.resolve()),
                        fix=f"train one first with `make train RECIPE={recipe.name}`, or pass RUN=path/to/run")
    return done[-1]


def is_grpo_run(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")).get("stage") == STAGE
    except (OSError, ValueError, AttributeError):
        return False


def continued_recipe(sft: Recipe, requested: Recipe) -> Recipe:
    """The SFT run's recipe (same base, adapter shape and data) with this command's grpo section and output."""
    if sft.train.method != "lora":
        raise UserError(f"GRPO continues a LoRA adapter, and this run trained with train.method={sft.train.method}",
                        where="train.method", fix="train the SFT stage with train.method=lora")
    train = dataclasses.replace(sft.train, output_dir=requested.train.output_dir, seed=requested.train.seed)
    return dataclasses.replace(sft, grpo=requested.grpo, train=train)


def prompt_rows(conversations: list[Conversation]) -> list[dict]:
    """One row per conversation: the chat up to its last assistant turn, and that turn's answer as reference."""
    rows = []
    for conversation in conversations:
        history = history_of(conversation.messages)
        reply = conversation.messages[len(history)]
        rows.append({"prompt": [_chat_message(m) for m in history], "reference": reply.content})
    return rows


def _chat_message(message: Message) -> dict:
    text = assistant_text(message) if message.role == "assistant" else message.content
    return {"role": message.role, "content": text}


def load_sft_adapter(recipe: Recipe, hardware: Hardware, tokenizer, adapter: Path) -> Loaded:
    """The base model with a fresh LoRA of the run's shape (the usual training path), then the run's weights in it."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    loaded = load_for_training(recipe, hardware, tokenizer)
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(loaded.model, weights, adapter_name="default")
    if getattr(result, "unexpected_keys", None):
        raise UserError(f"the adapter does not fit the model: {len(result.unexpected_keys)} unexpected weights "
                        f"such as {result.unexpected_keys[0]}", where=str(adapter),
                        fix="continue a run trained with the same model.base and lora settings")
    freeze_vocabulary_adapters(loaded.model)
    return loaded


VOCABULARY_MODULES = ("embed_tokens", "lm_head")


def freeze_vocabulary_adapters(model) -> None:
    """Keep the adapter's parts on the input embedding and the output head as SFT left them: only the decoder
    layers' adapter learns from the rewards.

    Why: through the softmax, the policy gradient reaches every row of a vocabulary-wide layer, with tiny, noisy
    values for the ~150k tokens that were never sampled, and Adam scales each of those up to a full step of the
    learning rate. On the tiny model, 30 steps at lr 5e-4 moved greedy held-out accuracy from 0.63 to 0.53 with
    these parts training and left it at 0.63 with them frozen. The real recipes put no adapter there (only the
    CPU profile's tiny model, whose embeddings are random, learns them during SFT)."""
    for name, param in model.named_parameters():
        if param.requires_grad and any(f".{module}." in name for module in VOCABULARY_MODULES):
            param.requires_grad_(False)


def train_grpo(recipe: Recipe, loaded: Loaded, prompts: list[dict], spec: RewardSpec, hardware: Hardware,
               run_dir: Path, log: RunLog, callbacks: list | None = None) -> dict:
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOTrainer

    from trainer.training.sft import remove_if_empty

    functions, weights = trl_reward_functions(spec)
    answers = AnswerLog()
    functions[0] = answers.watching(functions[0])
    trainer = GRPOTrainer(model=loaded.model, reward_funcs=functions, processing_class=loaded.tokenizer,
                          args=grpo_config(recipe, hardware, loaded.backend, run_dir, weights),
                          train_dataset=Dataset.from_list(prompts), callbacks=callbacks)
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(reward_log(log, list(spec.weights)))
    started = time.perf_counter()
    try:
        trainer.train()
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch here
            raise out_of_memory(recipe) from None
        raise
    elapsed = time.perf_counter() - started
    save_adapter(trainer.model, loaded.tokenizer, run_dir)
    remove_if_empty(run_dir / "checkpoints")  # TRL's output folder; GRPO saves no checkpoints in it
    metrics = summarize(trainer.state.log_history, list(spec.weights), elapsed, recipe)
    metrics["collapsed_answer"] = answers.collapse()
    if metrics["collapsed_answer"]:
        log.say(collapse_warning(metrics["collapsed_answer"]))
    metrics.update(backend=loaded.backend, device=hardware.name, rewards=dataclasses.asdict(spec))
    if hardware.cuda:
        import torch

        metrics["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return metrics


class AnswerLog:
    """The answers (the text after `</think>`) of each step's completions. The reward can rise by the format alone
    while the answers stop depending on the question: a policy that collapsed onto one answer."""

    COLLAPSED_SHARE = 0.6
    """At least this share of the last tenth's completions give one answer..."""
    MARGIN = 0.3
    """...and that share is this much above the most common reference's share (a label most rows have is fine)."""

    def __init__(self):
        self.steps: list[tuple[list[str], list[str]]] = []

    def watching(self, reward_function):
        """The reward function, recording each call's answers and references (TRL calls it once a step)."""
        def watched(completions, **kwargs):
            texts = [completion_text(c) for c in completions]
            self.steps.append(([split_reasoning(t).answer.strip() for t in texts], list(kwargs.get("reference", []))))
            return reward_function(completions, **kwargs)

        watched.__name__ = reward_function.__name__  # TRL logs the reward under this name
        return watched

    def collapse(self) -> dict | None:
        """{"answer", "share", "reference_share"} when the last tenth of the steps collapsed onto one answer."""
        last = self.steps[-tenth(len(self.steps)):]
        answers = [a for step_answers, _ in last for a in step_answers]
        references = [r for _, step_references in last for r in step_references]
        given = Counter(a for a in answers if a)
        if not given or not references:
            return None
        answer, count = given.most_common(1)[0]
        share = count / len(answers)
        reference_share = Counter(references).most_common(1)[0][1] / len(references)
        if share >= self.COLLAPSED_SHARE and share >= reference_share + self.MARGIN:
            return {"answer": answer, "share": round(share, 3), "reference_share": round(reference_share, 3)}
        return None


def collapse_warning(collapse: dict) -> str:
    return (f"warning: in the last tenth of the steps, {collapse['share']:.0%} of the completions answered "
            f"'{collapse['answer']}' (the most common reference answer is {collapse['reference_share']:.0%} of the "
            f"rows): the policy has collapsed onto one answer, and the reward rose by the format. Check with "
            f"`make eval`; train SFT longer before GRPO, or lower grpo.rewards.format")


def out_of_memory(recipe: Recipe) -> UserError:
    g = recipe.grpo
    knobs = [f"grpo.num_generations={g.num_generations // 2}" if g.num_generations >= 4 else None,
             f"grpo.max_completion_length={g.max_completion_length // 2}" if g.max_completion_length > 64 else None,
             "grpo.prompts_per_step=1" if g.prompts_per_step > 1 else None, "grpo.beta=0" if g.beta else None]
    return UserError(f"CUDA ran out of memory during GRPO ({g.prompts_per_step} x {g.num_generations} completions of "
                     f"up to {g.max_completion_length} tokens)", where="grpo",
                     fix="try " + "; or ".join(k for k in knobs if k) if any(knobs) else "use a smaller model.base")


def grpo_config(recipe: Recipe, hardware: Hardware, backend: str, run_dir: Path, weights: list[float]):
    from trl import GRPOConfig

    from trainer.training.sft import _optimizer_name, _precision

    g, t = recipe.grpo, recipe.train
    precision = _precision(recipe, hardware)
    return GRPOConfig(
        output_dir=str(run_dir / "checkpoints"), max_steps=g.steps,
        per_device_train_batch_size=g.prompts_per_step * g.num_generations, gradient_accumulation_steps=1,
        num_generations=g.num_generations, max_completion_length=g.max_completion_length,
        temperature=g.temperature, beta=g.beta, learning_rate=g.learning_rate, lr_scheduler_type="constant",
        reward_weights=weights, max_grad_norm=t.max_grad_norm, optim=_optimizer_name(t.optimizer, hardware),
        seed=t.seed, data_seed=t.seed, logging_steps=1, save_strategy="no", report_to="none",
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=not hardware.cuda,
        gradient_checkpointing=t.gradient_checkpointing and backend == "transformers",
        gradient_checkpointing_kwargs={"use_reentrant": False}, disable_tqdm=True,
        dataloader_pin_memory=hardware.cuda)


def reward_log(log: RunLog, names: list[str]):
    """A callback saying one line per step: mean reward, each component, completion length. Built here, not at
    import: transformers may only be imported after `start_engine` has imported Unsloth."""
    from transformers import TrainerCallback

    class RewardLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "reward" not in logs:
                return
            parts = [f"{n} {logs.get(f'rewards/{n}/mean', float('nan')):.3f}" for n in names]
            log.say(f"step {state.global_step}/{state.max_steps}: reward {logs['reward']:.3f} ({', '.join(parts)}), "
                    f"completion length {logs.get('completions/mean_length', float('nan')):.0f}")

    return RewardLog()


def save_adapter(model, tokenizer, run_dir: Path) -> None:
    """Only the trained adapter (TRL adds a frozen `ref` copy when beta > 0), written aside then renamed."""
    final, tmp = run_dir / ADAPTER, run_dir / f".{ADAPTER}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True, selected_adapters=["default"],
                          save_embedding_layers=False)
    tokenizer.save_pretrained(str(tmp))
    tmp.rename(final)


def summarize(history: list[dict], names: list[str], elapsed: float, recipe: Recipe) -> dict:
    """reward_start / reward_end: mean reward over the first and the last tenth of the steps; every curve."""
    steps = [h for h in history if "reward" in h]
    rewards = [h["reward"] for h in steps]
    n = tenth(len(rewards))
    completions = len(steps) * recipe.grpo.prompts_per_step * recipe.grpo.num_generations
    tokens = sum(h.get("completions/mean_length", 0.0) for h in steps) * \
        recipe.grpo.prompts_per_step * recipe.grpo.num_generations
    return {
        "stage": STAGE, "steps": len(steps), "train_runtime_s": round(elapsed, 2),
        "reward_start": _mean(rewards[:n]), "reward_end": _mean(rewards[-n:]),
        "completions": completions, "completion_tokens": int(tokens),
        "completion_tokens_per_s": round(tokens / max(elapsed, 1e-9), 1),
        "curves": {"step": [h.get("step") for h in steps], "reward": rewards,
                   **{n: [h.get(f"rewards/{n}/mean") for h in steps] for n in names},
                   "completion_length": [h.get("completions/mean_length") for h in steps]},
    }


def plot_rewards(curves: dict, path: Path, title: str) -> bool:
    """The weighted mean reward and each component's mean against the step."""
    from trainer.training.plots import plot_lines

    if not curves["reward"]:
        return False
    steps = curves["step"]
    lines = [("reward (weighted sum)", steps, curves["reward"], {"linewidth": 1.6})]
    lines += [(name, steps, values, {"linewidth": 1.0, "alpha": 0.8}) for name, values in curves.items()
              if name not in ("step", "reward", "completion_length")]
    return plot_lines(lines, path, title, "mean reward of the step's completions")


def finished(run_dir: Path, metrics: dict) -> str:
    return (f"done in {metrics['train_runtime_s']:.0f} s: reward {metrics['reward_start']:.3f} -> "
            f"{metrics['reward_end']:.3f} (first and last tenth of {metrics['steps']} steps)\n"
            f"adapter: {run_dir / ADAPTER}\nnext: make eval RUN={run_dir}  |  make chat RUN={run_dir}  |  "
            f"make gguf RUN={run_dir}")


def tenth(steps: int) -> int:
    """How many steps make the first or the last tenth (at least one): reward_start, reward_end, collapse."""
    return max(1, steps // 10)


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None
