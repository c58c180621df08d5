"""Checks that a GGUF behaves like the Hugging Face model it came from, run with llama-cpp-python.

Each check returns a `CheckResult` (numbers plus pass/fail) and raises nothing on a mismatch: the caller decides
whether a failure stops the export. The prompt sets are built so the checks mean something even on a random tiny
model: many token positions, several scripts, special tokens and a rendered chat prompt.
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOP1_THRESHOLD = 0.95
"""Minimum share of positions where a quantized GGUF's next-token argmax equals the HF model's."""

DECISIVE_MARGIN = 0.3
"""Logit lead (HF's top token at least ~1.35x as likely as its runner-up) that makes a position count for the
top-1 agreement of quantized files. q8_0 moves the tiny model's logits by about 0.1-0.3, so a smaller lead is a
coin toss: at 0.1, a tiny run trained for 2 steps failed its q8_0 file at 94.4% agreement, while at 0.3 it had
99.5% (and a 48-step run 99.7%), with about 400 of 645 positions decisive in both."""

TIE_TOLERANCE = 0.05
"""Logit gap under which the f16 GGUF may pick HF's runner-up: llama.cpp rounds activations to f16 in its matrix
products, which moves logits by a few hundredths (0.03-0.04 at most on the tiny model)."""

PERPLEXITY_TOLERANCE: dict[str, float] = {
    "f16": 0.01, "bf16": 0.02, "q8_0": 0.02, "q6_k": 0.05, "q5_k_m": 0.10, "q4_k_m": 0.15,
}
"""Largest rise of a GGUF's perplexity on the run's held-out texts over its reference (the merged HF model for
f16/bf16, the f16 file for quantized types), as a fraction: 0.15 allows 15% higher.

llama.cpp's tables for 7-8B models put q8_0 within 0.1% of f16, q6_k about 0.5%, q5_k_m about 1% and q4_k_m
about 2-4%. Small models lose more: on the tiny model (rows 64 wide, so llama-quantize falls back from k-quants
to q5_0/q5_1/q8_0) trained 12 steps on `news`, gguf-py's reference quantizers applied to the weights gave q8_0
+0.8%, q4_k_m's type mix +10.5% and f16 rounding -0.05% (16 held-out rows, 249 tokens; an estimate made without
llama.cpp itself, see README). A broken file (another model, a wrong tokenizer) is several times higher."""

PERPLEXITY_TOKENS = 4096
"""Scored tokens read from eval_data.jsonl at most: enough for a stable mean, minutes at most for a 7B file on a CPU."""

# Prompt sets. Tokenizer cases cover what breaks BPE ports: pre-tokenizer splits (digits, spaces, newlines,
# punctuation), multi-byte scripts and emoji, and special tokens written as text.
TOKENIZATION_TEXTS: dict[str, str] = {
    "english": "The quick brown fox jumps over the lazy dog. It's 3:45pm, isn't it? I'd say we'll see.",
    "whitespace": "  two leading spaces\n\n\ttab, then CRLF\r\n   and trailing   ",
    "numbers": "1234567890 3.14159 1e-9 -42 0x1F 10,000,000 2025-01-20",
    "chinese": "深度求索的推理模型会先思考，再给出答案。你好，世界！请计算 12 乘以 7。",
    "mixed_scripts": "Ünïcödé café naïve — “quotes” ½ 😀🚀 日本語 한국어 Ελληνικά русский عربى",
    "code": "def add(a: int, b: int) -> int:\n    \"\"\"Add.\"\"\"\n    return a + b  # sum\n\nprint(add(2, 3))\n",
    "json_url": '{"url": "https://example.com/a?b=c&d=e", "n": [1, 2, 3], "ok": true}',
    "latex": "\\boxed{\\frac{a^2 + b^2}{c}} and $x_{i+1} = x_i - \\eta \\nabla f(x_i)$",
    "repeats": "a" * 50 + "!!!???" + "=" * 30 + "\n" * 5 + "ha" * 20,
    "special_tokens": "<｜User｜>hi<｜Assistant｜><think>\nhmm\n</think>\n\nok<｜end▁of▁sentence｜>",
}

GREEDY_PROMPTS = (
    "The capital of France is",
    "Question: what is 17 * 23?\nAnswer:",
    "def fibonacci(n):\n    ",
    "从前有一座山，山里有一座庙，",
    "<｜User｜>Why is the sky blue?<｜Assistant｜><think>\n",
    "Once upon a time, in a small village by the sea,",
)

AGREEMENT_TEXTS = (
    "Large language models predict the next token from the ones before it. Quantization stores their weights "
    "in fewer bits, which shrinks the file and speeds up inference at a small cost in accuracy. This paragraph "
    "gives the comparison enough positions to measure that cost.",
    "import numpy as np\n\n\ndef softmax(x: np.ndarray) -> np.ndarray:\n    z = x - x.max(axis=-1, keepdims=True)"
    "\n    e = np.exp(z)\n    return e / e.sum(axis=-1, keepdims=True)\n\n\nfor row in softmax(np.eye(3)):\n"
    "    print(row.round(3))\n",
    "机器学习是人工智能的一个分支。它让计算机从数据中学习规律，而不是依靠明确编写的规则。"
    "深度学习使用多层神经网络，在图像、语音和自然语言处理方面取得了很大进展。",
    "Let x be the number of apples. Then 3x + 5 = 20, so 3x = 15 and x = 5. Check: 3 * 5 + 5 = 20. "
    "Therefore the answer is \\boxed{5}. Next, 144 / 12 = 12 and 2^10 = 1024.",
    "Dear team,\n\nThe release is scheduled for Friday. Please merge your changes by Wednesday evening, run "
    "the full test suite, and update the changelog.\n\nThanks,\nAlex",
)


def chat_messages() -> list[dict[str, str]]:
    """A conversation that exercises the template: system prompt, earlier reasoning (dropped), a new question."""
    return [
        {"role": "system", "content": "You are a careful math tutor."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "<think>\nTwo plus two is four.\n</think>\n\nThe answer is 4."},
        {"role": "user", "content": "And 3 * 3? Explain briefly."},
    ]


@dataclass(frozen=True)
class CheckResult:
    """One verification: whether it passed, a one-line summary, its numbers and the first few mismatches."""

    name: str
    passed: bool
    summary: str
    numbers: dict[str, float] = field(default_factory=dict)
    mismatches: tuple[str, ...] = ()


def original_chat_template() -> str:
    """The DeepSeek-R1-Distill inference chat template, byte-identical to the released checkpoints' (via trl)."""
    from trainer.r1 import chat_template as r1_chat_template

    return r1_chat_template()


