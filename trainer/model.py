"""Load the base model and tokenizer, and put the trainable part (LoRA, all weights, top layers) on it.

Two engines behind one function: Unsloth's `FastLanguageModel` where a CUDA GPU and unsloth are present, and
transformers + PEFT (+ bitsandbytes for 4/8-bit on CUDA) everywhere else. Only this module imports unsloth
or bitsandbytes, and only inside the functions that need them.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.config import TINY, ModelConfig, Recipe
from trainer.config import LoraConfig as LoraSettings
from trainer.errors import UserError
from trainer.hardware import Hardware
from trainer.r1 import chat_template as r1_chat_template

PAD_CANDIDATES = ("<|vision_pad|>", "<|finetune_right_pad_id|>", "<｜▁pad▁｜>", "<|fim_pad|>", "<pad>")
"""Unused tokens that real R1-Distill vocabularies have, tried in order as a pad distinct from eos."""


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    backend: str
    """`unsloth` or `transformers`."""


def base_path(model: ModelConfig) -> str:
    """The hub id or folder to load: `tiny` means the embedded offline model, built on first use."""
    if model.base == TINY:
        from trainer.fixtures.tiny_qwen import tiny_model_path

        return str(tiny_model_path())
    if not Path(model.base).expanduser().exists():
        from trainer.hub import require_hub

        require_hub(model.base, "model.base")  # at once, rather than after a minute of retries
    return model.base


def choose_backend(model: ModelConfig, hardware: Hardware) -> str:
    if model.backend != "auto":
        if model.backend == "unsloth" and not (hardware.cuda and _installed("unsloth")):
            raise UserError("model.backend=unsloth needs a CUDA GPU and the unsloth package",
                            where="model.backend", fix="use model.backend=auto, or run `make setup` on a GPU machine")
        return model.backend
    return "unsloth" if hardware.cuda and _installed("unsloth") else "transformers"


def start_engine(recipe: Recipe, hardware: Hardware) -> str:
    """Choose the backend and, for Unsloth, import it now: it patches transformers, TRL and PEFT, so it must
    come before any of them is imported (the tokenizer and the chat template load them)."""
    backend = training_backend(recipe, hardware)
    if not hardware.cuda:
        # DeepSpeed (installed for multi-GPU runs) is imported by the Trainer and, left to detect the device,
        # warns on every CPU run that it found no accelerator.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if backend == "unsloth":
        ignore_torchao_syntax_warnings()
        import unsloth  # noqa: F401
    hide_weight_loading_bar()
    return backend


def ignore_torchao_syntax_warnings() -> None:
    """torchao (imported by Unsloth) has regex strings with invalid escapes; Python warns about each one while
    compiling its modules, a screen of SyntaxWarnings that say nothing about this run."""
    import warnings

    warnings.filterwarnings("ignore", category=SyntaxWarning, module=r".*torchao")


LIBRARY_BARS = ("Loading weights",)
"""transformers' own progress bars that come before ours and tell a user nothing (a model loads in seconds and
the next line says so); downloads keep theirs."""


def hide_weight_loading_bar() -> None:
    from transformers.utils import logging as hf_logging

    def hook(factory, args, kwargs):
        if str(kwargs.get("desc", "")).startswith(LIBRARY_BARS):
            return hf_logging.EmptyTqdm(*args, **kwargs)
        return factory(*args, **kwargs)

    hf_logging.set_tqdm_hook(hook)


def training_backend(recipe: Recipe, hardware: Hardware) -> str:
    """`choose_backend`, except that sharded multi-GPU strategies (FSDP, ZeRO) always use transformers + PEFT."""
    from trainer.training.distributed import strategy_of, uses_unsloth

    if uses_unsloth(recipe):
        return choose_backend(recipe.model, hardware)
    if recipe.model.backend == "unsloth":
        raise UserError(f"Unsloth does not run under train.strategy={strategy_of(recipe)}", where="model.backend",
                        fix="use model.backend=auto (transformers + PEFT there) or train.strategy=ddp")
    return "transformers"


def load_tokenizer(model: ModelConfig):
    """The base tokenizer with the original R1 chat template and a pad token distinct from eos."""
    from transformers import AutoTokenizer

    path = base_path(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model.trust_remote_code)
    except OSError as exc:
        raise _load_error(path, exc) from None
    tokenizer.chat_template = r1_chat_template()
    tokenizer.padding_side = "right"
    set_distinct_pad(tokenizer)
    return tokenizer


def set_distinct_pad(tokenizer) -> None:
    """R1 tokenizers pad with eos; a collator that masks pad would then never train the end of an answer."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    vocab = tokenizer.get_vocab()
    for token in PAD_CANDIDATES:
        if token in vocab and vocab[token] != tokenizer.eos_token_id:
            tokenizer.pad_token = token
            return
    raise UserError("the tokenizer has no spare token to pad with, only its end-of-sequence token",
                    where="model.base", fix="use a tokenizer with an unused special token such as <|vision_pad|>")


