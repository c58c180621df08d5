"""Runs tab: every run folder with its state (running, stopped and resumable, failed, finished) and key metrics."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from trainer.webui import views


def table() -> pd.DataFrame:
    return pd.DataFrame(views.runs_table(), columns=views.RUN_COLUMNS)


def build():
    runs = gr.Dataframe(table(), headers=views.RUN_COLUMNS, interactive=False, elem_id="runs-table")
    gr.Button("Refresh").click(table, None, runs)
    gr.Timer(5.0).tick(table, None, runs, show_progress="hidden")
    return runs
