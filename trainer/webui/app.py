"""The page: one tab per stage, and the rules for where it may listen."""
from __future__ import annotations

import os

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
CSS = "#train-message p, #eval-table, #export-checks {font-family: ui-monospace, monospace}"

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls home


def auth_for(host: str, auth: str | None) -> tuple[str, str] | None:
    """A login for any address other than this machine's loopback; refused without one."""
    from trainer.errors import UserError

    if auth:
        user, sep, password = auth.partition(":")
        if not sep or not user or not password:
            raise UserError("WEBUI_AUTH must be user:password", where="WEBUI_AUTH", fix="e.g. WEBUI_AUTH=me:secret")
        return user, password
    if host not in LOCAL_HOSTS:
        raise UserError(f"listening on {host} lets other machines start training here, so it needs a login",
                        where="HOST", fix="set WEBUI_AUTH=user:password, or leave HOST at 127.0.0.1")
    return None


def build():
    import gradio as gr

    from trainer.webui import chat_tab, eval_tab, export_tab, runs_tab, train_tab, views

    with gr.Blocks(title="r1-tune") as page:
        gr.Markdown("## r1-tune: fine-tune DeepSeek-R1-Distill on your data\n"
                    "The same recipes and run folders as `make`; training runs on after you close this page.")
        with gr.Tabs():
            with gr.Tab("Train", id="train"):
                train_tab.build()
            with gr.Tab("Evaluate", id="evaluate") as evaluate:
                eval_run = eval_tab.build()
            with gr.Tab("Chat", id="chat") as chat:
                chat_model = chat_tab.build()
            with gr.Tab("Export", id="export") as export:
                export_run = export_tab.build()
            with gr.Tab("Runs", id="runs") as runs:
                runs_table = runs_tab.build()
        # Lists of runs are read again whenever their tab is opened: a run may have finished meanwhile.
        newest = lambda: views.finished_runs()[0] if views.finished_runs() else None  # noqa: E731
        evaluate.select(lambda: gr.Dropdown(choices=views.finished_runs(), value=newest()), None, eval_run)
        export.select(lambda: gr.Dropdown(choices=views.finished_runs(), value=newest()), None, export_run)
        chat.select(lambda: gr.Dropdown(choices=chat_tab.model_choices()), None, chat_model)
        runs.select(runs_tab.table, None, runs_table)
    return page


def serve(host: str, port: int, auth: str | None, block: bool = True):
    login = auth_for(host, auth)
    page = build()
    page.queue(default_concurrency_limit=4)
    return page.launch(server_name=host, server_port=port, auth=login, css=CSS, prevent_thread_lock=not block,
                       show_error=True, quiet=False)
