"""Before/after evaluation of a finished run: the base model and the trained one on the held-out rows.

Both models answer the same prompts greedily; each completion is cut at `</think>` and only the answer is
scored (exact-match accuracy, ROUGE-1/2/L, BLEU-4, think-format rate, lengths). Eval loss and perplexity are
teacher-forced over the trained tokens of the same conversations, exactly as training masked them. The base
model's results are cached under `cache_dir()/eval`, keyed by everything that decides them, so evaluating a
second run of the same recipe (or the same run again) only loads the trained model.
"""
from __future__ import annotations

import gc
import hashlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from trainer.cache import cache_dir
from trainer.config import Recipe
from trainer.data.dataset import Conversation, read_conversations
from trainer.errors import UserError
from trainer.data.formats import Message
from trainer.generate import generate, history_of
from trainer.hardware import Hardware, detect
from trainer.evaluation.metrics import corpus_scores, label_match, perplexity, rouge_bleu, think_format_ok
from trainer.model import base_path, choose_backend, load_for_inference, start_engine
from trainer.modelcard import write_model_card
from trainer.r1 import split_reasoning
from trainer.recipe import load_resolved
from trainer.runs import RunFolder, resolve_run, write_json, write_text
from trainer.data.template import IGNORE, Encoded, encode_conversation

CACHE_VERSION = 1
"""Bump when generation or loss code changes what the base model's cached results would be."""
LOSS_TOKEN_BUDGET = 16_384
"""Padded tokens per teacher-forced batch: the logits of a 150k vocabulary are the memory that matters."""


@dataclass(frozen=True)
class Item:
    """One eval row: the conversation, what the model is asked to continue, and the reference reply."""

    where: str
    messages: list[Message]
    history: list[Message]
    reference: Message


@dataclass
class Outputs:
    """What one model produced on the eval items."""

    completions: list[str]
    loss_sum: float
    loss_tokens: int

    @property
    def loss(self) -> float | None:
        return self.loss_sum / self.loss_tokens if self.loss_tokens else None


