"""The memory planner: predict a recipe's training peak on a card, and pick the fastest settings that fit.

Pure arithmetic: no GPU, no weights. The architecture comes from the model folder's config.json (a local folder
or the Hugging Face cache, never downloaded) or from a built-in table of the R1-Distill family
(`trainer.architecture`). The predicted
peak is what `torch.cuda.max_memory_allocated` reports during training; the CUDA context (about half a GiB,
never counted by the allocator) is stated apart and already taken out of a card's budget.

The activation and logits coefficients were fitted to peaks measured on an H200 with the allocator capped like
consumer cards (bench/calibration/, bench/RESULTS.md); `tests/test_plan.py` holds the planner to those figures.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from trainer.architecture import KNOWN_MODELS, TINY_ARCH, Arch, arch_for, arch_from_config
from trainer.errors import UserError

__all__ = ["KNOWN_MODELS", "TINY_ARCH", "Arch", "arch_for", "arch_from_config"]  # re-exported for callers

GIB = 2**30


CARDS_GB = {"3060": 12, "3070": 8, "3080": 10, "3090": 24, "4060": 8, "4060ti": 16, "4070": 12, "4070ti": 12,
            "4080": 16, "4090": 24, "5060": 8, "5060ti": 16, "5070": 12, "5070ti": 16, "5080": 16, "5090": 32,
            "a4000": 16, "a5000": 24, "a6000": 48, "l4": 24, "t4": 16, "a100": 80, "h100": 80}
"""Memory of common cards in GB as sold; a card may also be named by its size, e.g. `--gpu 12`."""

CUDA_CONTEXT_GIB = 0.45
"""CUDA context, cuBLAS workspaces and kernels: memory the card loses that the allocator never reports."""


def budget_gib(card_gb: float) -> float:
    """Allocator memory a card of `card_gb` leaves for training: its GiB less the context and what the
    display and the driver keep (measured on consumer cards: 8 GB -> 7.0 GiB, 24 GB -> 21.3 GiB)."""
    return round(card_gb * 1e9 / GIB * 0.96 - 0.15, 2)


def parse_card(text: str) -> tuple[str, float]:
    """`4060`, `RTX 4090`, `12`, `12GB` -> (name, GB sold); anything else is a UserError listing the cards."""
    key = str(text).strip().lower().replace("rtx", "").replace(" ", "").replace("-", "")
    if key in CARDS_GB:
        return key, float(CARDS_GB[key])
    number = key.removesuffix("gb").removesuffix("g")
    try:
        size = float(number)
    except ValueError:
        size = None
    if size is not None and 1 <= size <= 200:
        return f"{size:g} GB", size
    close = difflib.get_close_matches(key, list(CARDS_GB), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise UserError(f"unknown card '{text}'", where="GPU",
                    fix=f"{hint}known cards: {', '.join(CARDS_GB)}; or a size in GB such as 12")


# --- the memory model -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    batch_size: int
    gradient_accumulation: int
    max_seq_length: int
    gradient_checkpointing: bool
    checkpoint_keep_layers: int = 0
    """With checkpointing: decoder layers that keep their activations rather than recompute them (Unsloth)."""
    longest_row: int = 0
    """Unpacked data whose longest row is shorter than `max_seq_length` (0: rows may be that long)."""

    @property
    def micro_tokens(self) -> int:
        """Tokens of the fullest micro-batch: packed rows are full, unpacked ones at most the longest row."""
        return self.batch_size * min(self.max_seq_length, self.longest_row or self.max_seq_length)


@dataclass(frozen=True)
class Setup:
    """What the peak depends on besides the settings (read from a resolved recipe by `setup_of`)."""
    arch: Arch
    quantization: str = "4bit"
    method: str = "lora"
    rank: int = 16
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    optimizer: str = "adamw_8bit"
    backend: str = "unsloth"


@dataclass(frozen=True)
class Coefficients:
    """Fitted to the peaks in bench/calibration/ (H200, allocator capped like 8-24 GB cards; Unsloth 2026.10.9)."""
    nf4_bytes: float = 0.5 + 1 / 64 + 4 / (64 * 256)
    """One 4-bit weight: the nibble plus its share of the double-quantized block scales (bitsandbytes nf4)."""
    lora_bytes: float = 4.0
    """A LoRA parameter is kept in float32 (measured: rank 64 loads 4.0 bytes per extra parameter); so is its
    gradient."""
    checkpointed_hidden: float = 25.7
    """Unsloth's offloaded checkpointing, bytes per token per unit of hidden width (one layer recomputed, its
    backward temporaries, the boundary states in flight)..."""
    checkpointed_intermediate: float = 5.7
    """...and per unit of MLP width. Fitted on the 1.5B, 7B and Llama-8B shapes (within 4% of each)."""
    saved_share: float = 0.86
    """Without checkpointing: this share of `layer_activation_bytes` stays alive per layer per token."""
    kept_overlap: float = 0.35
    """With some layers kept: the peak moves to the end of the forward pass, where only this share of the
    checkpointing term adds to the kept layers' activations (fitted on 6 planned runs, 1-26 layers kept)."""
    loss_rows: float = 0.146
    """Unsloth's chunked cross-entropy holds float32 logits for about this many rows per unit of hidden width."""
    fixed_gib: float = 0.085
    """cuBLAS and Triton workspaces."""