def check_tokenization(gguf: Path, hf_dir: Path) -> CheckResult:
    """Token ids from the GGUF's tokenizer equal the HF tokenizer's on varied texts, special ids included."""
    tok = _hf_tokenizer(str(hf_dir))
    cases = dict(TOKENIZATION_TEXTS)
    cases["chat_prompt"] = tok.apply_chat_template(chat_messages(), chat_template=original_chat_template(),
                                                   tokenize=False, add_generation_prompt=True)
    mismatches = []
    with _llama(gguf, vocab_only=True) as llm:
        for name, text in cases.items():
            ours = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            theirs = tok(text, add_special_tokens=False).input_ids
            if ours != theirs:
                mismatches.append(f"{name}: {_first_difference(ours, theirs)}")
        # With add_bos the GGUF's own add_bos_token flag decides, as it does in llama-cli and Ollama.
        with_bos = (llm.tokenize(b"Hello", add_bos=True, special=True), tok("Hello").input_ids)
        if with_bos[0] != with_bos[1]:
            mismatches.append(f"bos handling: {_first_difference(*with_bos)}")
        ids = {"bos": (llm.token_bos(), tok.bos_token_id), "eos": (llm.token_eos(), tok.eos_token_id)}
        mismatches += [f"{k} id: gguf {a} != hf {b}" for k, (a, b) in ids.items() if a != b]
    total = len(cases) + 1 + len(ids)
    return CheckResult("tokenization", not mismatches, f"{total - len(mismatches)}/{total} tokenizer cases match",
                       {"cases": total, "matched": total - len(mismatches)}, tuple(mismatches))


