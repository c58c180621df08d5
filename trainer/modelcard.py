"""`adapter/README.md`: a Hugging Face model card for the trained weights, in place of PEFT's empty template.

It says what the weights are (base, method), what they learned from (data, recipe), how well (training and,
once `make eval` ran, evaluation figures), how to load them, and under which license the base model is. The
YAML front matter is the metadata the Hub reads (`base_model`, `library_name`, `license`, `tags`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from trainer.config import TINY, Recipe
from trainer.runs import ADAPTER, write_text

CARD = "README.md"
R1_LICENSES = {"Llama-8B": "llama3.1", "Llama-70B": "llama3.3"}
"""DeepSeek releases every R1-Distill checkpoint under MIT; the Llama ones also carry their base's license."""


def base_license(base: str) -> tuple[str, str]:
    """(Hub license id, one line for the card) of the base model, as far as it can be known offline."""
    if base == TINY:
        return "other", ("The embedded tiny test model: random weights built by this project around Qwen2's tokenizer "
                         "(Apache-2.0, from llama.cpp's test vocabulary); a pipeline check, not a model to share.")
    name = base.rstrip("/").split("/")[-1]
    if name.startswith("DeepSeek-R1-Distill-"):
        extra = next((lic for key, lic in R1_LICENSES.items() if key in name), None)
        note = f"; derived from Llama, so the {extra} license applies as well" if extra else ""
        return "mit", f"`{base}` is released by DeepSeek under the MIT license{note}."
    declared = _declared_license(Path(base).expanduser())
    if declared:
        return declared, f"The base model folder declares the `{declared}` license: check its terms."
    return "other", f"The license of `{base}` is not known here: check the base model's card before sharing."


def _declared_license(folder: Path) -> str | None:
    """The `license:` of a local base model's own card, if it has one."""
    card = folder / CARD
    if not card.is_file():
        return None
    match = re.match(r"---\n(.*?)\n---", card.read_text(encoding="utf-8", errors="replace"), re.S)
    try:
        meta = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError:
        return None
    return str(meta["license"]) if isinstance(meta, dict) and meta.get("license") else None


def write_model_card(run_dir: Path, recipe: Recipe) -> Path:
    """Write (or refresh, after `make eval`) the card of a run's trained weights."""
    run_dir = Path(run_dir)
    path = run_dir / ADAPTER / CARD
    write_text(path, model_card(run_dir, recipe))
    return path


def model_card(run_dir: Path, recipe: Recipe) -> str:
    training, evaluation = _read_json(run_dir / "metrics.json"), _read_json(run_dir / "eval_metrics.json")
    license_id, license_line = base_license(recipe.model.base)
    lora = recipe.train.method == "lora"
    meta = {"base_model": recipe.model.base, "library_name": "peft" if lora else "transformers",
            "license": license_id, "pipeline_tag": "text-generation",
            "tags": ["deepseek-r1", "reasoning", "r1-tune", "sft", *(["lora"] if lora else [])]}
    if recipe.model.base == TINY:
        meta.pop("base_model")  # not a Hub model: the metadata would point nowhere
    parts = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {run_dir.name}", "",
             f"{_method(recipe)} of `{recipe.model.base}` trained with r1-tune's `{recipe.name}` recipe"
             + (f": {recipe.description}" if recipe.description else "."), "",
             "## Data", "", *_data_lines(recipe, training), "",
             "## Training", "", *_recipe_lines(recipe), "",
             "## Results", "", *_result_lines(training, evaluation), "",
             "## How to use", "", *_usage(run_dir, recipe), "",
             "## License", "", license_line, ""]
    return "\n".join(parts)


def _method(recipe: Recipe) -> str:
    if recipe.train.method == "lora":
        return f"A LoRA adapter (rank {recipe.lora.rank}, alpha {recipe.lora.alpha})"
    if recipe.train.method == "freeze":
        return f"A fine-tune of the top {recipe.train.freeze_trainable_layers} layers"
    return "A full fine-tune"


def _data_lines(recipe: Recipe, training: dict) -> list[str]:
    d = recipe.data
    local = Path(d.path).is_absolute() or Path(d.path).exists()
    source = f"the local file `{Path(d.path).name}`" if local else f"the Hub dataset `{d.path}`"
    lines = [f"- {source} ({d.format} format){f', at most {d.max_samples} rows' if d.max_samples else ''}"]
    lines += [f"- mixed in: `{Path(m.path).name}` at {m.ratio} rows per row" for m in d.mix]
    examples = training.get("examples") or {}
    if examples:
        lines.append(f"- {examples.get('train', 'n/a')} training examples, {examples.get('eval', 'n/a')} held out "
                     "for evaluation")
    if d.system:
        lines.append(f"- system prompt: {d.system!r}")
    return lines


def _recipe_lines(recipe: Recipe) -> list[str]:
    t, m = recipe.train, recipe.model
    length = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs:g} epochs"
    return [f"- {length}, batch {t.batch_size} x {t.gradient_accumulation} accumulation, learning rate "
            f"{t.learning_rate:g} ({t.lr_scheduler}), seed {t.seed}",
            f"- base loaded as {m.quantization}, sequences up to {m.max_seq_length} tokens; the loss covers the "
            "reasoning and the answer (`<think>…</think>` kept), not the prompt",
            f"- LoRA target modules: {', '.join(recipe.lora.target_modules)}" if t.method == "lora" else
            f"- method: {t.method}",
            "- the whole resolved recipe is `config.yaml` in the run folder"]


def _result_lines(training: dict, evaluation: dict) -> list[str]:
    lines = []
    if training:
        lines.append(f"- training loss {_num(training.get('first_loss'))} -> {_num(training.get('final_loss'))} "
                     f"over {training.get('steps', 'n/a')} steps; eval loss {_num(training.get('eval_loss'))}")
    if evaluation:
        from trainer.evaluation.report import metric_table

        lines += ["", f"Held-out evaluation ({evaluation.get('samples')} rows, greedy; from `make eval`):", "",
                  metric_table(evaluation)]
    else:
        lines.append("- not evaluated yet: `make eval RUN=...` adds the before/after table here")
    return lines


def _usage(run_dir: Path, recipe: Recipe) -> list[str]:
    folder = str(run_dir / ADAPTER)
    if recipe.train.method == "lora":
        code = ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
                f'model = AutoPeftModelForCausalLM.from_pretrained("{folder}")  # loads the base, then the adapter',
                f'tokenizer = AutoTokenizer.from_pretrained("{folder}")']
    else:
        code = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                f'model = AutoModelForCausalLM.from_pretrained("{folder}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{folder}")']
    code += ['messages = [{"role": "user", "content": "..."}]',
             "prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)",
             "ids = tokenizer(prompt, add_special_tokens=False, return_tensors='pt')",
             "print(tokenizer.decode(model.generate(**ids, max_new_tokens=1024, do_sample=True, temperature=0.6, "
             "top_p=0.95)[0]))"]
    return ["The prompt ends in `<think>\\n`: the model writes its reasoning, `</think>`, then the answer. "
            "DeepSeek recommends temperature 0.6 and top_p 0.95.", "", "```python", *code, "```", "",
            f"In this project: `make chat RUN={run_dir}`; `make gguf RUN={run_dir}` writes "
            "verified GGUF files for llama.cpp and Ollama."]


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
