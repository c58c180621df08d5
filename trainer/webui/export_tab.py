"""Export tab: `python -m export gguf` on a finished run, then its checks, files and run commands."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from trainer.runs import RunFolder
from trainer.webui import jobs, views

QUANTS = ["q8_0", "q4_k_m", "q5_k_m", "q6_k", "bf16"]
"""Besides f16, which is always written (the others are made from it and checked against it)."""
CHECK_MARKS = ("ok  ", "FAIL", "note")


def report(output: str) -> tuple[str, str]:
    """The checks and the run commands, as the CLI printed them."""
    lines = output.splitlines()
    checks = [line.strip() for line in lines if line.strip()[:4] in CHECK_MARKS and ":" in line]
    start = next((i for i, line in enumerate(lines) if line.startswith("run it:")), None)
    commands = [line.strip() for line in lines[start + 1:] if line.startswith("  ")] if start is not None else []
    checks_md = "\n".join(f"- `{line[:4].strip()}` {line[4:].strip()}" for line in checks)
    return checks_md, "\n".join(commands)


def export(run_path: str, quants: list[str]):
    files = pd.DataFrame(columns=["file", "size"])
    if not run_path:
        yield "error: choose a finished run", "", "", files
        return
    argv = jobs.python_command("export", "gguf", run_path, *(["--quant", ",".join(quants)] if quants else []))
    for output, code in jobs.follow(argv, "export"):
        yield output, "", "", files
    checks, commands = report(output)
    status = "export ok" if code == 0 else f"export failed (exit code {code})"
    yield output, f"**{status}**\n\n{checks}", commands, \
        pd.DataFrame(views.files_table(RunFolder(run_path).gguf), columns=["file", "size"])


def build():
    with gr.Row():
        run = gr.Dropdown(views.finished_runs(), label="finished run", elem_id="export-run", scale=3)
        refresh = gr.Button("Refresh runs", scale=0)
    quants = gr.CheckboxGroup(QUANTS, value=["q8_0"], label="GGUF types (f16 is always written)",
                              elem_id="export-quants")
    button = gr.Button("Export GGUF", variant="primary", elem_id="export")
    checks = gr.Markdown(elem_id="export-checks")
    commands = gr.Code(label="run it", language="shell", interactive=False, elem_id="export-commands")
    files = gr.Dataframe(headers=["file", "size"], elem_id="export-files")
    log = gr.Textbox(label="output", lines=jobs.LOG_LINES, max_lines=jobs.LOG_LINES, autoscroll=True, elem_id="export-log")
    refresh.click(lambda: gr.Dropdown(choices=views.finished_runs()), None, run)
    button.click(export, [run, quants], [log, checks, commands, files])
    return run