def check_greedy(gguf: Path, hf_dir: Path, new_tokens: int = 32, tie: float = TIE_TOLERANCE) -> CheckResult:
    """The f16 GGUF continues each prompt greedily like the HF model: same token ids, step by step.

    Free-running continuations are compared as they are, and also along the HF path (the HF tokens fed back to
    the GGUF), so a step where the two differ but HF's top two logits lie within `tie` (a near-tie, which f16
    rounding may flip) does not hide the remaining steps. It passes when every step agrees or is such a tie.
    """
    import numpy as np

    tok, model = _hf_tokenizer(str(hf_dir)), _hf_model(str(hf_dir))
    prompts = [tok(p).input_ids for p in GREEDY_PROMPTS]
    identical = matched = ties = 0
    mismatches = []
    with _llama(gguf, n_ctx=max(map(len, prompts)) + new_tokens + 1, logits_all=True) as llm:
        for i, prompt in enumerate(prompts):
            theirs = _hf_greedy(model, prompt, new_tokens)
            identical += _llama_greedy(llm, prompt, new_tokens) == theirs
            llm.reset()
            llm.eval(prompt + theirs[:-1])
            ours = np.argmax(llm.scores[len(prompt) - 1: len(prompt) + new_tokens - 1], axis=-1)
            hf_logits = _hf_logits(model, prompt + theirs[:-1])[len(prompt) - 1:]
            for step in np.nonzero(ours != np.array(theirs))[0]:
                margin = float(hf_logits[step, theirs[step]] - hf_logits[step, ours[step]])
                if margin <= tie:
                    ties += 1
                else:
                    mismatches.append(f"prompt {i} step {step}: gguf {ours[step]} hf {theirs[step]} "
                                      f"(HF prefers its token by {margin:.3f} logits)")
            matched += int((ours == np.array(theirs)).sum())
    total = len(prompts) * new_tokens
    return CheckResult(
        "greedy", not mismatches,
        f"{identical}/{len(prompts)} greedy continuations identical; {matched}/{total} steps agree along the HF "
        f"path, {ties} near-tie(s) within {tie} logits, {len(mismatches)} real mismatch(es)",
        {"prompts": len(prompts), "identical": identical, "tokens": total, "matched_tokens": matched,
         "ties": ties, "mismatched_tokens": len(mismatches)},
        tuple(mismatches[:10]))


def check_top1_agreement(gguf: Path, hf_dir: Path, threshold: float = TOP1_THRESHOLD,
                         min_margin: float = DECISIVE_MARGIN) -> CheckResult:
    """Share of positions where the GGUF's next-token argmax equals the HF model's (meant for quantized files).

    The pass mark applies to decisive positions, where HF's favourite leads its runner-up by `min_margin`
    logits: elsewhere the two are a coin toss that any rounding may flip. At least half of all positions must
    be decisive, so a model with flat predictions cannot pass by having none. The rate over all positions is
    reported as well.
    """
    import numpy as np

    tok, model = _hf_tokenizer(str(hf_dir)), _hf_model(str(hf_dir))
    chat = tok.apply_chat_template(chat_messages(), chat_template=original_chat_template(), tokenize=False,
                                   add_generation_prompt=True)
    texts = [*AGREEMENT_TEXTS, *TOKENIZATION_TEXTS.values(), chat]
    sequences = [tok(t, add_special_tokens=not t.startswith(tok.bos_token)).input_ids for t in texts]
    same, decisive = [], []
    with _llama(gguf, n_ctx=max(map(len, sequences)), logits_all=True) as llm:
        for ids in sequences:
            llm.reset()
            llm.eval(ids)
            hf = _hf_logits(model, ids)
            top2 = np.sort(hf, axis=-1)[:, -2:]
            same.append(np.argmax(llm.scores[: len(ids)], axis=-1) == hf.argmax(axis=-1))
            decisive.append(top2[:, 1] - top2[:, 0] >= min_margin)
    same_all, decisive_all = np.concatenate(same), np.concatenate(decisive)
    positions, n_decisive = len(same_all), int(decisive_all.sum())
    rate = float(same_all.mean())
    decisive_rate = float(same_all[decisive_all].mean()) if n_decisive else 0.0
    passed = decisive_rate >= threshold and n_decisive >= positions / 2
    return CheckResult(
        "top1_agreement", passed,
        f"next-token top-1 agreement {decisive_rate:.1%} over {n_decisive} decisive positions (HF top-1 ahead by "
        f">= {min_margin} logits; need {threshold:.0%}), {rate:.1%} over all {positions}",
        {"positions": positions, "agree": int(same_all.sum()), "rate": rate, "decisive_positions": n_decisive,
         "decisive_agree": int(same_all[decisive_all].sum()), "decisive_rate": decisive_rate,
         "threshold": threshold, "min_margin": min_margin})