def evaluate(run: str | Path, samples: int | None = None, say: Callable[[str], None] | None = None,
             overrides: Sequence[str] = ()) -> dict:
    """Evaluate a finished run; writes predictions.jsonl, eval_metrics.json and report.md into it."""
    from trainer.evaluation.report import answer_kind, render_report

    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    run_dir = resolve_run(run).require_finished().path
    recipe = load_resolved(run_dir, overrides)
    n = samples if samples is not None else recipe.eval.samples
    if n < 1:
        raise UserError(f"--samples must be at least 1, got {n}", where="command line")
    items = load_items(run_dir, n)
    hardware = detect()
    start_engine(recipe, hardware)
    key = cache_key(recipe, hardware, items)
    cached = before_cache_dir() / f"{key}.json"
    say(f"evaluating {run_dir} on {len(items)} eval rows (greedy, up to {recipe.eval.max_new_tokens} new tokens)")

    before = read_cached(cached, len(items))
    if before is not None:
        say(f"before: base model results from the cache ({cached.name})")
    else:
        say(f"before: loading the base model {recipe.model.base}")
        before = run_model(recipe, hardware, None, items, "before")
        write_json(cached, {"version": CACHE_VERSION, "base": recipe.model.base, "completions": before.completions,
                            "loss_sum": before.loss_sum, "loss_tokens": before.loss_tokens})
    say(f"after: loading the trained model from {RunFolder(run_dir).adapter}")
    after = run_model(recipe, hardware, RunFolder(run_dir).adapter, items, "after", keep_tokenizer=True)
    count = token_counter(after.tokenizer)

    references = [item.reference.content for item in items]
    rows_before = [score_row(c, r, count) for c, r in zip(before.completions, references, strict=True)]
    rows_after = [score_row(c, r, count) for c, r in zip(after.completions, references, strict=True)]
    metrics = {
        "run": str(run_dir), "recipe": recipe.name, "base": recipe.model.base, "samples": len(items),
        "max_new_tokens": recipe.eval.max_new_tokens, "decoding": "greedy", "before_cache_key": key,
        "answers": answer_kind(recipe.data.format, references),
        "before": aggregate(rows_before, references, before.loss),
        "after": aggregate(rows_after, references, after.loss),
    }
    metrics["delta"] = deltas(metrics["before"], metrics["after"])
    predictions = [prediction(i, item, b, a)
                   for i, (item, b, a) in enumerate(zip(items, rows_before, rows_after, strict=True))]
    run = RunFolder(run_dir)
    write_text(run.predictions,
               "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))
    write_json(run.eval_metrics, metrics)
    write_text(run.report, render_report(run_dir, recipe, metrics, predictions))
    write_model_card(run_dir, recipe)  # now with the before/after table
    return metrics


def load_items(run_dir: Path, n: int) -> list[Item]:
    path = RunFolder(run_dir).eval_data
    if not path.is_file():
        raise UserError("this run has no eval_data.jsonl", where=str(run_dir),
                        fix="it is written by `make train`; train again with this version")
    conversations = [c for c in read_conversations(path) if any(m.role == "assistant" for m in c.messages)]
    if not conversations:
        raise UserError("this run has no eval rows (it was trained with data.val_size=0)", where=str(path),
                        fix="train with data.val_size > 0 or data.eval_path set")
    return [_item(c) for c in conversations[:n]]


def _item(conversation: Conversation) -> Item:
    history = history_of(conversation.messages)
    return Item(conversation.where, conversation.messages, history, conversation.messages[len(history)])


def question_of(item: Item) -> str:
    """The last user message: what the reference answers."""
    return next((m.content for m in reversed(item.history) if m.role == "user"), "")


@dataclass
class ModelRun(Outputs):
    tokenizer: object = None


def run_model(recipe: Recipe, hardware: Hardware, weights: Path | None, items: list[Item], label: str,
              keep_tokenizer: bool = False) -> ModelRun:
    """Load one model, generate for every item, measure the teacher-forced loss, and free it again."""
    loaded = load_for_inference(recipe, hardware, weights)
    try:  # the model is dropped on the way out, so the next one has the GPU memory to itself
        completions = completions_for(loaded.model, loaded.tokenizer, [i.history for i in items],
                                      recipe.eval.max_new_tokens, recipe.eval.batch_size, label)
        examples = [e for item in items for e in encode_conversation(
            item.messages, loaded.tokenizer, recipe.model.max_seq_length, recipe.data.train_turns,
            recipe.data.overlong) if e is not None]
        loss_sum, loss_tokens = teacher_forced_loss(loaded.model, loaded.tokenizer, examples,
                                                    recipe.eval.batch_size)
        return ModelRun(completions, loss_sum, loss_tokens, loaded.tokenizer if keep_tokenizer else None)
    finally:
        del loaded
        _free_memory(hardware)


def completions_for(model, tokenizer, histories: list[list[Message]], max_new_tokens: int, batch_size: int,
                    label: str) -> list[str]:
    """Greedy completions in batches, with a progress bar counting rows."""
    from tqdm.auto import tqdm

    out: list[str] = []
    with tqdm(total=len(histories), desc=f"generate ({label})", unit="row", dynamic_ncols=True) as bar:
        for start in range(0, len(histories), batch_size):
            batch = histories[start:start + batch_size]
            out += generate(model, tokenizer, batch, max_new_tokens, batch_size=len(batch))
            bar.update(len(batch))
    return out


def teacher_forced_loss(model, tokenizer, examples: list[Encoded], batch_size: int) -> tuple[float, int]:
    """(summed token cross-entropy, number of trained tokens) over the examples' trained positions."""
    import torch

    total, count = 0.0, 0
    pad = tokenizer.pad_token_id
    for batch in loss_batches(examples, batch_size):
        width = max(len(e.input_ids) for e in batch)
        ids = torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in batch])
        labels = torch.tensor([e.labels + [IGNORE] * (width - len(e.labels)) for e in batch])
        mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in batch])
        tokens = int((labels[:, 1:] != IGNORE).sum())  # the model predicts position t+1 from t
        if not tokens:
            continue
        device = model.device
        with torch.inference_mode():
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
        total += float(out.loss) * tokens  # the model's loss is the mean over those tokens
        count += tokens
    return total, count


