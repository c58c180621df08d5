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
    from export.pipeline import export_run
    from trainer.recipe import load_resolved
    from trainer.runs import resolve_run

    run_dir = resolve_run(args.run).require_finished().path
    recipe = load_resolved(run_dir)
    if args.quant:
        from export.gguf import check_quant_type

        quants = [check_quant_type(q, where=f"QUANT={args.quant} (overrides export.quantizations)")
                  for q in args.quant.split(",")]
    else:
        quants = list(recipe.export.quantizations)
    result = export_run(run_dir, recipe, quants, verify=not args.no_verify,
                        say=lambda text: print(text, file=sys.stderr, flush=True))
    for check in result.checks:
        print(f"  {check_mark(check)} {check.name}: {check.summary}")
    main_file = result.steps[-1].path
    others = sorted(p.name for p in main_file.parent.glob("*.gguf") if p != main_file)
    # the same system prompt as `make chat` (the recipe's data.system), so both talk to the model alike
    write_modelfile(main_file.parent, main_file.name, system=recipe.data.system, others=others)
    commands = run_commands(main_file, recipe.name, llama_cli=tools().cli)
    print(f"\nwrote {', '.join(s.path.name for s in result.steps)} and Modelfile in {main_file.parent}"
          f" ({result.seconds:.0f} s; peak host RAM {result.peak_rss_gib:.2f} GiB merging, "
          f"{result.tools_peak_rss_gib:.2f} GiB in llama.cpp's tools)\n"
          f"run it:\n  {commands.llama_cli}\n  {commands.ollama_create}\n  {commands.ollama_run}")
    if result.checks and not result.passed:
        print("error: the GGUF does not behave like the merged model (see FAIL above)", file=sys.stderr)
        return 1
    return 0


def check_mark(check) -> str:
    """`ok`, `FAIL`, or `note` for a measurement that is reported but not required (top-1 below q8_0)."""
    from export.pipeline import is_required

    if check.passed:
        return "ok  "
    return "FAIL" if is_required(check) else "note"


def chat_command(args) -> int:
    from export.chat import run_gguf_chat
    from trainer.runs import RunFolder, resolve_run

    target = resolve_run(args.target).path
    if target.is_dir():  # a run folder: its f16 file is the one closest to the trained weights
        found = sorted(RunFolder(target).gguf.glob("*-f16.gguf"))
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