def check_chat_template(gguf: Path, expected: str | None = None) -> CheckResult:
    """The template stored in the GGUF (`tokenizer.chat_template`) equals the original inference template."""
    expected = original_chat_template() if expected is None else expected
    with _llama(gguf, vocab_only=True) as llm:
        stored = llm.metadata.get("tokenizer.chat_template")
    if stored == expected:
        return CheckResult("chat_template", True, "GGUF chat template is the original R1 inference template",
                           {"chars": len(expected)})
    if stored is None:
        detail = "the GGUF has no tokenizer.chat_template"
    else:
        at = _common_prefix(list(stored), list(expected))
        detail = f"differs at character {at}: gguf {stored[at:at + 40]!r} vs expected {expected[at:at + 40]!r}"
    return CheckResult("chat_template", False, "GGUF chat template differs from the original R1 template",
                       {"chars": len(stored or "")}, (detail,))


@dataclass(frozen=True)
class HeldOut:
    """Token sequences to score, each with the positions that count (labels; -100 elsewhere), and their origin."""

    sequences: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]
    source: str


def held_out_texts(run_dir: Path, hf_dir: Path, max_tokens: int = PERPLEXITY_TOKENS) -> HeldOut:
    """The run's held-out conversations (eval_data.jsonl) encoded as in training, the reply tokens scored;
    the built-in texts (every token scored) when the run kept no eval rows."""
    from trainer.data.dataset import read_conversations
    from trainer.data.template import encode_conversation

    tok = _hf_tokenizer(str(hf_dir))
    path = Path(run_dir) / "eval_data.jsonl"
    conversations = read_conversations(path) if path.is_file() else []
    sequences, scored = [], 0
    for conversation in conversations:
        for encoded in encode_conversation(conversation.messages, tok, 4096):
            if encoded is None or scored >= max_tokens:
                continue
            sequences.append((tuple(encoded.input_ids), tuple(encoded.labels)))
            scored += sum(label != -100 for label in encoded.labels[1:])
    if sequences:
        return HeldOut(tuple(sequences), f"{len(sequences)} held-out rows of eval_data.jsonl ({scored} tokens)")
    ids = [tuple(tok(t).input_ids) for t in AGREEMENT_TEXTS]
    return HeldOut(tuple((i, i) for i in ids), f"the {len(ids)} built-in texts (this run kept no eval rows)")


def hf_perplexity(hf_dir: Path, held_out: HeldOut) -> float:
    """Perplexity of the merged HF model (float32) on the held-out sequences' scored positions."""
    model = _hf_model(str(hf_dir))
    return _perplexity([(_hf_logits(model, list(ids)), labels) for ids, labels in held_out.sequences])


def gguf_perplexity(gguf: Path, held_out: HeldOut) -> float:
    """Perplexity of a GGUF (llama.cpp's logits through llama-cpp-python) on the same positions."""
    longest = max(len(ids) for ids, _ in held_out.sequences)
    with _llama(gguf, n_ctx=longest, logits_all=True) as llm:
        scored = []
        for ids, labels in held_out.sequences:
            llm.reset()
            llm.eval(list(ids))
            scored.append((llm.scores[: len(ids)].copy(), labels))
    return _perplexity(scored)


def _perplexity(scored: list[tuple[Any, tuple[int, ...]]]) -> float:
    """exp(mean negative log-likelihood), logits at t predicting label t+1 wherever that label is not -100."""
    import math

    import numpy as np

    total, count = 0.0, 0
    for logits, labels in scored:
        target = np.array(labels[1:])
        keep = target != -100
        rows = logits[:-1][keep].astype(np.float64)
        peak = rows.max(axis=-1, keepdims=True)
        log_z = (peak[:, 0] + np.log(np.exp(rows - peak).sum(axis=-1)))
        total += float((log_z - rows[np.arange(len(rows)), target[keep]]).sum())
        count += int(keep.sum())
    return math.exp(total / count) if count else float("nan")


