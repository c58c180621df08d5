"""`python -m export {gguf,chat} ...`: thin entry points; a UserError becomes one message and exit code 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.errors import UserError, run_command


def main(argv: list[str] | None = None) -> int:
    return run_command(_parser().parse_args(argv),
                       interrupted="interrupted (finished files are kept; run again to continue)")


def gguf_command(args) -> int:
    from export.llamacpp import tools
    from export.modelfile import run_commands, write_modelfile
    from export.pipeline import export_run, verdicts
    from trainer.evaluate import resolve_run
    from trainer.recipe import load_resolved
    from trainer.runs import require_complete

    from trainer.model import hide_weight_loading_bar

    hide_weight_loading_bar()  # the merge and the checks load models: no library bars before our lines
    run_dir = require_complete(resolve_run(args.run))
    recipe = load_resolved(run_dir)
    quants = args.quant.split(",") if args.quant else list(recipe.export.quantizations)
    result = export_run(run_dir, recipe, quants, verify=not args.no_verify,
                        say=lambda text: print(text, file=sys.stderr, flush=True))
    for check in result.checks:
        print(f"  {check_mark(check)} {check.name}: {check.summary}")
    if result.checks:
        print("\n".join(f"{name}: {'good' if good else 'NOT GOOD (see FAIL above)'}"
                        for name, good in verdicts(result)))
    main_file = result.steps[-1].path
    write_modelfile(main_file.parent, main_file.name)
    commands = run_commands(main_file, recipe.name, llama_cli=tools().cli)
    print(f"\nwrote {', '.join(s.path.name for s in result.steps)} and Modelfile in {main_file.parent}"
          f" ({result.seconds:.0f} s; peak host RAM {result.peak_rss_gib:.2f} GiB merging, "
          f"{result.tools_peak_rss_gib:.2f} GiB in llama.cpp's tools)\n"
          f"run it:\n  {commands.llama_cli}\n  {commands.ollama_create}\n  {commands.ollama_run}")
    if result.checks and not result.passed:
        print("error: a GGUF file does not behave like the merged model (see FAIL above); do not ship it",
              file=sys.stderr)
        return 1
    if not result.checks:
        print("not verified (--no-verify): run make gguf again without it to check the files")
    return 0


def check_mark(check) -> str:
    return "ok  " if check.passed else "FAIL"


def chat_command(args) -> int:
    from export.chat import run_gguf_chat
    from export.pipeline import GGUF_DIR
    from trainer.evaluate import resolve_run

    target = resolve_run(args.target) if args.target == "latest" else Path(args.target)
    if target.is_dir():  # a run folder: its f16 file is the one closest to the trained weights
        found = sorted((target / GGUF_DIR).glob("*-f16.gguf"))
        if not found:
            raise UserError("no GGUF in this run yet", where=str(target), fix=f"run make gguf RUN={target} first")
        target = found[0]
    return run_gguf_chat(target, args.prompt, args.max_new_tokens, args.temperature)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export", description="Merge, convert and run GGUF files.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    gguf = commands.add_parser("gguf", help="merge a run's adapter and write verified GGUF files")
    gguf.add_argument("run", help="a finished run folder, or `latest`")
    gguf.add_argument("--quant", help="comma-separated types (f16, bf16, q8_0, q4_k_m, q5_k_m, q6_k); "
                                      "default: the recipe's export.quantizations")
    gguf.add_argument("--no-verify", action="store_true",
                      help="skip the checks (they load the merged model in float32: 4 bytes per parameter of RAM)")
    gguf.set_defaults(command=gguf_command)
    chat = commands.add_parser("chat", help="chat with a GGUF file (or a run's f16 GGUF) via llama-cpp-python")
    chat.add_argument("target", nargs="?", default="latest",
                      help="a .gguf file, a run folder, or `latest` (default: the newest finished run)")
    chat.add_argument("--prompt", help="answer this once and exit")
    chat.add_argument("--max-new-tokens", type=int, default=1024)
    chat.add_argument("--temperature", type=float, default=0.6)
    chat.set_defaults(command=chat_command)
    return parser
