"""The variants and what each runs inside its own subprocess (`python -m bench _child JOB.json`).

(a) `seed`: the seed scripts' method. HF `Trainer` (not SFTTrainer); the row as one text string, tokenized with
    padding="max_length" and truncation at 512 (cutting the reasoning); `DataCollatorForLanguageModeling(mlm=False)`,
    so labels = input_ids with pad positions at -100 (the tokenizer pads with eos, as the real one does, so eos is
    masked too, as in the seeds); bitsandbytes nf4 (double quant, bf16 compute), `prepare_model_for_kbit_training`
    without gradient checkpointing, PEFT LoRA r=16 alpha=32 dropout=0.05 on q_proj/v_proj; AdamW (torch); 2 x 4.
(b) `project` on transformers: the project's own load_recipe (recipes/medical.yaml) -> load_tokenizer ->
    load_for_training -> build_trainer with model.backend=transformers: bnb 4-bit + PEFT, all linear r=16 alpha=16,
    gradient checkpointing, adamw_8bit, prompt masked, 2 x 4.
(c) `notebook`: bare Unsloth as its notebooks do it: FastLanguageModel 4-bit, get_peft_model r=16 alpha=16 all
    linear, use_gradient_checkpointing="unsloth", TRL SFTTrainer on a `text` column (the same rendered row), loss on
    every token (no train_on_responses_only), packing=False, adamw_8bit, lr 2e-4, linear schedule, 2 x 4.
(d*) `project` on Unsloth: the same project calls with model.backend=unsloth; settings differ by recipe overrides
    (packing, batch size) or by Unsloth's own padding choice.
Everything else (rows, steps, warm-up, timing) is the same for all of them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MEDICAL_RECIPE = ROOT / "recipes" / "medical.yaml"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Variant:
    name: str
    runner: str
    """`seed`, `project` or `notebook`."""
    summary: str
    backend: str = "transformers"
    overrides: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    batch_size: int = 2
    grad_accum: int = 4
    cuda_only: bool = False
    unsloth_first: bool = False
    """Import unsloth before anything else (the product's CLI now does this itself, through start_engine)."""
    profile: str = "none"
    """A card (4060, 4090): the settings trainer.plan chooses for it replace the variant's."""


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("a", "seed", "seed scripts: Trainer, pad+cut to 512, loss on prompt too, LoRA q/v, no ckpt"),
    Variant("b", "project", "project, transformers+bnb+PEFT, prompt masked, 2x4"),
    Variant("b-pack", "project", "project, transformers+bnb+PEFT, packing=true (sdpa)",
            overrides=("train.packing=true",)),
    Variant("c", "notebook", "bare Unsloth notebook, loss on all tokens, 2x4", cuda_only=True),
    Variant("d", "project", "project, Unsloth (auto padding-free), 2x4", "unsloth", cuda_only=True),
    Variant("d-pack", "project", "project, Unsloth, packing=true, 2x4", "unsloth", ("train.packing=true",),
            cuda_only=True),
    Variant("d-bs8", "project", "project, Unsloth, batch 8x1", "unsloth", batch_size=8, grad_accum=1,
            cuda_only=True),
    Variant("d-bs4", "project", "project, Unsloth, batch 4x2", "unsloth", batch_size=4, grad_accum=2,
            cuda_only=True),
    Variant("d-padded", "project", "project, Unsloth padded batches + block compile", "unsloth",
            env=(("UNSLOTH_PADDING_CHOICE", "padded"),), cuda_only=True),
    Variant("d-nll", "project", "project, Unsloth, train.loss=nll (Unsloth's fused CE)", "unsloth",
            ("train.loss=nll",), cuda_only=True),
    Variant("d-early", "project", "project, Unsloth imported first", "unsloth", cuda_only=True, unsloth_first=True),
    Variant("p-4060", "project", "project, Unsloth, settings planned for a 4060 (8 GB)", "unsloth", cuda_only=True,
            profile="4060"),
    Variant("p-4090", "project", "project, Unsloth, settings planned for a 4090 (24 GB)", "unsloth", cuda_only=True,
            profile="4090"),
)}
DEFAULT_VARIANTS = ("a", "b", "c", "d", "d-pack", "d-bs8")


def expand(names: str) -> list[Variant]:
    from trainer.errors import UserError

    wanted = DEFAULT_VARIANTS if names in ("", "all") else tuple(n.strip() for n in names.split(",") if n.strip())
    unknown = [n for n in wanted if n not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant(s) {', '.join(unknown)}", where="--variants",
                        fix=f"use some of {', '.join(VARIANTS)}")
    return [VARIANTS[n] for n in wanted]


def batch_of(variant: Variant, job: dict) -> tuple[int, int]:
    return job.get("batch_size") or variant.batch_size, job.get("grad_accum") or variant.grad_accum


def project_overrides(job: dict, variant: Variant, max_length: int, run_dir: Path) -> list[str]:
    batch, accum = batch_of(variant, job)
    sizes = [f"model.max_seq_length={max_length}", f"train.batch_size={batch}",
             f"train.gradient_accumulation={accum}"] if variant.profile == "none" else []
    return [f"profile={variant.profile}", f"model.base={job['shape_dir']}", f"model.backend={variant.backend}",
            f"model.quantization={'4bit' if job['quantize'] else 'none'}", *sizes,
            "data.val_size=0", f"train.max_steps={job['warmup'] + job['steps']}", "train.eval_steps=null",
            "train.checkpoint_steps=null", "train.early_stopping_patience=null", "train.logging_steps=1",
            f"train.output_dir={run_dir}", *variant.overrides]