def check_perplexity(gguf: Path, qtype: str, perplexity: float, reference: float, reference_name: str,
                     source: str) -> CheckResult:
    """The file's perplexity may exceed its reference's by at most `PERPLEXITY_TOLERANCE[qtype]`."""
    tolerance = PERPLEXITY_TOLERANCE[qtype]
    ratio = perplexity / reference
    passed = ratio <= 1 + tolerance  # NaN (nothing scored, or broken logits) fails
    verdict = "within" if passed else "OVER"
    return CheckResult(
        "perplexity", passed,
        f"{gguf.name}: perplexity {perplexity:.4g} vs {reference:.4g} for {reference_name} ({ratio - 1:+.2%}; "
        f"{verdict} the {qtype} limit of +{tolerance:.0%}) on {source}",
        {"file": gguf.name, "type": qtype, "perplexity": perplexity, "reference": reference, "ratio": ratio,
         "tolerance": tolerance})


@functools.lru_cache(maxsize=1)
def _hf_tokenizer(hf_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_dir)


@functools.lru_cache(maxsize=1)
def _hf_model(hf_dir: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    # float32 is the reference: llama.cpp computes in float32 on the CPU from f16 weights.
    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


VOCAB_ONLY_NOISE = "> n_ctx_train (0)"


class _llama:
    """A llama-cpp-python model as a context manager that frees its memory on exit."""

    def __init__(self, gguf: Path, **kwargs: Any):
        self.kwargs = {"n_ctx": 512, "n_threads": os.cpu_count() or 1, "verbose": False, **kwargs}
        self.gguf = gguf

    def __enter__(self) -> Any:
        from export.llamacpp import load_llama_cpp

        llama = load_llama_cpp().Llama
        if not self.kwargs.get("vocab_only"):
            self.llm = llama(model_path=str(self.gguf), **self.kwargs)
            return self.llm
        # A vocabulary-only load reads no trained context length, so llama.cpp warns "n_ctx_seq (512) >
        # n_ctx_train (0) -- possible training context overflow" about a context that never runs. Only that line
        # is dropped; anything else llama.cpp says still reaches the console.
        said = io.StringIO()
        with contextlib.redirect_stderr(said):
            self.llm = llama(model_path=str(self.gguf), **self.kwargs)
        sys.stderr.write("".join(line for line in said.getvalue().splitlines(keepends=True)
                                 if VOCAB_ONLY_NOISE not in line))
        return self.llm

    def __exit__(self, *exc: object) -> None:
        self.llm.close()


def _llama_greedy(llm: Any, prompt: list[int], new_tokens: int) -> list[int]:
    import numpy as np

    # Argmax over raw logits, not llama's sampler: no penalties, no ties broken by a random draw.
    llm.reset()
    llm.eval(prompt)
    out = [int(np.argmax(llm.scores[llm.n_tokens - 1]))]
    while len(out) < new_tokens:
        llm.eval(out[-1:])
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
    return out


def _hf_greedy(model: Any, prompt: list[int], new_tokens: int) -> list[int]:
    import torch

    # A hand-written loop: `generate()` would apply the checkpoint's generation_config (R1 samples at 0.6).
    out: list[int] = []
    with torch.no_grad():
        result = model(input_ids=torch.tensor([prompt]), use_cache=True)
        for _ in range(new_tokens):
            out.append(int(result.logits[0, -1].argmax()))
            result = model(input_ids=torch.tensor([[out[-1]]]), past_key_values=result.past_key_values,
                           use_cache=True)
    return out


def _hf_logits(model: Any, ids: list[int]) -> Any:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def _common_prefix(a: list[Any], b: list[Any]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _first_difference(ours: list[int], theirs: list[int]) -> str:
    at = _common_prefix(ours, theirs)
    return f"gguf {ours[at:at + 5]} vs hf {theirs[at:at + 5]} at token {at} (lengths {len(ours)}/{len(theirs)})"
