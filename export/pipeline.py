"""`make gguf`: run folder -> merged/ -> GGUF files -> verification -> Modelfile, resumable step by step."""
from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from export.gguf import CONVERT_TYPES, Step, check_quant_type, clean_stale, convert, quantize
from export.merge import Merged, merge_run
from export.verify import (CheckResult, check_chat_template, check_greedy, check_perplexity, check_tokenization,
                           check_top1_agreement, gguf_perplexity, held_out_texts, hf_perplexity)
from trainer.config import Recipe
from trainer.r1 import chat_template as r1_chat_template
from trainer.runs import RunFolder, write_json

TOP1_TYPES = ("q8_0",)
"""Types also held to next-token top-1 agreement with the HF model; lower-bit types change too many near-ties for
that to mean anything, and are judged by perplexity like every file."""


@dataclass
class ExportResult:
    merged: Merged
    steps: list[Step]
    checks: list[CheckResult] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_gib: float = 0.0
    """Largest resident memory of this process: the merge (and the checks, when they run)."""
    tools_peak_rss_gib: float = 0.0
    """Largest resident memory of the tools it ran (llama.cpp's converter, llama-quantize)."""

    @property
    def passed(self) -> bool:
        """Every check passed: the export's verdict is never kinder than its checks."""
        return all(c.passed for c in self.checks)


def export_run(run_dir: Path, recipe: Recipe, quants: list[str], verify: bool = True,
               say=print) -> ExportResult:
    """Merge, convert, quantize and (unless told not to) verify; every step skips work already done."""
    started = time.perf_counter()
    quants = [check_quant_type(q) for q in quants]
    stem = run_dir.name
    for path in clean_stale(run_dir, RunFolder(run_dir).gguf):
        say(f"removed {path}, left by an interrupted export")
    say("merging the adapter into the 16-bit base...")
    merged = merge_run(run_dir, recipe)
    out = RunFolder(run_dir).gguf  # made only once the merge worked, so a refused export leaves nothing behind
    out.mkdir(exist_ok=True)
    f16 = convert(merged.path, out / f"{stem}-f16.gguf", "f16", chat_template=r1_chat_template())
    steps = [f16]
    for qtype in quants:
        if qtype == "bf16":
            steps.append(convert(merged.path, out / f"{stem}-bf16.gguf", "bf16", chat_template=r1_chat_template()))
        elif qtype not in CONVERT_TYPES:
            steps.append(quantize(f16.path, out / f"{stem}-{qtype}.gguf", qtype))
    result = ExportResult(merged, steps)
    if verify:
        say("verifying the merge and the GGUF files...")
        merge_check = [check_merge(run_dir, recipe, merged.path)] if merged.path != RunFolder(run_dir).adapter else []
        result.checks = merge_check + verification(merged.path, f16.path, [s.path for s in steps[1:]], run_dir)
    result.seconds = time.perf_counter() - started
    result.peak_rss_gib, result.tools_peak_rss_gib = peak_rss_gib()
    write_json(out / "export.json", with_earlier(summary(result), out / "export.json"))
    return result


def verification(merged: Path, f16: Path, quantized: list[Path], run_dir: Path) -> list[CheckResult]:
    """Tokenizer, template and greedy decoding on the f16 file; perplexity on held-out text for every file (f16
    against the merged model, the others against f16); top-1 agreement for q8_0."""
    checks = [check_tokenization(f16, merged), check_chat_template(f16), check_greedy(f16, merged)]
    held_out = held_out_texts(run_dir, merged)
    reference = hf_perplexity(merged, held_out)
    f16_ppl = gguf_perplexity(f16, held_out)
    checks.append(check_perplexity(f16, "f16", f16_ppl, reference, "the merged model", held_out.source))
    for path in quantized:
        qtype = gguf_type(path)
        if qtype == "bf16":
            checks.append(check_perplexity(path, qtype, gguf_perplexity(path, held_out), reference,
                                           "the merged model", held_out.source))
            continue
        checks.append(check_perplexity(path, qtype, gguf_perplexity(path, held_out), f16_ppl, "f16",
                                       held_out.source))
        if qtype in TOP1_TYPES:
            check = check_top1_agreement(path, merged)
            check.numbers["file"] = path.name
            checks.append(check)
    return checks