def torch_dtype(model: ModelConfig, hardware: Hardware):
    import torch

    if model.dtype != "auto":
        return getattr(torch, model.dtype)
    if not hardware.cuda:
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_for_training(recipe: Recipe, hardware: Hardware, tokenizer) -> Loaded:
    """The base model with its trainable part, ready for the trainer."""
    from transformers import set_seed

    backend = training_backend(recipe, hardware)
    if recipe.model.quantization != "none" and not hardware.cuda:
        raise UserError(f"{recipe.model.quantization} loading needs a CUDA GPU", where="model.quantization",
                        fix="set model.quantization=none to train in full precision on this machine")
    set_seed(recipe.train.seed)  # the adapter's initial weights, so that equal recipes start from equal adapters
    if backend == "unsloth":
        model = _unsloth_model(recipe, hardware)
    else:
        model = _transformers_model(recipe, hardware)
    align_token_ids(model, tokenizer)
    return Loaded(model, tokenizer, backend)


def align_token_ids(model, tokenizer) -> None:
    """Give the model's config and generation config the tokenizer's pad, bos and eos ids.

    The Trainer does the same, but warns "The tokenizer has new PAD/BOS/EOS tokens" on every run: our pad is
    deliberately not R1's (eos), see `set_distinct_pad`. The generation config keeps its other eos ids.
    """
    generation = getattr(model, "generation_config", None)
    for config in filter(None, (model.config, generation)):
        config.pad_token_id, config.bos_token_id = tokenizer.pad_token_id, tokenizer.bos_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    if generation is not None:
        eos = generation.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        generation.eos_token_id = eos if tokenizer.eos_token_id in eos else [tokenizer.eos_token_id, *eos]


def _unsloth_model(recipe: Recipe, hardware: Hardware):
    from unsloth import FastLanguageModel  # unsloth must be imported before transformers/peft

    from trainer.training.distributed import launched, local_rank

    m, lora, method = recipe.model, recipe.lora, recipe.train.method
    model, _ = FastLanguageModel.from_pretrained(
        model_name=base_path(m), max_seq_length=m.max_seq_length, dtype=torch_dtype(m, hardware),
        load_in_4bit=m.quantization == "4bit", load_in_8bit=m.quantization == "8bit",
        full_finetuning=method != "lora", trust_remote_code=m.trust_remote_code,
        use_gradient_checkpointing="unsloth" if recipe.train.gradient_checkpointing else False,
        **({"device_map": {"": local_rank()}} if launched() else {}))  # DDP: one whole model per GPU
    if method == "lora":
        model = FastLanguageModel.get_peft_model(
            model, **lora_settings(lora),
            use_gradient_checkpointing="unsloth" if recipe.train.gradient_checkpointing else False,
            random_state=recipe.train.seed, max_seq_length=m.max_seq_length, **_kept_layers(recipe))
    elif method == "freeze":
        freeze_all_but_top(model, recipe.train.freeze_trainable_layers)
    return model


def _kept_layers(recipe: Recipe) -> dict:
    """Partial checkpointing (train.checkpoint_keep_layers, chosen by trainer.plan): Unsloth's own switch."""
    keep = recipe.train.checkpoint_keep_layers if recipe.train.gradient_checkpointing else 0
    return {"checkpoint_skip_layers": keep} if keep else {}


def _transformers_model(recipe: Recipe, hardware: Hardware):
    return _attach_trainable(_transformers_base(recipe, hardware, base_path(recipe.model)), recipe)


def _transformers_base(recipe: Recipe, hardware: Hardware, path: str):
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.training.distributed import local_rank, sharded

    m = recipe.model
    kwargs: dict[str, Any] = dict(dtype=torch_dtype(m, hardware), trust_remote_code=m.trust_remote_code,
                                  use_safetensors=True)
    if m.quantization != "none" and hardware.cuda:  # on a CPU (inference only) load full precision
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=m.quantization == "4bit", load_in_8bit=m.quantization == "8bit",
            bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"])
        kwargs["device_map"] = {"": local_rank()}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise _load_error(path, exc) from None
    if hardware.cuda and m.quantization == "none" and not sharded(recipe):
        model = model.to(torch.device("cuda", local_rank()))
    return model