COEF = Coefficients()


def layer_activation_bytes(a: Arch) -> int:
    """bf16 tensors one decoder layer saves per token for its backward: both norm inputs, the attention input,
    q/k/v, the attention output, the MLP input and its gate, up and product (2 bytes each)."""
    q, kv = a.heads * a.head_dim, a.kv_heads * a.head_dim
    return 2 * (4 * a.hidden + 2 * q + 2 * kv + 3 * a.intermediate)


def trainable_params(s: Setup) -> int:
    a = s.arch
    if s.method == "full":
        return a.linear_params + a.vocab * a.hidden * (1 if a.tied else 2)
    if s.method == "freeze":
        return a.linear_params // a.layers * 2
    shapes = a.module_shapes()
    per_layer = sum(s.rank * (i + o) for name, (i, o) in shapes.items() if name in s.targets)
    heads = sum(s.rank * (a.vocab + a.hidden) for name in ("embed_tokens", "lm_head") if name in s.targets)
    return a.layers * per_layer + heads


def unsloth_offloads_embedding(s: Setup, t: Settings, loaded: float, budget: float | None) -> bool:
    """Unsloth (offload_embedding="auto", unsloth/models/_utils.py) moves the input embedding to host RAM when
    the memory left after loading is less than its own reserve for a batch-1 step at max_seq_length:
    (48 B x tokens x hidden + 4 B x min(tokens, 2048) x vocab + 16 B per trainable parameter) x 17/16 + 256 MiB."""
    if budget is None or s.backend != "unsloth" or s.method != "lora" or s.arch.tied:
        return False
    a, tokens = s.arch, t.max_seq_length
    reserve = (48 * tokens * a.hidden + 4 * min(tokens, 2048) * a.vocab + 16 * trainable_params(s)) * 17 / 16
    return budget * GIB - loaded < reserve + 256 * 2**20


