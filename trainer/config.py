"""The recipe schema: one frozen dataclass per section, each field with a one-line docstring.

YAML keys are the field names. Loading, overrides, profiles and validation live in `trainer.recipe`; this
module only says what a recipe may contain and which values make sense together (`check`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Format = Literal["alpaca", "sharegpt", "messages", "reasoning", "classification"]
TINY = "tiny"


@dataclass(frozen=True)
class ModelConfig:
    base: str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    """Base model: a hub id, a local folder, or `tiny` for the embedded offline test model."""
    quantization: Literal["4bit", "8bit", "none"] = "4bit"
    """How the base weights are loaded for training: 4-bit (QLoRA), 8-bit, or 16-bit (`none`)."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Compute dtype; `auto` picks bfloat16 where the GPU supports it, else float16, and float32 on a CPU."""
    max_seq_length: int = 2048
    """Longest training sequence in tokens (prompt plus reasoning plus answer)."""
    backend: Literal["auto", "unsloth", "transformers"] = "auto"
    """Training engine: `auto` uses Unsloth when a CUDA GPU and unsloth are present, else transformers + PEFT."""
    trust_remote_code: bool = False
    """Allow the base model's repository to run its own Python code; off unless you trust it."""


@dataclass(frozen=True)
class Columns:
    question: str = "question"
    """Reasoning format: column holding the question."""
    reasoning: str = "reasoning"
    """Reasoning format: column holding the chain of thought."""
    answer: str = "answer"
    """Reasoning format: column holding the final answer."""
    instruction: str = "instruction"
    """Alpaca format: column holding the instruction."""
    input: str = "input"
    """Alpaca format: column holding the optional input appended to the instruction."""
    output: str = "output"
    """Alpaca format: column holding the response (may contain a <think> block)."""
    conversations: str = "conversations"
    """ShareGPT format: column holding the list of {from, value} turns."""
    messages: str = "messages"
    """Messages format: column holding the list of {role, content} turns."""
    text: str = "text"
    """Classification format: column holding the text to classify."""
    label: str = "label"
    """Classification format: column holding the label (an index into `labels`, or the label name)."""
    system: str = "system"
    """Any format: optional column with a per-row system prompt."""
    history: str = "history"
    """Alpaca format: optional column of earlier [instruction, response] pairs (LLaMA-Factory's layout)."""
    tools: str = "tools"
    """ShareGPT and messages formats: tool definitions; rows that have them are refused (not supported)."""


@dataclass(frozen=True)
class Tags:
    """ShareGPT format: the keys and speaker names of each turn (LLaMA-Factory's `tags`)."""

    role_tag: str = "from"
    """Key of a turn's speaker."""
    content_tag: str = "value"
    """Key of a turn's text."""
    user_tag: str = "human"
    """Speaker name of user turns (`user` is accepted too)."""
    assistant_tag: str = "gpt"
    """Speaker name of assistant turns (`assistant` is accepted too)."""
    system_tag: str = "system"
    """Speaker name of a system turn."""
    observation_tag: str = "observation"
    """Speaker name of tool results: refused, tool calls are not supported."""
    function_tag: str = "function_call"
    """Speaker name of tool calls: refused, tool calls are not supported."""


@dataclass(frozen=True)
class Source:
    path: str = ""
    """Data file (.jsonl, .json, .csv, .parquet), a hub dataset id, or LLaMA-Factory's dataset_info.json (+ `name`)."""
    format: Format = "messages"
    """Row layout: alpaca, sharegpt, messages, reasoning (column-mapped) or classification."""
    name: str | None = None
    """Hub dataset subset, e.g. `en` for medical-o1-reasoning-SFT; with a dataset_info.json, the dataset's key."""
    split: str = "train"
    """Split to read from a hub dataset (ignored for local files)."""
    columns: Columns = field(default_factory=Columns)
    """Column names for the chosen format."""
    tags: Tags = field(default_factory=Tags)
    """ShareGPT format: turn keys and speaker names."""
    replace: dict[str, str] = field(default_factory=dict)
    """Text put in place in every row, e.g. {"{{name}}": "MedBot"} for LLaMA-Factory's identity.json."""
    labels: list[str] = field(default_factory=list)
    """Classification format: label names; integer labels index into this list."""
    prompt: str = "{text}"
    """Classification format: user prompt; `{text}` is replaced by the row's text."""
    system: str | None = None
    """System prompt put before every conversation of this source (a row's own system column wins)."""
    max_samples: int | None = None
    """Use at most this many rows of this source (after the seeded shuffle)."""


