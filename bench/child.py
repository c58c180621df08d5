"""The subprocess side of the bench: `python -m bench _child JOB.json` runs one job and writes its result.

The parent (`bench.runner`, `bench.scaling`) writes the job file and reads the result; the job bodies live with
what they measure (`bench.variants.run_job`, `bench.packing.check_job`, `build_job` below). This module is the
only one that imports all of them, so none of them needs to import another's module.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any


def build_job(job: dict) -> dict[str, Any]:
    """Child body of a shape build."""
    import torch

    from bench.shapes import build_shape, get_shape

    shape = get_shape(job["shape"])
    seconds = build_shape(shape, Path(job["dest"]), Path(job["tokenizer"]),
                          device="cuda" if torch.cuda.is_available() else "cpu")
    return {"build_s": round(seconds, 1)}


def body_of(kind: str):
    """The function that runs a job of this kind (imported here, in the child, so the parent stays light)."""
    if kind == "packing-check":
        from bench.packing import check_job

        return check_job
    if kind == "build":
        return build_job
    from bench.variants import run_job

    return run_job


def child_main(job_path: str) -> int:
    """Entry point of the subprocess: writes `{...}` or `{"error": traceback}` where the job says."""
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    out = Path(job["result_path"])
    try:
        body, code = body_of(job["kind"])(job), 0
    except BaseException as exc:  # noqa: BLE001  (reported to the parent, which keeps going)
        body, code = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}, 1
    from bench.measure import versions

    body["versions"] = versions()
    out.write_text(json.dumps(body, indent=2, default=str), encoding="utf-8")
    sys.stdout.flush()
    return code
