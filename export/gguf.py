"""Hugging Face folder -> GGUF (f16/bf16 by llama.cpp's converter) -> quantized GGUF (by llama-quantize).

Every step writes to a hidden temporary name in the output folder and renames on success, so an interrupted run
never leaves a final-named file behind, and a rerun skips the steps whose files already exist.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from export.children import die_with_parent
from trainer.config import GGUF_TYPES, gguf_type_name, gguf_type_problem
from trainer.errors import UserError

QUANT_TYPES: dict[str, str] = {
    "f16": "F16",
    "bf16": "BF16",
    "q8_0": "Q8_0",
    "q4_k_m": "Q4_K_M",
    "q5_k_m": "Q5_K_M",
    "q6_k": "Q6_K",
}
"""Supported GGUF types: our lower-case name -> llama-quantize's name."""
assert tuple(QUANT_TYPES) == GGUF_TYPES, "trainer.config.GGUF_TYPES and QUANT_TYPES must list the same types"

CONVERT_TYPES = ("f16", "bf16")
"""Types written by the converter itself; the others are quantized from the f16 file."""

STAGE_PREFIX = "r1tune-stage-"
"""Temporary folders of links for the converter: `<tmp>/r1tune-stage-<pid>-<random>`."""
_TAIL_LINES = 8
_PROGRESS_BAR = re.compile(r"\d+%\||[\d.]+\s*\w*(?:it|byte|B)/s\]")


@dataclass(frozen=True)
class Step:
    """The outcome of one export step: the file, how long the step took, and whether it was skipped."""

    path: Path
    seconds: float
    skipped: bool = False


def check_quant_type(qtype: str, where: str = "export.quantizations") -> str:
    """Return the normalised quant type name, or raise UserError listing the valid ones.

    `where` names the setting the type came from: the recipe's export.quantizations, or QUANT= (--quant)."""
    problem = gguf_type_problem(qtype)
    if problem:
        raise UserError(problem, where=where)
    return gguf_type_name(qtype)


def convert(hf_dir: Path, out_path: Path, outtype: str = "f16", *, chat_template: str | None = None) -> Step:
    """Convert a Hugging Face model folder to an f16 or bf16 GGUF with llama.cpp's `convert_hf_to_gguf.py`.

    `chat_template`, when given, replaces the folder's template in the GGUF (`tokenizer.chat_template`), e.g.
    to ship the original inference template when the folder carries a training variant.
    """
    from export.llamacpp import converter

    outtype = check_quant_type(outtype)
    if outtype not in CONVERT_TYPES:
        raise UserError(f"the converter writes only {' or '.join(CONVERT_TYPES)}, not {outtype}",
                        fix="convert to f16, then call quantize()")
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    if out_path.is_file():
        return Step(out_path, 0.0, skipped=True)
    _check_hf_dir(hf_dir)
    script, gguf_py = converter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(gguf_py), os.environ.get("PYTHONPATH")]))}
    _say(f"Converting {hf_dir} to {out_path.name} (reads every weight once)...")
    started = time.monotonic()
    with _staged_model(hf_dir, chat_template) as model_dir, _atomic_output(out_path) as tmp:
        cmd = [sys.executable, str(script), str(model_dir), "--outfile", str(tmp), "--outtype", outtype]
        _run(cmd, env, what=f"converting {hf_dir} to GGUF")
    return Step(out_path, time.monotonic() - started)


def quantize(src_gguf: Path, out_path: Path, qtype: str) -> Step:
    """Quantize an f16/bf16 GGUF to `qtype` with `llama-quantize` (builds the tool on first use)."""
    from export.llamacpp import tools

    qtype = check_quant_type(qtype)
    src_gguf, out_path = Path(src_gguf), Path(out_path)
    if out_path.is_file():
        return Step(out_path, 0.0, skipped=True)
    if not src_gguf.is_file():
        raise UserError("GGUF file not found", where=str(src_gguf), fix="convert the model first")
    binary = tools().quantize
    _say(f"Quantizing {src_gguf.name} to {out_path.name}...")
    started = time.monotonic()
    with _atomic_output(out_path) as tmp:
        cmd = [str(binary), str(src_gguf), str(tmp), QUANT_TYPES[qtype], str(os.cpu_count() or 1)]
        _run(cmd, dict(os.environ), what=f"quantizing {src_gguf.name} to {qtype}")
    return Step(out_path, time.monotonic() - started)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _check_hf_dir(hf_dir: Path) -> None:
    if not (hf_dir / "config.json").is_file():
        raise UserError("not a Hugging Face model folder (no config.json)", where=str(hf_dir),
                        fix="point at the merged model folder (weights, config.json and tokenizer files)")


@contextmanager
def _atomic_output(out_path: Path) -> Iterator[Path]:
    """Yield a hidden temporary path next to `out_path`; rename it to `out_path` only if the block succeeds."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name the tool creates itself (so the file gets the usual permissions, unlike mkstemp's 0600).
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    try:
        yield tmp
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise UserError("the tool exited successfully but wrote no file", where=str(out_path))
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _staged_model(hf_dir: Path, chat_template: str | None) -> Iterator[Path]:
    """Yield `hf_dir`, or a folder of links to its files with the chat template replaced.

    The converter reads the template from tokenizer_config.json before chat_template.jinja, so the staged copy
    drops both and writes the new template into tokenizer_config.json; weights are linked, never copied.
    """
    if chat_template is None:
        yield hf_dir
        return
    with tempfile.TemporaryDirectory(prefix=f"{STAGE_PREFIX}{os.getpid()}-") as stage:
        staged = Path(stage)
        for item in hf_dir.iterdir():
            if item.name not in ("tokenizer_config.json", "chat_template.jinja", "chat_template.json"):
                (staged / item.name).symlink_to(item.resolve())
        config_path = hf_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        config["chat_template"] = chat_template
        (staged / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2),
                                                      encoding="utf-8")
        yield staged


def _run(cmd: list[str], env: dict[str, str], *, what: str) -> None:
    """Run a tool quietly; on failure raise UserError with the end of its output (the useful part)."""
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, errors="replace",
                            preexec_fn=die_with_parent)
    if result.returncode != 0:
        lines = (result.stdout + "\n" + result.stderr).splitlines()
        useful = [line for line in lines if line.strip() and not _PROGRESS_BAR.search(line)]
        tail = "\n  ".join(useful[-_TAIL_LINES:]) or "no output"
        raise UserError(f"{what} failed (exit code {result.returncode}):\n  {tail}",
                        fix="check that the folder holds a complete model; the lines above come from llama.cpp")


def clean_stale(run_dir: Path, out_dir: Path) -> list[Path]:
    """Remove what killed exports left: `.merged.<pid>-*` folders, `*.part` files and the converter's staging
    folders in the temp folder, each only when the process that made it is gone. Returns what was removed."""
    import shutil

    candidates = [*Path(run_dir).glob(".merged.*"), *Path(out_dir).glob(".*.part"),
                  *Path(tempfile.gettempdir()).glob(f"{STAGE_PREFIX}*")]
    removed = []
    for path in candidates:
        if _owner_alive(path.name) or (not re.search(r"\d+-", path.name) and _younger_than(path, 3600)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _owner_alive(name: str) -> bool:
    """Whether the pid written in a temporary name (`...<pid>-<random>...`) is a running process."""
    match = re.search(r"[.-](\d+)-[0-9a-z_]+(?:\.part)?$", name)
    if not match:  # no pid in the name: left by an older version; give one that may still run an hour
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _younger_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.lstat().st_mtime < seconds
    except OSError:
        return False