def loss_batches(examples: list[Encoded], batch_size: int, budget: int = LOSS_TOKEN_BUDGET) -> list[list[Encoded]]:
    """Longest first, at most `batch_size` per batch and about `budget` padded tokens (at least one example)."""
    ordered = sorted(examples, key=lambda e: len(e.input_ids), reverse=True)
    batches: list[list[Encoded]] = []
    for example in ordered:
        current = batches[-1] if batches else None
        if current and len(current) < batch_size and (len(current) + 1) * len(current[0].input_ids) <= budget:
            current.append(example)
        else:
            batches.append([example])
    return batches


def token_counter(tokenizer) -> Callable[[str], int]:
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0


def score_row(completion: str, reference: str, count_tokens: Callable[[str], int]) -> dict:
    """One completion against the reference answer: its parts and every per-row score."""
    split = split_reasoning(completion)
    return {"reasoning": split.reasoning, "answer": split.answer, "closed": split.closed,
            "match": label_match(split.answer, reference), "format_ok": think_format_ok(split),
            **{k: round(v, 4) for k, v in rouge_bleu(split.answer, reference).items()},
            "reasoning_tokens": count_tokens(split.reasoning), "answer_tokens": count_tokens(split.answer)}


def aggregate(rows: list[dict], references: list[str], loss: float | None) -> dict:
    """Corpus metrics of one model from its scored rows (accuracy and format rate are fractions 0-1)."""
    n = len(rows)
    return {
        "accuracy": sum(r["match"] for r in rows) / n,
        **corpus_scores([r["answer"] for r in rows], references),
        "eval_loss": loss,
        "perplexity": _finite(perplexity(loss)) if loss is not None else None,
        "think_format_rate": sum(r["format_ok"] for r in rows) / n,
        "reasoning_tokens": sum(r["reasoning_tokens"] for r in rows) / n,
        "answer_tokens": sum(r["answer_tokens"] for r in rows) / n,
    }


def deltas(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] if isinstance(after.get(k), (int, float)) and
            isinstance(before.get(k), (int, float)) else None for k in after}


def prediction(index: int, item: Item, before: dict, after: dict) -> dict:
    return {"index": index, "where": item.where, "prompt": question_of(item),
            "reference": item.reference.content, "reference_reasoning": item.reference.reasoning,
            "before": before, "after": after}


def before_cache_dir() -> Path:
    path = cache_dir() / "eval"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(recipe: Recipe, hardware: Hardware, items: list[Item]) -> str:
    """Hash of everything the base model's results depend on: model, loading, eval rows, generation."""
    m = recipe.model
    fields = {
        "version": CACHE_VERSION, "base": m.base, "path": base_path(m), "quantization": m.quantization,
        "dtype": m.dtype, "backend": choose_backend(m, hardware), "device": hardware.name,
        "max_seq_length": m.max_seq_length, "train_turns": recipe.data.train_turns,
        "overlong": recipe.data.overlong, "max_new_tokens": recipe.eval.max_new_tokens,
        "batch_size": recipe.eval.batch_size, "decoding": "greedy",
        "rows": [[asdict(msg) for msg in item.messages] for item in items],
    }
    text = json.dumps(fields, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def read_cached(path: Path, n: int) -> Outputs | None:
    """The cached base-model outputs, or None when missing, unreadable or of another shape."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        outputs = Outputs(list(record["completions"]), float(record["loss_sum"]), int(record["loss_tokens"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if record.get("version") != CACHE_VERSION or len(outputs.completions) != n:
        return None
    return outputs


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _free_memory(hardware: Hardware) -> None:
    gc.collect()
    if hardware.cuda:
        import torch

        torch.cuda.empty_cache()