def components(s: Setup, t: Settings, c: Coefficients = COEF, budget: float | None = None) -> dict[str, float]:
    """Predicted bytes of each part of the training peak on a card with `budget` GiB (None: unlimited)."""
    a = s.arch
    embed = a.vocab * a.hidden
    quantized = a.linear_params * {"4bit": c.nf4_bytes, "8bit": 1 + 4 / 64}.get(s.quantization, 0.0)
    sixteen = 2 * (embed * (1 if a.tied else 2) + (a.linear_params if s.quantization == "none" else 0))
    trainable = trainable_params(s)
    per_param = c.lora_bytes if s.method == "lora" else 2.0
    if unsloth_offloads_embedding(s, t, quantized + sixteen + trainable * per_param, budget):
        sixteen -= 2 * embed
    optimizer = trainable * {"adamw_8bit": 2.0, "paged_adamw_8bit": 2.0, "sgd": 0.0}.get(s.optimizer, 8.0)
    tokens = t.micro_tokens
    checkpointed = tokens * (c.checkpointed_hidden * a.hidden + c.checkpointed_intermediate * a.intermediate)
    kept = layer_activation_bytes(a) * tokens * c.saved_share
    if not t.gradient_checkpointing:
        mode, activations = "no checkpointing", a.layers * kept
    elif s.backend == "unsloth":
        keep = min(t.checkpoint_keep_layers, a.layers)
        mode = f"Unsloth offloaded checkpointing, {keep} of {a.layers} layers kept" if keep else \
            "Unsloth offloaded checkpointing"
        activations = checkpointed * (c.kept_overlap if keep else 1) + keep * kept
    else:  # plain checkpointing keeps every layer's input on the GPU
        mode, activations = "plain checkpointing", checkpointed + a.layers * 2 * a.hidden * tokens
    return {"weights_quantized": quantized, "weights_16bit": sixteen, "trainable_params": trainable * per_param,
            "gradients": trainable * per_param, "optimizer_state": optimizer,
            f"activations ({mode})": activations,
            "logits_and_loss": 4 * c.loss_rows * a.hidden * a.vocab,
            "workspace": c.fixed_gib * GIB}


def peak_gib(s: Setup, t: Settings, c: Coefficients = COEF, budget: float | None = None) -> float:
    return sum(components(s, t, c, budget).values()) / GIB


# --- choosing settings ------------------------------------------------------------------------------------------

SAFETY = 0.9
"""A planned peak stays under this share of the budget: the allocator reserved up to 15% more than it
allocated in the calibration runs (cut back under a tight cap), and the model errs by a few per cent."""
MAX_PACK_LENGTH = 16_384
MICRO_OVERHEAD_S = 0.09
"""Fixed cost of one micro-batch (launches, the optimizer's share, data): 0.09 s on the 7B shape (H200)."""
EFFECTIVE_FLOPS = 7.1e14
"""Sustained 6N rate without checkpointing on the H200 7B runs; only the ranking of candidates depends on it."""
RECOMPUTE_COST = 0.69
"""Unsloth's offloaded checkpointing made each token 1.69x as slow as no checkpointing (7B, H200)."""


@dataclass(frozen=True)
class Plan:
    settings: Settings
    peak_gib: float
    components_gib: dict[str, float]
    card: str | None = None
    budget_gib: float | None = None
    arch_source: str = ""
    tokens_per_s: float = 0.0
    """Rough speed estimate used to rank settings; not a promise."""

    @property
    def fits(self) -> bool | None:
        return None if self.budget_gib is None else self.peak_gib <= self.budget_gib * SAFETY

    def as_json(self) -> dict:
        return {"peak_gib": round(self.peak_gib, 3), "budget_gib": self.budget_gib, "fits": self.fits,
                "card": self.card, "cuda_context_gib": CUDA_CONTEXT_GIB,
                "settings": dataclasses.asdict(self.settings),
                "components": {k: round(v, 3) for k, v in self.components_gib.items()},
                "estimated_tokens_per_s": round(self.tokens_per_s), "architecture": self.arch_source}


def estimate_speed(s: Setup, t: Settings) -> float:
    """Tokens/s by a simple cost model fitted to the calibration runs: 6N FLOPs per token and causal attention,
    the recomputed layers' share of RECOMPUTE_COST, and a fixed cost per micro-batch. Ranks candidates only."""
    a, tokens = s.arch, t.micro_tokens
    flops = 6 * a.matmul_params * tokens + 6 * a.layers * a.hidden * t.batch_size * t.max_seq_length ** 2
    recomputed = (a.layers - min(t.checkpoint_keep_layers, a.layers)) / a.layers if t.gradient_checkpointing else 0
    return tokens / (MICRO_OVERHEAD_S + flops * (1 + RECOMPUTE_COST * recomputed) / EFFECTIVE_FLOPS)


