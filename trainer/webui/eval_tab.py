"""Evaluate tab: a finished run -> `python -m trainer eval` -> the before/after table and the answers side by side."""
from __future__ import annotations

import json

import gradio as gr
import pandas as pd

from trainer.runs import RunFolder
from trainer.webui import jobs, views

SIDE_BY_SIDE = ["question", "reference", "before (base)", "after (trained)"]


def results(run_path: str):
    """(table, answers) of the run's last evaluation, or nothing yet."""
    from trainer.evaluation.report import metric_table

    run = RunFolder(run_path) if run_path else None
    if run is None or not run.eval_metrics.is_file():
        return "", pd.DataFrame(columns=SIDE_BY_SIDE)
    metrics = json.loads(run.eval_metrics.read_text(encoding="utf-8"))
    return metric_table(metrics), pd.DataFrame(views.side_by_side(run), columns=SIDE_BY_SIDE)


def evaluate(run_path: str, samples):
    if not run_path:
        yield "error: choose a finished run (train one first)", "", pd.DataFrame(columns=SIDE_BY_SIDE)
        return
    argv = jobs.python_command("trainer", "eval", run_path, *(["--samples", str(int(samples))] if samples else []))
    empty = pd.DataFrame(columns=SIDE_BY_SIDE)
    for output, code in jobs.follow(argv, "eval"):
        if code is None:
            yield output, "", empty
    if code != 0:
        yield output, "", empty
        return
    table, answers = results(run_path)
    yield output, table, answers


def build():
    with gr.Row():
        run = gr.Dropdown(views.finished_runs(), label="finished run", elem_id="eval-run", scale=3)
        samples = gr.Number(value=5, precision=0, minimum=1, label="eval rows", info="held-out rows to answer",
                            elem_id="eval-samples")
        refresh = gr.Button("Refresh runs", scale=0)
    button = gr.Button("Evaluate before and after", variant="primary", elem_id="evaluate")
    table = gr.Markdown(elem_id="eval-table")
    answers = gr.Dataframe(headers=SIDE_BY_SIDE, wrap=True, elem_id="eval-answers")
    log = gr.Textbox(label="output", lines=jobs.LOG_LINES, max_lines=jobs.LOG_LINES, autoscroll=True, elem_id="eval-log")
    refresh.click(lambda: gr.Dropdown(choices=views.finished_runs()), None, run)
    run.change(results, run, [table, answers])
    button.click(evaluate, [run, samples], [log, table, answers])
    return run