def gguf_type(path: Path) -> str:
    """`run-q4_k_m.gguf` -> `q4_k_m` (files are named `<run>-<type>.gguf`)."""
    return path.stem.rsplit("-", 1)[-1]


def verdicts(result: ExportResult) -> list[tuple[str, bool]]:
    """(file name, good) for each GGUF: a file is good when every check about it passed. The f16 file also
    answers for the merge, tokenizer, template and greedy checks, which every other file inherits."""
    shared = [c for c in result.checks if "file" not in c.numbers]
    out = []
    for step in result.steps:
        own = [c for c in result.checks if c.numbers.get("file") == step.path.name]
        out.append((step.path.name, bool(own) and all(c.passed for c in shared + own)))
    return out


def check_merge(run_dir: Path, recipe: Recipe, merged: Path) -> CheckResult:
    """The merged model's logits equal base + adapter's (PEFT computing the LoRA branch) on a few prompts."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from export.merge import base_folder
    from export.verify import GREEDY_PROMPTS

    tok = AutoTokenizer.from_pretrained(str(merged))
    batch = [tok(p, return_tensors="pt").input_ids for p in GREEDY_PROMPTS]
    with torch.inference_mode():
        reference = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(str(base_folder(recipe)), dtype=torch.float32),
            str(RunFolder(run_dir).adapter)).eval()
        expected = [reference(ids).logits[0] for ids in batch]
        del reference
        model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
        got = [model(ids).logits[0] for ids in batch]
    error = max(float((g - e).abs().max() / e.abs().max()) for g, e in zip(got, expected))
    agree = sum(int((g.argmax(-1) == e.argmax(-1)).sum()) for g, e in zip(got, expected))
    total = sum(len(e) for e in expected)
    # float32 bases merge exactly up to rounding; a 16-bit base rounds the merged weights once more.
    tolerance = 1e-4 if model.config.dtype in (torch.float32, "float32") else 2e-2
    return CheckResult("merge", error <= tolerance,
                       f"merged logits match base + adapter: max relative error {error:.2e} (tolerance "
                       f"{tolerance:.0e}), argmax equal at {agree}/{total} positions",
                       {"max_relative_error": error, "tolerance": tolerance, "argmax_agree": agree,
                        "positions": total})


def summary(result: ExportResult) -> dict:
    return {"merged": str(result.merged.path), "merge_seconds": round(result.merged.seconds, 2),
            "files": [{"path": str(s.path), "seconds": round(s.seconds, 2), "skipped": s.skipped,
                       "bytes": s.path.stat().st_size} for s in result.steps],
            "checks": [asdict(c) for c in result.checks], "verified": bool(result.checks),
            "passed": result.passed if result.checks else None,  # not verified: neither good nor bad
            "seconds": round(result.seconds, 2), "peak_rss_gib": round(result.peak_rss_gib, 3),
            "tools_peak_rss_gib": round(result.tools_peak_rss_gib, 3)}


def with_earlier(new: dict, path: Path) -> dict:
    """`new` plus the files (and the checks about them) an earlier export of this run wrote, that this one did
    not redo and that are still on disk: `make gguf QUANT=q8_0` then `QUANT=q4_k_m` lists both files."""
    import json

    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return new
    done = {f["path"] for f in new["files"]}
    kept = [f for f in old.get("files", []) if isinstance(f, dict) and f.get("path") not in done
            and Path(str(f.get("path"))).is_file()]
    names = {Path(f["path"]).name for f in kept}
    checks = [c for c in old.get("checks", []) if isinstance(c, dict)
              and (c.get("numbers") or {}).get("file") in names]
    merged = {**new, "files": new["files"] + kept, "checks": new["checks"] + checks}
    # every check about a file must pass (see `verdicts`); not verified now: neither good nor bad
    merged["passed"] = None if new["passed"] is None else new["passed"] and all(c.get("passed") for c in checks)
    return merged


def peak_rss_gib() -> tuple[float, float]:
    """Max resident set size of this process, and of its largest finished child (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return own / 2**20, children / 2**20