def candidates(t: Settings, packing: bool, layers: int = 0) -> list[Settings]:
    """Settings with the recipe's work per optimizer step: the same rows (batch x accumulation); with packing,
    the same tokens, so a longer pack length takes proportionally fewer rows. Never a shorter length than the
    recipe's (that would cut examples)."""
    rows, out = t.batch_size * t.gradient_accumulation, []
    lengths = [t.max_seq_length * k for k in (1, 2, 4, 8)
               if k == 1 or (packing and t.max_seq_length * k <= MAX_PACK_LENGTH and rows % k == 0)]
    for length in lengths:
        per_step = rows * t.max_seq_length // length
        for batch in (b for b in range(1, per_step + 1) if per_step % b == 0):
            out.append(Settings(batch, per_step // batch, length, False))
            out += [Settings(batch, per_step // batch, length, True, keep) for keep in _keep_steps(layers)]
    return out


def _keep_steps(layers: int) -> list[int]:
    """0, then about a sixteenth of the layers at a time, up to all but one (all kept = no checkpointing)."""
    step = max(1, layers // 16)
    return [0, *range(step, layers, step)] if layers else [0]


def make_plan(s: Setup, t: Settings, card: str | None = None, card_gb: float | None = None,
              source: str = "", c: Coefficients = COEF) -> Plan:
    budget = budget_gib(card_gb) if card_gb else None
    parts = {k: v / GIB for k, v in components(s, t, c, budget).items()}
    return Plan(t, sum(parts.values()), parts, card, budget, source, estimate_speed(s, t))


def choose(s: Setup, t: Settings, packing: bool, card: str, card_gb: float, source: str = "") -> Plan:
    """The fastest candidate that fits the card; UserError naming the smallest peak when none does."""
    layers = s.arch.layers if s.backend == "unsloth" and s.method == "lora" else 0
    plans = [make_plan(s, c, card, card_gb, source) for c in candidates(t, packing, layers)]
    fitting = [p for p in plans if p.fits]
    if not fitting:
        smallest = min(plans, key=lambda p: p.peak_gib)
        raise CannotFit(smallest, s)
    best = max(fitting, key=lambda p: p.tokens_per_s)
    same_shape = [p for p in fitting if _shape(p.settings) == _shape(t) and p.tokens_per_s >= CLOSE_ENOUGH * best.tokens_per_s]
    return max(same_shape, key=lambda p: p.tokens_per_s) if same_shape else best


def _shape(t: Settings) -> tuple[int, int, int]:
    return t.batch_size, t.gradient_accumulation, t.max_seq_length


CLOSE_ENOUGH = 0.9
"""The recipe's batch, accumulation and length are kept (only checkpointing changes) unless another shape is
estimated more than 10% faster: the speed model ranks well, but is not more precise than that."""


class CannotFit(UserError):
    def __init__(self, smallest: Plan, s: Setup):
        t = smallest.settings
        knobs = ["model.max_seq_length (shorter)", "lora.rank (smaller)"]
        if s.quantization != "4bit":
            knobs.insert(0, "model.quantization=4bit")
        if s.method != "lora":
            knobs.insert(0, "train.method=lora")
        super().__init__(
            f"cannot fit on {smallest.card} ({smallest.budget_gib:.1f} GiB for training): the smallest predicted "
            f"peak is {smallest.peak_gib:.2f} GiB (batch {t.batch_size}, length {t.max_seq_length}, checkpointing "
            f"{'on' if t.gradient_checkpointing else 'off'})", where="plan",
            fix=f"change {', '.join(knobs)}, or use a larger card (GPU=...)")
        self.plan = smallest


# --- recipes ----------------------------------------------------------------------------------------------------

def setup_of(recipe) -> tuple[Setup, str]:
    arch, source = arch_for(recipe.model.base)
    optimizer = recipe.train.optimizer if recipe.train.optimizer != "auto" else "adamw_8bit"
    backend = "transformers" if recipe.model.backend == "transformers" else "unsloth"
    return Setup(arch, recipe.model.quantization, recipe.train.method, recipe.lora.rank,
                 tuple(recipe.lora.target_modules), optimizer, backend), source


def settings_of(recipe) -> Settings:
    t = recipe.train
    return Settings(t.batch_size, t.gradient_accumulation, recipe.model.max_seq_length, t.gradient_checkpointing,
                    t.checkpoint_keep_layers)


def plan_recipe(recipe, card_text: str | None = None, choose_settings: bool = True) -> Plan:
    """Predict the recipe's peak; with a card, choose the fastest settings that fit it (or only check the
    recipe's own settings when `choose_settings` is false)."""
    s, source = setup_of(recipe)
    t = settings_of(recipe)
    if card_text is None:
        return make_plan(s, t, source=source)
    card, gb = parse_card(card_text)
    if not choose_settings:
        plan = make_plan(s, t, card, gb, source)
        if not plan.fits:
            raise CannotFit(plan, s)
        return plan
    return choose(s, t, recipe.train.packing, card, gb, source)


def for_rows(recipe, plan: Plan, row_lengths: list[int]) -> Plan:
    """The plan's peak for the rows at hand. The settings' peak assumes rows as long as `model.max_seq_length`;
    without packing no micro-batch holds more than `batch_size` of the longest row, so short rows (a label, a
    headline) peak far lower. Packed rows are full, so with packing the plan stays as it is."""
    t = plan.settings
    longest = max(row_lengths, default=0)
    if recipe.train.packing or not 0 < longest < t.max_seq_length:
        return plan
    s, _ = setup_of(recipe)
    t = dataclasses.replace(t, longest_row=longest)
    parts = {k: v / GIB for k, v in components(s, t, COEF, plan.budget_gib).items()}
    return dataclasses.replace(plan, settings=t, peak_gib=sum(parts.values()), components_gib=parts)


def apply(recipe, plan: Plan):
    """The recipe with the plan's settings."""
    t = plan.settings
    return dataclasses.replace(
        recipe, model=dataclasses.replace(recipe.model, max_seq_length=t.max_seq_length),
        train=dataclasses.replace(recipe.train, batch_size=t.batch_size, gradient_accumulation=t.gradient_accumulation,
                                  gradient_checkpointing=t.gradient_checkpointing,
                                  checkpoint_keep_layers=t.checkpoint_keep_layers))


def _checkpointing(t: Settings) -> str:
    if not t.gradient_checkpointing:
        return "off"
    return f"on, {t.checkpoint_keep_layers} layers kept" if t.checkpoint_keep_layers else "on"


def describe(plan: Plan, before: Settings | None = None) -> str:
    """A few lines for the console: the settings, the predicted peak against the budget, the components."""
    t = plan.settings
    where = f" on {plan.card} ({plan.budget_gib:.1f} GiB for training)" if plan.card else ""
    head = (f"plan{where}: batch {t.batch_size} x accumulation {t.gradient_accumulation}, length "
            f"{t.max_seq_length}, gradient checkpointing {_checkpointing(t)}; predicted peak {plan.peak_gib:.2f} GiB")
    if plan.budget_gib:
        head += f" of {plan.budget_gib * SAFETY:.2f} planned ({'fits' if plan.fits else 'DOES NOT FIT'})"
    lines = [head]
    if before is not None and before != t:
        lines.append(f"  the recipe said batch {before.batch_size} x {before.gradient_accumulation}, length "
                     f"{before.max_seq_length}, checkpointing {_checkpointing(before)}")
    width = max(len(name) for name in plan.components_gib) + 2
    lines += [f"  {name:<{width}} {gib:7.2f} GiB" for name, gib in plan.components_gib.items()]
    lines.append(f"  {'(CUDA context, not in the peak)':<{width}} {CUDA_CONTEXT_GIB:7.2f} GiB")
    return "\n".join(lines)


def card_choice(profile: str, memory_gib: float) -> str:
    """The card the planner plans for: the one `GPU=` named, else the detected card's size in GB."""
    try:
        parse_card(profile)
        return profile
    except UserError:  # a "24 GB" card reports 23.99 GiB: its size as sold is the rounded GiB
        return f"{round(memory_gib)}"