@dataclass(frozen=True)
class MixSource(Source):
    ratio: float = 0.1
    """Rows taken from this source per row of the main dataset, e.g. 0.2 for one general row per five."""


@dataclass(frozen=True)
class DataConfig(Source):
    shuffle: bool = True
    """Shuffle rows (seeded by train.seed) before taking samples and splitting off the eval set."""
    val_size: float = 0.05
    """Eval rows split off the training data: a fraction below 1, or a row count from 1 up; 0 for none."""
    eval_path: str | None = None
    """Separate eval data (file or hub id, read with this section's format and columns); replaces val_size."""
    eval_split: str | None = None
    """Hub split for the eval data, e.g. `test`; with no eval_path it reads that split of `path`."""
    eval_max_samples: int | None = None
    """Use at most this many eval rows."""
    train_turns: Literal["all", "last"] = "all"
    """Multi-turn rows: train every assistant turn (one example each) or only the last one."""
    overlong: Literal["truncate", "drop"] = "truncate"
    """Examples longer than model.max_seq_length: cut at the limit (losing the end) or drop them."""
    mix: list[MixSource] = field(default_factory=list)
    """Extra datasets mixed in by ratio, e.g. general instructions against forgetting."""


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 16
    """LoRA rank r: the width of the low-rank update."""
    alpha: int = 32
    """LoRA alpha: the update is scaled by alpha / rank (alpha / sqrt(rank) with rsLoRA)."""
    dropout: float = 0.0
    """Dropout on the LoRA input; Unsloth is fastest at 0."""
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    """Linear layers that get adapters (names inside each decoder layer)."""
    use_rslora: bool = False
    """Rank-stabilised LoRA: scale by alpha / sqrt(rank), which keeps high ranks stable."""
    loraplus_lr_ratio: float | None = None
    """LoRA+: learning rate of the B matrices over that of A (e.g. 16); none for plain LoRA."""


@dataclass(frozen=True)
class TrainConfig:
    method: Literal["lora", "full", "freeze"] = "lora"
    """What is trained: LoRA adapters, every weight, or only the top `freeze_trainable_layers` layers."""
    freeze_trainable_layers: int = 2
    """Freeze method: number of top decoder layers left trainable."""
    epochs: float = 1.0
    """Passes over the training data (ignored when max_steps is set)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps; none to train for `epochs`."""
    batch_size: int = 2
    """Sequences per device per forward pass."""
    gradient_accumulation: int = 4
    """Forward passes per optimizer step; the effective batch is batch_size times this."""
    learning_rate: float = 2e-4
    """Peak learning rate."""
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule after warmup."""
    warmup_ratio: float = 0.03
    """Fraction of the steps spent warming the learning rate up from zero."""
    weight_decay: float = 0.0
    """Decoupled weight decay of the optimizer."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm."""
    optimizer: Literal["auto", "adamw_torch", "adamw_8bit", "paged_adamw_8bit", "sgd"] = "auto"
    """Optimizer; `auto` is 8-bit AdamW on a CUDA GPU and AdamW elsewhere."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: much less memory for some extra compute."""
    checkpoint_keep_layers: int = 0
    """Unsloth checkpointing: decoder layers that keep activations instead of recomputing (faster, more memory)."""
    planner: bool = True
    """On a CUDA GPU, fit batch, accumulation, pack length and checkpointing to the card (`make plan`)."""
    packing: bool = False
    """Pack several short examples into one sequence (they cannot attend to each other) for speed."""
    loss: Literal["auto", "nll", "chunked_nll"] = "auto"
    """Loss kernel: chunked_nll projects only trained tokens; auto: Unsloth's fused nll, else chunked on CUDA."""
    seed: int = 3407
    """Seed for shuffling, the eval split, adapter initialisation and dropout."""
    logging_steps: int = 1
    """Log loss, learning rate and tokens/s every this many steps."""
    eval_steps: int | None = None
    """Evaluate on the eval split every this many steps; none: once at the end."""
    early_stopping_patience: int | None = None
    """Stop when eval loss has not improved for this many evaluations (needs eval_steps); none: off."""
    checkpoint_steps: int | None = None
    """Save a resumable checkpoint every this many steps; none: no intermediate checkpoints."""
    keep_checkpoints: int = 2
    """Intermediate checkpoints kept on disk (the oldest are deleted)."""
    tensorboard: bool = False
    """Also write TensorBoard logs into the run folder."""
    output_dir: str = "runs"
    """Folder that receives one `<recipe>-<timestamp>` folder per run."""
    strategy: Literal["auto", "ddp", "fsdp", "zero2", "zero3"] = "auto"
    """Several GPUs (GPUS=N): ddp, fsdp, or DeepSpeed zero2/zero3 with CPU offload; auto: zero2 for full, else ddp."""


