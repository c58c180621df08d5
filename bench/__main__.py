"""`python -m bench [run] ...`, `python -m bench packing-check ...`, `scaling`, `export-tokenizers`, `merge`.

On the H100 (tokenizers carried from `python -m bench export-tokenizers .benchtok/tokenizers.tgz`):
    python3 -m bench --shapes qwen-7b,llama-8b --order variant --variants d,c,a,b,d-pack --steps 8 \\
        --tokenizers .benchtok/tokenizers.tgz --budget-s 510 --out $OUT/bench2.json --logs-tgz $OUT/logs2.tgz
On a machine with two GPUs, the product's own `--gpus N` on 1 and 2 GPUs (scaling efficiency):
    python3 -m bench scaling --cases qwen-1.5b:full:zero2,qwen-7b:lora:ddp --gpus 1,2 --steps 6 --warmup 2 \
        --tokenizers .benchtok/tokenizers.tgz --out $OUT/scaling.json
On a CPU, with the embedded tiny model:
    python -m bench --shapes tiny --variants a,b --steps 2 --warmup 1 --no-4bit
    python -m bench packing-check --shapes tiny --backends transformers --attn sdpa,eager --no-4bit
Nothing here imports torch, transformers or unsloth at module level: a variant's subprocess decides the order.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from trainer.errors import run_command

COMMANDS = ("run", "packing-check", "scaling", "export-tokenizers", "merge", "export", "_child")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS + ("-h", "--help"):
        argv.insert(0, "run")
    args = _parser().parse_args(argv)
    args.command_line = " ".join([os.path.basename(sys.executable), "-m", "bench", *map(shlex.quote, argv)])
    args.command = HANDLERS[args.name]
    return run_command(args)


def run_variants(args) -> int:
    from bench.runner import run

    return run(args, args.command_line)


def packing_check(args) -> int:
    from bench.runner import check

    args.variants, args.packing_check = "none", None
    return check(args, args.command_line)


def scaling(args) -> int:
    from bench.scaling import scaling

    return scaling(args, args.command_line)


def export_tokenizers(args) -> int:
    from bench.shapes import export_tokenizers

    sizes = export_tokenizers(args.dest)
    print(f"wrote {args.dest}: " + ", ".join(f"{k} ({v:,} tokens)" for k, v in sizes.items()))
    return 0


def merge(args) -> int:
    from bench.runner import merge

    return merge(args.inputs, args.out)


def export(args) -> int:
    from bench.export_bench import export_bench

    result = export_bench(args.shape, Path(args.work), args.tokenizers, args.quant, args.device, Path(args.out))
    print(json.dumps({k: v for k, v in result.items() if k != "stdout_tail"}, indent=2))
    return 0


def child(args) -> int:
    from bench.child import child_main

    return child_main(args.job)


HANDLERS = {"run": run_variants, "packing-check": packing_check, "scaling": scaling,
            "export-tokenizers": export_tokenizers, "merge": merge, "export": export, "_child": child}


def _common(p: argparse.ArgumentParser, shapes: str) -> None:
    p.add_argument("--shapes", default=shapes, help=f"comma list of qwen-1.5b, qwen-7b, llama-8b, tiny ({shapes})")
    p.add_argument("--work", default="/tmp/bench", help="cache of shape folders, rows, logs (default /tmp/bench)")
    p.add_argument("--out", help="write the JSON report here (rewritten after every variant)")
    p.add_argument("--logs-tgz", help="also keep every subprocess log in this .tgz (rewritten as the run goes)")
    p.add_argument("--tokenizers", help="tokenizer folder or .tgz from export-tokenizers (machines with no cache)")
    p.add_argument("--no-4bit", action="store_true", help="load in 16/32 bit instead of 4-bit (needed on a CPU)")
    p.add_argument("--workload", default="auto", choices=["auto", "medical", "tiny"],
                   help="row length distribution (auto: tiny for the tiny shape, else medical)")
    p.add_argument("--rows", type=int, default=0, help="rows to make (default: one epoch of the busiest variant)")
    p.add_argument("--check-rows", type=int, default=4, help="rows packed together by the packing check")
    p.add_argument("--budget-s", type=float, default=0, help="skip what would end after this many seconds")
    p.add_argument("--child-timeout", type=float, default=420, help="kill one variant's process after this")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per variant (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first (default 2)")
    p.add_argument("--batch-size", type=int, help="override every variant's micro-batch size")
    p.add_argument("--grad-accum", type=int, help="override every variant's gradient accumulation")
    p.add_argument("--allow-cpu-shapes", action="store_true", help=argparse.SUPPRESS)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="name", required=True,
                                metavar="{run,packing-check,scaling,export-tokenizers,merge}")
    run = sub.add_parser("run", help="benchmark variants on shapes (the default command)")
    _common(run, "qwen-1.5b,qwen-7b,llama-8b")
    run.add_argument("--variants", default="all", help="comma list of a, b, b-pack, c, d, d-pack, d-bs8, d-bs4, "
                                                       "d-padded, d-nll, d-early; all = a,b,c,d,d-pack,d-bs8")
    run.add_argument("--packing-check", help="also run the packing check first, for these backends "
                                             "(comma list of transformers, unsloth)")
    run.add_argument("--order", default="shape", choices=["shape", "variant"],
                     help="shape: all variants of one shape, then the next; variant: one variant on all shapes first")
    run.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the card, if not in the built-in table")
    check = sub.add_parser("packing-check", help="per-row losses packed vs alone: do packed rows attend each other?")
    _common(check, "qwen-1.5b")
    check.add_argument("--backends", default="transformers,unsloth", help="comma list of transformers, unsloth")
    check.add_argument("--attn", default="", help="comma list of attention implementations to force "
                                                  "(transformers backend; default: the model's own)")
    scale = sub.add_parser("scaling", help="a recipe on 1 and N GPUs through --gpus N: scaling efficiency")
    _common(scale, "")
    scale.add_argument("--cases", default="qwen-7b:lora:ddp,qwen-1.5b:full:zero2",
                       help="comma list of shape:method:strategy (default qwen-7b:lora:ddp,qwen-1.5b:full:zero2)")
    scale.add_argument("--gpus", default="1,2", help="process counts to run each case with (default 1,2)")
    scale.add_argument("--set", nargs="*", help="more recipe overrides for every run, e.g. train.packing=false")
    tokenizers = sub.add_parser("export-tokenizers", help="write the qwen and llama tokenizers into one .tgz")
    tokenizers.add_argument("dest")
    export = sub.add_parser("export", help="time make gguf (merge, convert, quantize) on a shape")
    export.add_argument("--shape", default="qwen-1.5b")
    export.add_argument("--work", default="/tmp/bench")
    export.add_argument("--tokenizers", help="tokenizer folder or .tgz from export-tokenizers")
    export.add_argument("--quant", default="q4_k_m")
    export.add_argument("--device", default="cpu", help="where the random weights are built (cpu or cuda)")
    export.add_argument("--out", default="export.json")
    merge = sub.add_parser("merge", help="combine JSON reports and print one table")
    merge.add_argument("--out")
    merge.add_argument("inputs", nargs="+")
    child = sub.add_parser("_child")
    child.add_argument("job")
    return parser


if __name__ == "__main__":
    sys.exit(main())