def project_trainer(job: dict, variant: Variant, spec, rows: list[dict], run_dir: Path):
    """(b), (d) and (p): the product's own calls, in the order its CLI makes them."""
    from trainer.data.dataset import DataReport, Prepared
    from trainer.hardware import detect
    from trainer.model import load_for_training, load_tokenizer, start_engine
    from trainer.recipe import load_recipe
    from trainer.runs import RunLog
    from trainer.data.template import Encoded
    from trainer.training.sft import build_trainer

    hardware = detect()
    overrides = project_overrides(job, variant, spec.max_length, run_dir)
    recipe = load_recipe(MEDICAL_RECIPE, overrides, hardware)
    if variant.profile != "none":  # p-4060 / p-4090: the settings trainer.plan chooses for that card
        from trainer.cli import planned

        recipe = planned(recipe, hardware)[0]
    start_engine(recipe, hardware)  # as the CLI does: Unsloth before transformers, TRL and PEFT
    tokenizer = load_tokenizer(recipe.model)
    examples = [Encoded(r["input_ids"], r["labels"], r["truncated"], where=f"row {i}") for i, r in enumerate(rows)]
    loaded = load_for_training(recipe, hardware, tokenizer)
    trainer, _ = build_trainer(recipe, loaded, Prepared(examples, [], [], DataReport()), hardware, run_dir, RunLog())
    args = trainer.args
    return trainer, {"backend": loaded.backend, "overrides": overrides, "packing": bool(args.packing),
                     "padding_free": getattr(args, "padding_free", None), "optim": str(args.optim),
                     "gradient_checkpointing": bool(args.gradient_checkpointing),
                     "loss_type": getattr(args, "loss_type", None),
                     "attn_implementation": getattr(trainer.model.config, "_attn_implementation", None)}


def seed_trainer(job: dict, variant: Variant, spec, rows: list[dict], run_dir: Path):
    """(a) The seed scripts' method (see the module docstring)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                              TrainingArguments)

    cuda = torch.cuda.is_available()
    path = job["shape_dir"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer([r["text"] for r in rows], truncation=True, max_length=spec.seed_length,
                        padding="max_length")
    dataset = Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if cuda else torch.float32}
    if job["quantize"]:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if job["quantize"]:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    elif cuda:
        model = model.to("cuda")
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none",
                                             target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    batch, accum = batch_of(variant, job)
    args = TrainingArguments(
        output_dir=str(run_dir), per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
        learning_rate=2e-4, max_steps=job["warmup"] + job["steps"], logging_steps=1, bf16=cuda,
        save_strategy="no", report_to="none", use_cpu=not cuda, disable_tqdm=True, seed=42)
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    return trainer, {"backend": "transformers", "pad_length": spec.seed_length, "pad_is_eos":
                     tokenizer.pad_token_id == tokenizer.eos_token_id, "optim": str(args.optim)}


def notebook_trainer(job: dict, variant: Variant, spec, rows: list[dict], run_dir: Path):
    """(c) Bare Unsloth with its notebook defaults (see the module docstring)."""
    from unsloth import FastLanguageModel  # noqa: I001  (first, as the notebooks do)
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=job["shape_dir"], max_seq_length=spec.max_length, dtype=None, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(
        model, r=16, target_modules=ALL_LINEAR, lora_alpha=16, lora_dropout=0, bias="none",
        use_gradient_checkpointing="unsloth", random_state=3407, use_rslora=False)
    batch, accum = batch_of(variant, job)
    args = SFTConfig(
        dataset_text_field="text", max_length=spec.max_length, packing=False,
        per_device_train_batch_size=batch, gradient_accumulation_steps=accum, warmup_steps=5,
        max_steps=job["warmup"] + job["steps"], learning_rate=2e-4, logging_steps=1, optim="adamw_8bit",
        weight_decay=0.01, lr_scheduler_type="linear", seed=3407, output_dir=str(run_dir), report_to="none",
        bf16=True, save_strategy="no")
    trainer = SFTTrainer(model=model, processing_class=tokenizer, args=args,
                         train_dataset=Dataset.from_dict({"text": [r["text"] for r in rows]}))
    return trainer, {"backend": "unsloth", "padding_free": getattr(trainer.args, "padding_free", None),
                     "loss_on": "all tokens"}


RUNNERS = {"seed": seed_trainer, "project": project_trainer, "notebook": notebook_trainer}


def run_job(job: dict) -> dict[str, Any]:
    """Build one variant's trainer, run warm-up + timed steps, return the counts and timings (in this process)."""
    variant = VARIANTS[job["variant"]]
    for key, value in variant.env:
        os.environ[key] = value
    if variant.unsloth_first:
        import unsloth  # noqa: F401

    import torch

    from bench.measure import make_meter
    from bench.shapes import shape_facts
    from bench.workload import load_rows

    spec, rows = load_rows(Path(job["rows"]))
    run_dir = Path(job["work"]) / "runs" / f"{job['shape']}-{variant.name}"
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    trainer, info = RUNNERS[variant.runner](job, variant, spec, rows, run_dir)
    cuda = torch.cuda.is_available()
    meter = make_meter(job["warmup"], job["steps"], cuda)
    meter.attach(trainer)
    trainer.train()
    card = torch.cuda.get_device_name(0) if cuda else "cpu"
    return {"result": meter.result(), "info": info, "card": card, "cuda": torch.version.cuda,
            "facts": shape_facts(Path(job["shape_dir"]))}