@dataclass(frozen=True)
class EvalConfig:
    samples: int = 50
    """Eval rows to generate answers for (before and after)."""
    max_new_tokens: int = 1024
    """Longest generated reasoning plus answer, in tokens."""
    batch_size: int = 8
    """Prompts generated at once."""


GGUF_TYPES = ("f16", "bf16", "q8_0", "q4_k_m", "q5_k_m", "q6_k")
"""GGUF types `make gguf` can write (export.gguf maps them to llama-quantize's names)."""


@dataclass(frozen=True)
class ExportConfig:
    quantizations: list[str] = field(default_factory=lambda: ["q4_k_m"])
    """GGUF types written by `make gguf`: f16, bf16, q8_0, q4_k_m, q5_k_m or q6_k."""


@dataclass(frozen=True)
class RewardsConfig:
    format: float = 1.0
    """Weight of the format reward: one `</think>`, a non-empty answer after it, an answer of bounded length."""
    correctness: float = 1.0
    """Weight of the correctness reward: the answer after `</think>` checked against the row's reference."""
    match: Literal["auto", "label", "exact", "rouge"] = "auto"
    """Correctness check: label (normalized), exact, rouge (ROUGE-L F1 >= rouge_threshold); auto: label for short answers."""
    rouge_threshold: float = 0.5
    """match=rouge: the ROUGE-L F1 (jieba words) an answer needs against its reference to count as correct."""
    max_answer_chars: int | None = None
    """Format reward: longest well-formed answer after `</think>`; none: twice the longest reference, at least 64."""


@dataclass(frozen=True)
class GrpoConfig:
    steps: int = 200
    """Optimizer steps of `make grpo` (each one samples num_generations completions of prompts_per_step prompts)."""
    num_generations: int = 8
    """Completions sampled per prompt; their rewards are compared with each other (the group in GRPO)."""
    prompts_per_step: int = 1
    """Prompts per optimizer step; the batch is prompts_per_step x num_generations completions."""
    max_completion_length: int = 512
    """Longest sampled completion (reasoning, `</think>` and answer) in tokens."""
    temperature: float = 1.0
    """Sampling temperature of the completions: GRPO learns only from groups whose rewards differ."""
    beta: float = 0.0
    """KL penalty towards the SFT adapter (a frozen copy of it); 0 drops the reference model and saves memory."""
    learning_rate: float = 5e-6
    """Peak learning rate of the adapter during GRPO."""
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    """Reward components and their weights."""


@dataclass(frozen=True)
class Recipe:
    name: str = ""
    """Recipe name; defaults to the file name and names the run folders."""
    description: str = ""
    """One line saying what this recipe teaches the model."""
    profile: str = "auto"
    """Hardware profile applied on top of the recipe: a key of `profiles`, `auto` (by GPU memory) or `none`."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model and how it is loaded."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data: where it comes from and how rows become conversations."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapter shape."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation and logging."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Generation settings for `make eval`."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """GGUF export settings for `make gguf`."""
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    """Reinforcement after SFT (`make grpo`): sampling, rewards and optimisation."""
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Named sets of overrides (same keys as the recipe) for `cpu`, `4060`, `4090`, ...; one is applied."""