def _attach_trainable(model, recipe: Recipe):
    method, lora = recipe.train.method, recipe.lora
    if method == "full":
        return model
    if method == "freeze":
        freeze_all_but_top(model, recipe.train.freeze_trainable_layers)
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if recipe.model.quantization != "none":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=recipe.train.gradient_checkpointing)
    config = LoraConfig(**lora_settings(lora), task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # PEFT names the target modules it could not find
        raise UserError(str(exc).splitlines()[0], where="lora.target_modules",
                        fix="use layer names of this model, e.g. q_proj, v_proj") from None


def lora_settings(lora: LoraSettings) -> dict[str, Any]:
    """The recipe's `lora:` section as keyword arguments of PEFT's `LoraConfig`, which Unsloth's
    `get_peft_model` takes too: the one place where recipe names become PEFT's."""
    return {"r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
            "target_modules": list(lora.target_modules), "use_rslora": lora.use_rslora, "bias": "none"}


def lora_scale(model) -> float:
    """The factor every LoRA update B @ A is multiplied by, as PEFT set it on the model's layers (alpha / r, or
    alpha / sqrt(r) with rsLoRA). Training records it in metrics.json; the merge applies it from there."""
    scales = {float(s) for module in model.modules() if isinstance(getattr(module, "scaling", None), dict)
              for s in module.scaling.values()}
    if len(scales) != 1:
        raise UserError(f"expected one LoRA scale on the model, found {sorted(scales) or 'none'}",
                        where="lora", fix="per-layer ranks or alphas are not supported")
    return scales.pop()


def freeze_all_but_top(model, trainable_layers: int) -> None:
    """LLaMA-Factory's `freeze` method: only the top N decoder layers learn."""
    layers = _decoder_layers(model)
    if trainable_layers > len(layers):
        raise UserError(f"the model has {len(layers)} layers, fewer than {trainable_layers}",
                        where="train.freeze_trainable_layers", fix=f"use at most {len(layers)}")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for layer in layers[len(layers) - trainable_layers:]:
        for parameter in layer.parameters():
            parameter.requires_grad_(True)


def _decoder_layers(model):
    inner = model
    for attribute in ("base_model", "model"):
        while hasattr(inner, attribute) and not hasattr(inner, "layers"):
            inner = getattr(inner, attribute)
    if not hasattr(inner, "layers"):
        raise UserError("cannot find the decoder layers of this model", where="train.method",
                        fix="use train.method=lora or full")
    return inner.layers


def trainable_summary(model) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / max(total, 1):.2f}%)"


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _load_error(path: str, exc: Exception) -> UserError:
    local = Path(path).expanduser()
    if local.exists():
        return UserError(f"cannot load a model from this folder: {str(exc).splitlines()[0]}", where=path,
                         fix="it must hold config.json, safetensors weights and the tokenizer")
    return UserError(f"cannot load '{path}': {str(exc).splitlines()[0][:300]}", where="model.base",
                     fix="check the hub id; without hub access, download the model elsewhere and set "
                         "model.base=/path/to/folder")


def load_for_inference(recipe: Recipe, hardware: Hardware, weights: Path | None = None) -> Loaded:
    """The base model, or the trained one when `weights` is a run's `adapter/` folder, ready to generate."""
    backend = choose_backend(recipe.model, hardware)
    full = weights is not None and not (Path(weights) / "adapter_config.json").is_file()
    if weights is not None:
        _require_safetensors(Path(weights), "adapter_model.safetensors" if not full else "*.safetensors")
    source = str(weights) if full else base_path(recipe.model)
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        model, _ = FastLanguageModel.from_pretrained(
            model_name=str(weights) if weights is not None else source,
            max_seq_length=recipe.model.max_seq_length, dtype=torch_dtype(recipe.model, hardware),
            load_in_4bit=recipe.model.quantization == "4bit", load_in_8bit=recipe.model.quantization == "8bit",
            trust_remote_code=recipe.model.trust_remote_code)
        FastLanguageModel.for_inference(model)
    else:
        model = _transformers_base(recipe, hardware, source)
        if weights is not None and not full:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(weights))
            if recipe.model.quantization == "none" or not hardware.cuda:
                model = model.merge_and_unload()  # same outputs, and generation runs at the base model's speed
        model.eval()
    tokenizer = load_tokenizer(recipe.model) if weights is None else _run_tokenizer(weights)
    return Loaded(model, tokenizer, backend)


def _require_safetensors(folder: Path, pattern: str) -> None:
    """Weights are only ever read from safetensors: a pickle (.bin/.pt) can run code when loaded."""
    if not list(folder.glob(pattern)):
        raise UserError(f"no {pattern} here; only safetensors weights are loaded", where=str(folder),
                        fix="re-save the weights with safe_serialization=True")


def _run_tokenizer(weights: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(weights))
    tokenizer.chat_template = r1_chat_template()
    set_distinct_pad(tokenizer)
    return tokenizer
