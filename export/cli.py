"""`python -m export {gguf,chat,serve,setup} ...`: thin entry points; a UserError becomes one message and exit code 2."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from trainer.errors import UserError, run_command


def main(argv: list[str] | None = None) -> int:
    return run_command(_parser().parse_args(argv),
                       interrupted="interrupted (finished files are kept; run again to continue)")


def gguf_command(args) -> int:
    from trainer.runs import resolve_run

    run_dir = resolve_run(args.run).require_finished().path
    return export_gguf(run_dir, args.quant, verify=not args.no_verify)


def export_gguf(run_dir: Path, quant: str | None, verify: bool = True) -> int:
    from export.gguf import check_quant_type
    from export.llamacpp import tools
    from export.modelfile import run_commands, write_modelfile
    from export.pipeline import export_run, verdicts
    from export.run_gguf import context_length
    from trainer.recipe import load_resolved

    from trainer.model import hide_weight_loading_bar

    hide_weight_loading_bar()  # the merge and the checks load models: no library bars before our lines
    recipe = load_resolved(run_dir)
    if quant:
        quants = [check_quant_type(q, where=f"QUANT={quant} (overrides export.quantizations)")
                  for q in quant.split(",")]
    else:
        quants = list(recipe.export.quantizations)
    result = export_run(run_dir, recipe, quants, verify=verify,
                        say=lambda text: print(text, file=sys.stderr, flush=True))
    for check in result.checks:
        print(f"  {check_mark(check)} {check.name}: {check.summary}")
    if result.checks:
        print("\n".join(f"{name}: {'good' if good else 'NOT GOOD (see FAIL above)'}"
                        for name, good in verdicts(result)))
    main_file = result.steps[-1].path
    others = sorted(p.name for p in main_file.parent.glob("*.gguf") if p != main_file)
    context = context_length(recipe)
    # the same system prompt as `make chat` (the recipe's data.system), so both talk to the model alike
    write_modelfile(main_file.parent, main_file.name, system=recipe.data.system, parameters={"num_ctx": context},
                    others=others)
    commands = run_commands(main_file, recipe.name, llama_cli=tools().cli, context=context)
    print(f"\nwrote {', '.join(s.path.name for s in result.steps)} and Modelfile in {main_file.parent}"
          f" ({result.seconds:.0f} s; peak host RAM {result.peak_rss_gib:.2f} GiB merging, "
          f"{result.tools_peak_rss_gib:.2f} GiB in llama.cpp's tools)\n"
          f"run it:\n  {commands.llama_cli}\n  {commands.ollama_create}\n  {commands.ollama_run}\n"
          f"  make serve RUN={run_dir}    (an OpenAI-compatible server)")
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
    from export.run_gguf import context_length, describe, require_gguf, run_of_gguf
    from export.serve import DEFAULT_CONTEXT
    from trainer.recipe import load_resolved
    from trainer.runs import resolve_run

    target = resolve_run(args.target).path if args.target == "latest" else Path(args.target)
    if target.is_dir():  # a run folder: the file `make gguf` verified last, or QUANT=
        run_dir = resolve_run(str(target)).require_finished().path
        chosen = require_gguf(run_dir, args.quant)
        gguf, which = chosen.path, describe(chosen)
    else:
        gguf, run_dir, which = target, run_of_gguf(target), str(target)
    recipe = load_resolved(run_dir) if run_dir is not None else None
    context = context_length(recipe) if recipe else DEFAULT_CONTEXT
    limit = args.max_new_tokens or (recipe.eval.max_new_tokens if recipe else 1024)
    print(f"chatting with {which}: up to {limit} new tokens in a {context}-token context", file=sys.stderr)
    return run_gguf_chat(gguf, args.prompt, limit, args.temperature, context=context)


def serve_command(args) -> int:
    from dataclasses import replace

    from export.run_gguf import choose_gguf, context_length, describe, require_gguf
    from export.serve import RunningServer, ServerSettings, check_settings, require_free_port
    from trainer.recipe import load_resolved
    from trainer.runs import RunFolder, Serving, resolve_run

    run_dir = resolve_run(args.run).require_finished().path
    settings = ServerSettings(gguf=Path(), alias=run_dir.name, host=args.host, port=args.port,
                              context=context_length(load_resolved(run_dir)),
                              api_key=os.environ.get("API_KEY") or None)
    check_settings(settings)  # before a possibly long export, not after it
    require_free_port(settings.host, settings.port)
    chosen = choose_gguf(run_dir, args.quant)
    if chosen is None:
        quant = f" QUANT={args.quant}" if args.quant else ""
        print(f"{run_dir.name} has no{quant} GGUF yet: exporting it first (make gguf RUN={run_dir}{quant})",
              file=sys.stderr, flush=True)
        code = export_gguf(run_dir, args.quant)
        if code:
            return code
        chosen = require_gguf(run_dir, args.quant)
    settings = replace(settings, gguf=chosen.path)
    print(f"starting llama-server on {describe(chosen)} ...", file=sys.stderr, flush=True)
    _stop_on_signals()
    server = RunningServer(settings, log_path=chosen.path.parent / "serve.log")
    run = RunFolder(run_dir)
    try:
        run.announce_server(Serving(server.base_url, chosen.path, server.key_file))  # the web UI's chat finds it
        print(serve_banner(server.base_url, settings), flush=True)
        code = server.wait()
    except KeyboardInterrupt:
        code = None
    finally:
        run.withdraw_server()
        server.stop()
    if code is None:
        print("\nllama-server stopped.", file=sys.stderr)
        return 0
    raise UserError(f"llama-server stopped by itself (exit code {code}):\n{server.log_tail()}",
                    where=str(server.log_path))


def serve_banner(base_url: str, settings) -> str:
    """What `make serve` prints once the model is loaded: where, how to call it, and how to stop it."""
    key = 'os.environ["API_KEY"]' if settings.api_key else '"none"'
    head = "import os; from openai import OpenAI" if settings.api_key else "from openai import OpenAI"
    return "\n".join([
        f"serving {settings.alias!r} (context {settings.context} tokens per request, {settings.parallel} at a time)"
        + ("" if settings.api_key is None else "; requests need the API_KEY as bearer token"),
        f"base URL: {base_url}    (also /health; Ctrl-C stops it)",
        "the reasoning comes in message.reasoning_content (delta.reasoning_content when streaming), "
        "the answer in content",
        "",
        head,
        f"client = OpenAI(base_url={base_url!r}, api_key={key})",
        f"m = client.chat.completions.create(model={settings.alias!r}, messages=[{{\"role\": \"user\", "
        f"\"content\": \"Hello\"}}]).choices[0].message; print(m.reasoning_content, '\\n--\\n', m.content)",
        ""])


def setup_command(args) -> int:
    from export.binding import install_binding
    from export.llamacpp import options_from_env, tools

    tools(options_from_env() or None)  # no CMAKE_ARGS: keep the build there is, whatever made it
    install_binding()
    return 0


def _stop_on_signals() -> None:
    """`kill` and a closed terminal stop the server the way Ctrl-C does (so no llama-server is left behind)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), interrupt)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export", description="Merge, convert, run and serve GGUF files.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    gguf = commands.add_parser("gguf", help="merge a run's adapter and write verified GGUF files")
    gguf.add_argument("run", help="a finished run folder, or `latest`")
    gguf.add_argument("--quant", help="comma-separated types (f16, bf16, q8_0, q4_k_m, q5_k_m, q6_k); "
                                      "default: the recipe's export.quantizations")
    gguf.add_argument("--no-verify", action="store_true",
                      help="skip the checks (they load the merged model in float32: 4 bytes per parameter of RAM)")
    gguf.set_defaults(command=gguf_command)
    chat = commands.add_parser("chat", help="chat with a GGUF file (or a run's GGUF) via llama-cpp-python")
    chat.add_argument("target", nargs="?", default="latest",
                      help="a .gguf file, a run folder, or `latest` (default: the newest finished run)")
    chat.add_argument("--quant", help="which of the run's GGUF files (default: the one `make gguf` wrote last)")
    chat.add_argument("--prompt", help="answer this once and exit")
    chat.add_argument("--max-new-tokens", type=int, help="longest reply (default: the recipe's eval.max_new_tokens)")
    chat.add_argument("--temperature", type=float, default=0.6)
    chat.set_defaults(command=chat_command)
    serve = commands.add_parser("serve", help="serve a run's GGUF with an OpenAI-compatible API (llama-server)")
    serve.add_argument("run", nargs="?", default="latest", help="a finished run folder, or `latest` (default)")
    serve.add_argument("--quant", help="which GGUF (default: the one `make gguf` wrote last; exported if missing)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--host", default="127.0.0.1", help="another address than loopback needs API_KEY")
    serve.set_defaults(command=serve_command)
    setup = commands.add_parser("setup", help="build llama.cpp once (tools, llama-server, libllama) and install "
                                              "llama-cpp-python against that library")
    setup.set_defaults(command=setup_command)
    return parser