def check(recipe: Recipe) -> list[tuple[str, str]]:
    """Return (dotted key, problem) for values that are well typed but do not make sense."""
    problems: list[tuple[str, str]] = []

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            problems.append((key, message))

    m, d, lora, t = recipe.model, recipe.data, recipe.lora, recipe.train
    need(bool(m.base.strip()), "model.base", "must name a model (a hub id, a folder or `tiny`)")
    need(m.max_seq_length >= 16, "model.max_seq_length", f"must be at least 16, got {m.max_seq_length}")
    need(d.val_size >= 0, "data.val_size", f"must be 0 or more, got {d.val_size}")
    need(d.val_size < 1 or float(d.val_size).is_integer(), "data.val_size",
         f"must be a fraction below 1 or a whole row count, got {d.val_size}")
    for i, source in enumerate([d, *d.mix]):
        prefix = "data" if i == 0 else f"data.mix.{i - 1}"
        _check_source(source, prefix, need)
        if i:
            need(source.ratio > 0, f"{prefix}.ratio", f"must be above 0, got {source.ratio}")
    for key in ("max_samples", "eval_max_samples"):
        value = getattr(d, key)
        need(value is None or value >= 1, f"data.{key}", f"must be at least 1, got {value}")
    need(lora.rank >= 1, "lora.rank", f"must be at least 1, got {lora.rank}")
    need(lora.alpha >= 1, "lora.alpha", f"must be at least 1, got {lora.alpha}")
    need(0 <= lora.dropout < 1, "lora.dropout", f"must be in [0, 1), got {lora.dropout}")
    need(bool(lora.target_modules), "lora.target_modules", "must name at least one layer")
    need(lora.loraplus_lr_ratio is None or lora.loraplus_lr_ratio > 0, "lora.loraplus_lr_ratio",
         "must be above 0")
    for key in ("batch_size", "gradient_accumulation", "logging_steps", "keep_checkpoints",
                "freeze_trainable_layers"):
        need(getattr(t, key) >= 1, f"train.{key}", f"must be at least 1, got {getattr(t, key)}")
    need(t.checkpoint_keep_layers >= 0, "train.checkpoint_keep_layers",
         f"must be 0 or more, got {t.checkpoint_keep_layers}")
    for key in ("max_steps", "eval_steps", "checkpoint_steps", "early_stopping_patience"):
        value = getattr(t, key)
        need(value is None or value >= 1, f"train.{key}", f"must be at least 1 or none, got {value}")
    need(t.epochs > 0, "train.epochs", f"must be above 0, got {t.epochs}")
    need(t.learning_rate > 0, "train.learning_rate", f"must be above 0, got {t.learning_rate}")
    need(0 <= t.warmup_ratio < 1, "train.warmup_ratio", f"must be in [0, 1), got {t.warmup_ratio}")
    need(t.early_stopping_patience is None or t.eval_steps is not None, "train.early_stopping_patience",
         "needs train.eval_steps: early stopping compares evaluations made during training")
    need(t.early_stopping_patience is None or d.val_size > 0 or d.eval_path or d.eval_split,
         "train.early_stopping_patience", "needs eval data: set data.val_size or data.eval_path")
    need(t.method == "lora" or m.quantization == "none", "model.quantization",
         f"train.method={t.method} updates the base weights, which cannot be 4- or 8-bit: set "
         "model.quantization=none")
    need(t.strategy not in ("fsdp", "zero3") or m.quantization == "none", "train.strategy",
         f"{t.strategy} shards the weights across GPUs, which cannot be 4- or 8-bit: set model.quantization=none "
         "or train.strategy=ddp")
    need(t.learning_rate <= 1, "train.learning_rate",
         f"must be at most 1, got {t.learning_rate} (typical: 1e-5 to 1e-3; 2e-4 for LoRA)")
    need(d.system is None or '"""' not in d.system, "data.system",
         'may not contain """ (it would end the system prompt in the exported Modelfile)')
    need(bool(recipe.export.quantizations), "export.quantizations", "must name at least one GGUF type")
    for i, qtype in enumerate(recipe.export.quantizations):
        problem = gguf_type_problem(qtype)
        need(problem is None, f"export.quantizations.{i}", problem or "")
    need(recipe.eval.samples >= 1, "eval.samples", f"must be at least 1, got {recipe.eval.samples}")
    need(recipe.eval.max_new_tokens >= 1, "eval.max_new_tokens", "must be at least 1")
    need(recipe.eval.batch_size >= 1, "eval.batch_size", "must be at least 1")
    _check_grpo(recipe.grpo, need)
    return problems


