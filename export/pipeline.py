"""`make gguf`: run folder -> merged/ -> GGUF files -> verification -> Modelfile, resumable step by step."""
from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from export.gguf import CONVERT_TYPES, Step, check_quant_type, clean_stale, convert, quantize
from export.merge import Merged, merge_run
from export.verify import CheckResult, check_chat_template, check_greedy, check_tokenization, check_top1_agreement
from trainer.config import Recipe
from trainer.runs import write_json
from trainer.template import r1_chat_template

GGUF_DIR = "gguf"
ENFORCED_AGREEMENT = ("q8_0",)
"""Quant types whose top-1 agreement must reach the threshold; lower-bit types are measured and reported."""


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
        return all(c.passed for c in self.checks if is_required(c))


def export_run(run_dir: Path, recipe: Recipe, quants: list[str], verify: bool = True,
               say=print) -> ExportResult:
    """Merge, convert, quantize and (unless told not to) verify; every step skips work already done."""
    started = time.perf_counter()
    quants = [check_quant_type(q) for q in quants]
    stem = run_dir.name
    for path in clean_stale(run_dir, run_dir / GGUF_DIR):
        say(f"removed {path}, left by an interrupted export")
    say("merging the adapter into the 16-bit base...")
    merged = merge_run(run_dir, recipe)
    out = run_dir / GGUF_DIR  # made only once the merge worked, so a refused export leaves nothing behind
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
        merge_check = [check_merge(run_dir, recipe, merged.path)] if merged.path != run_dir / "adapter" else []
        result.checks = merge_check + verification(merged.path, f16.path, [s.path for s in steps[1:]])
    result.seconds = time.perf_counter() - started
    result.peak_rss_gib, result.tools_peak_rss_gib = peak_rss_gib()
    write_json(out / "export.json", with_earlier(summary(result), out / "export.json"))
    return result


def verification(merged: Path, f16: Path, quantized: list[Path]) -> list[CheckResult]:
    checks = [check_tokenization(f16, merged), check_chat_template(f16), check_greedy(f16, merged)]
    for path in quantized:
        if not path.name.endswith("-bf16.gguf"):
            check = check_top1_agreement(path, merged)
            check.numbers["file"] = path.name
            checks.append(check)
    return checks


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
            str(run_dir / "adapter")).eval()
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
            "checks": [asdict(c) for c in result.checks], "passed": result.passed,
            "seconds": round(result.seconds, 2), "peak_rss_gib": round(result.peak_rss_gib, 3),
            "tools_peak_rss_gib": round(result.tools_peak_rss_gib, 3)}


def with_earlier(new: dict, path: Path) -> dict:
    """`new` plus the files (and their top-1 checks) an earlier export of this run wrote, that this one did not
    redo and that are still on disk: `make gguf QUANT=q8_0` then `QUANT=q4_k_m` lists both files."""
    import json

    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return new
    done = {f["path"] for f in new["files"]}
    kept = [f for f in old.get("files", []) if isinstance(f, dict) and f.get("path") not in done
            and Path(str(f.get("path"))).is_file()]
    names = {Path(f["path"]).name for f in kept}
    checks = [c for c in old.get("checks", []) if isinstance(c, dict) and c.get("name") == "top1_agreement"
              and c.get("numbers", {}).get("file") in names]
    merged = {**new, "files": new["files"] + kept, "checks": new["checks"] + checks}
    required = [c for c in checks if is_required(CheckResult(c.get("name", ""), False, "", c.get("numbers", {})))]
    merged["passed"] = new["passed"] and all(c.get("passed") for c in required)
    return merged


def peak_rss_gib() -> tuple[float, float]:
    """Max resident set size of this process, and of its largest finished child (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return own / 2**20, children / 2**20


def is_required(check: CheckResult) -> bool:
    """Every check must pass, except top-1 agreement of the types below q8_0, which is measured and reported."""
    if check.name != "top1_agreement":
        return True
    name = str(check.numbers.get("file", ""))
    return any(name.endswith(f"-{q}.gguf") for q in ENFORCED_AGREEMENT)