def _check_grpo(g: GrpoConfig, need) -> None:
    for key in ("steps", "prompts_per_step", "max_completion_length"):
        need(getattr(g, key) >= 1, f"grpo.{key}", f"must be at least 1, got {getattr(g, key)}")
    need(g.num_generations >= 2, "grpo.num_generations",
         f"must be at least 2 (GRPO compares completions of the same prompt), got {g.num_generations}")
    need(g.temperature > 0, "grpo.temperature", f"must be above 0 (sampling), got {g.temperature}")
    need(g.beta >= 0, "grpo.beta", f"must be 0 or more, got {g.beta}")
    need(g.learning_rate > 0, "grpo.learning_rate", f"must be above 0, got {g.learning_rate}")
    r = g.rewards
    need(r.format >= 0 and r.correctness >= 0, "grpo.rewards", "weights must be 0 or more")
    need(r.format + r.correctness > 0, "grpo.rewards", "at least one reward needs a weight above 0")
    need(0 < r.rouge_threshold <= 1, "grpo.rewards.rouge_threshold", f"must be in (0, 1], got {r.rouge_threshold}")
    need(r.max_answer_chars is None or r.max_answer_chars >= 1, "grpo.rewards.max_answer_chars",
         f"must be at least 1 or none, got {r.max_answer_chars}")


def _check_source(source: Source, prefix: str, need) -> None:
    need(bool(source.path.strip()), f"{prefix}.path", "must name a data file or a hub dataset id")
    if source.format == "classification":
        need(bool(source.labels), f"{prefix}.labels",
             "classification needs the label names, e.g. labels: [negative, positive]")
        need("{text}" in source.prompt, f"{prefix}.prompt", "must contain {text}, where the row's text goes")
        need(len(set(source.labels)) == len(source.labels), f"{prefix}.labels", "has a repeated label name")
    need(source.max_samples is None or source.max_samples >= 1, f"{prefix}.max_samples",
         f"must be at least 1, got {source.max_samples}")
    need(all(isinstance(k, str) and k and isinstance(v, str) for k, v in source.replace.items()),
         f"{prefix}.replace", 'must map non-empty text to text, e.g. {"{{name}}": "MedBot"}')


def gguf_type_name(qtype: str) -> str:
    """`Q4_K_M` or `q4-k-m` -> `q4_k_m` (valid or not)."""
    return qtype.strip().lower().replace("-", "_")


def gguf_type_problem(qtype: str) -> str | None:
    """None for a GGUF type `make gguf` can write, else what is wrong with a did-you-mean."""
    import difflib

    if gguf_type_name(qtype) in GGUF_TYPES:
        return None
    close = difflib.get_close_matches(gguf_type_name(qtype), GGUF_TYPES, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"unknown GGUF type {qtype!r} ({hint}valid types: {', '.join(GGUF_TYPES)})"


def hardware_problems(recipe: Recipe, cuda: bool) -> list[tuple[str, str]]:
    """(dotted key, problem) for settings this machine cannot run."""
    optimizer = recipe.train.optimizer
    if not cuda and optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        return [("train.optimizer", f"{optimizer} needs a CUDA GPU (bitsandbytes); on this machine use "
                                    "train.optimizer=auto or adamw_torch")]
    return []
