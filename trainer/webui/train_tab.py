"""Train tab: recipe or data file, the main knobs, preview, Start / Stop / Resume, and a live view of the run.

Start runs `python -m trainer train <recipe> <overrides>` (see `jobs`), after the same checks the CLI makes
first (recipe, then data), so a mistake is one line here and nothing starts.
"""
from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr
import pandas as pd

from trainer.errors import UserError
from trainer.runs import RunFolder, all_runs
from trainer.webui import jobs, views
from trainer.webui.knobs import DATA_KEYS, MAIN_KEYS, extra_overrides, knob, make_command, overrides, value_text

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
FORMATS = knob("data.format").choices


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


@functools.cache
def _hardware():
    from trainer.hardware import detect

    return detect()


def load(recipe_name: str, args: list[str] = ()):
    """The recipe with these overrides, checked exactly as `python -m trainer train` checks it."""
    from trainer.recipe import find_recipe, load_recipe

    return load_recipe(find_recipe(recipe_name, RECIPES_DIR), list(args), _hardware())


def form_args(recipe_name, data_path, upload, data_format, columns, extra, *values) -> list[str]:
    """The overrides the form makes: data, changed knobs, then the free-form box (which wins)."""
    chosen = dict(zip(MAIN_KEYS, values, strict=True))
    auto = load(recipe_name)
    # Knobs are compared with the recipe under the chosen card's profile: only what differs from it is passed.
    profile_args = overrides(auto, {"profile": chosen["profile"]})
    base = load(recipe_name, profile_args) if profile_args else auto
    args = profile_args + overrides(base, {"data.path": upload or data_path, "data.format": data_format})
    for pair in (columns or "").replace("\n", ",").split(","):
        if pair.strip():
            name, sep, column = pair.partition("=")
            if not sep:
                raise UserError(f"column mapping '{pair.strip()}': expected name=column", where="columns",
                                fix="e.g. question=Question, reasoning=Complex_CoT, answer=Response")
            args.append(f"data.columns.{name.strip()}={column.strip()}")
    args += overrides(base, {k: v for k, v in chosen.items() if k != "profile"})
    return args + extra_overrides(extra)


def check(recipe_name, *form) -> tuple[str, str]:
    """(message, make command) for the form as it stands."""
    try:
        args = form_args(recipe_name, *form)
        recipe = load(recipe_name, args)
    except UserError as error:
        return f"error: {error.render()}", ""
    plan = predicted_memory(recipe)
    return (plan or "recipe ok"), make_command(recipe_name, args)


def predicted_memory(recipe) -> str:
    """The planner's predicted peak GPU memory of these knobs (as written) against the chosen card, as
    `make plan` prints it; on the tiny model or the `cpu` profile there is no GPU plan."""
    from trainer.config import TINY
    from trainer.plan import CannotFit, parse_card, plan_recipe

    if recipe.model.base == TINY:
        return ""
    try:
        card = parse_card(recipe.profile)[0]
    except UserError:
        card = None  # auto: the card is only known on the machine that trains
    try:
        plan = plan_recipe(recipe, card, choose_settings=False)
    except CannotFit as error:
        return f"memory: {error.render()}"
    except UserError:
        return ""
    where = f" of {plan.budget_gib:.1f} GiB on {plan.card}" if plan.card else " (no card chosen)"
    verdict = "" if plan.fits is None else (": fits" if plan.fits else ": does NOT fit")
    return f"memory: predicted peak {plan.peak_gib:.2f} GiB{where}{verdict} (make plan shows the parts)"


def prefill(recipe_name, profile: str | None = None):
    """Form values from a recipe (with a chosen card profile): its data file and format, and every knob's value."""
    recipe = load(recipe_name, [f"profile={profile}"] if profile else [])
    return [value_text(recipe, key) for key in DATA_KEYS] + [value_text(recipe, key) for key in MAIN_KEYS]


def refill_for_profile(recipe_name, profile):
    """Another card: show the values its profile sets (the knobs other than the profile itself)."""
    try:
        values = prefill(recipe_name, profile)
    except UserError:
        return [gr.update()] * (len(DATA_KEYS) + len(MAIN_KEYS) - 1)  # the check reports the bad profile
    return [v for key, v in zip([*DATA_KEYS, *MAIN_KEYS], values, strict=True) if key != "profile"]


def preview(recipe_name, *form):
    """The first examples as training sees them (prompt apart from the trained text) and the data summary."""
    from trainer.data.dataset import encode, load_conversations
    from trainer.model import load_tokenizer
    from trainer.data.preview import example_record

    try:
        recipe = load(recipe_name, form_args(recipe_name, *form))
        conversations = load_conversations(recipe)
        tokenizer = load_tokenizer(recipe.model)
        prepared = encode(conversations, tokenizer, recipe)
    except UserError as error:
        return f"error: {error.render()}", pd.DataFrame(), ""
    rows = [example_record(example, tokenizer) for example in prepared.train[:3]]
    table = pd.DataFrame([[r["where"], r["prompt_text"], r["trained_text"],
                           f"{r['n_trained']}/{r['n_tokens']}" + (" (truncated)" if r["truncated"] else "")]
                          for r in rows], columns=["row", "prompt (masked)", "trained text", "trained/tokens"])
    summary = "\n".join(f"- {line}" for line in prepared.report.summary())
    return "data ok", table, summary


def start(recipe_name, *form) -> str:
    """Check the recipe and the data as the CLI would, then start training in the background."""
    from trainer.data.dataset import load_conversations

    try:
        args = form_args(recipe_name, *form)
        load_conversations(load(recipe_name, args))  # bad data stops here, before anything starts
        jobs.start_training([recipe_name, *args])
    except UserError as error:
        return f"error, nothing started: {error.render()}"
    return f"started: `{make_command(recipe_name, args)}`; it keeps running if you close this page"


def stop() -> str:
    run = jobs.training_now()
    if run is None:
        return "error: nothing is training"
    try:
        return jobs.stop(run)
    except UserError as error:
        return f"error: {error.render()}"


def resume() -> str:
    """Continue the newest stopped run with the recipe and overrides it was started with."""
    run = next((r for r in all_runs() if r.state == "stopped"), None)
    if run is None:
        return "error: no stopped run with a checkpoint to resume"
    argv = run.read_command()
    if not argv:
        return f"error: {run.name} has no command.json (started before the UI existed): resume it with make"
    try:
        jobs.start_training([*argv, "--resume", "--run-dir", str(run.path)])
    except UserError as error:
        return f"error: {error.render()}"
    return f"resuming {run.name} from {run.latest_checkpoint().name}"


def followed() -> RunFolder | None:
    """The run the page follows: the one training now, else the newest."""
    runs = all_runs()
    return next((r for r in runs if r.state == "running"), runs[0] if runs else None)


def follow():
    """(progress line, loss points, log tail) of the followed run, or the console of one still loading."""
    run = followed()
    console = jobs.last_console()
    if run is None or (jobs.launched_training_alive() and run.state != "running"):
        return "starting: loading the data and the model...", pd.DataFrame(columns=["step", "loss"]), \
            jobs.tail(console)
    points = pd.DataFrame(views.losses(run), columns=["step", "loss"])
    log = jobs.tail(run.train_log) or jobs.tail(console)
    return views.progress_line(run), points, log


def build():
    names = recipe_names()
    first = "news" if "news" in names else names[0]
    initial = dict(zip([*DATA_KEYS, *MAIN_KEYS], prefill(first), strict=True))
    with gr.Row():
        recipe = gr.Dropdown(names, value=first, label="recipe", info="recipes/<name>.yaml: the starting point",
                             elem_id="recipe")
        data_path = gr.Textbox(initial["data.path"], label="data file", info=knob("data.path").doc,
                               elem_id="data-path")
        upload = gr.File(label="or upload a data file", type="filepath", file_types=[".jsonl", ".json", ".csv",
                                                                                    ".parquet"], height=90)
    with gr.Row():
        data_format = gr.Dropdown(list(FORMATS), value=initial["data.format"], label="format",
                                  info=knob("data.format").doc, elem_id="data-format")
        columns = gr.Textbox(label="column mapping", info="name=column, e.g. question=Question, "
                             "reasoning=Complex_CoT, answer=Response (see data.columns)", elem_id="columns")
    fields = []
    with gr.Accordion("knobs (the recipe's values; change any)", open=True):
        for start_at in range(0, len(MAIN_KEYS), 4):
            with gr.Row():
                for key in MAIN_KEYS[start_at:start_at + 4]:
                    spec = knob(key)
                    label = "profile (card)" if key == "profile" else key
                    if spec.choices:
                        fields.append(gr.Dropdown(list(spec.choices), value=initial[key], label=label,
                                                  info=spec.doc, elem_id=_elem(key)))
                    else:
                        fields.append(gr.Textbox(initial[key], label=label, info=spec.doc, elem_id=_elem(key)))
        extra = gr.Textbox(label="other overrides", info="key=value ..., exactly as after `make train ARGS=`",
                           elem_id="extra")
    message = gr.Markdown("recipe ok", elem_id="train-message")
    command = gr.Code(make_command(first, []), label="the same from a terminal", language="shell",
                      interactive=False, lines=1, max_lines=3, elem_id="command")
    with gr.Row():
        preview_button = gr.Button("Preview data", elem_id="preview")
        start_button = gr.Button("Start", variant="primary", elem_id="start")
        stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
        resume_button = gr.Button("Resume", elem_id="resume")
    with gr.Accordion("preview: what is trained", open=False) as preview_box:
        examples = gr.Dataframe(wrap=True, elem_id="preview-table")
        summary = gr.Markdown()
    progress = gr.Markdown(elem_id="progress")
    with gr.Row():
        plot = gr.LinePlot(x="step", y="loss", title="training loss", height=260, elem_id="loss-plot")
        log = gr.Textbox(label="log", lines=jobs.LOG_LINES, max_lines=jobs.LOG_LINES, autoscroll=True, elem_id="log")

    form = [data_path, upload, data_format, columns, extra, *fields]
    quiet = {"show_progress": "hidden"}
    # One queue for everything that writes the message, so answers arrive in the order of the clicks and edits.
    ordered = {"concurrency_id": "train-form", "concurrency_limit": 1}
    recipe.change(prefill, recipe, [data_path, data_format, *fields], **quiet).then(
        check, [recipe, *form], [message, command], **quiet, **ordered)
    profile = fields[MAIN_KEYS.index("profile")]
    others = [data_path, data_format, *(f for f in fields if f is not profile)]
    profile.input(refill_for_profile, [recipe, profile], others, **quiet)
    for component in form:
        component.change(check, [recipe, *form], [message, command], **quiet, **ordered)
    preview_button.click(lambda: gr.Accordion(open=True), None, preview_box).then(
        preview, [recipe, *form], [message, examples, summary], **ordered)
    start_button.click(start, [recipe, *form], message, **ordered)
    stop_button.click(stop, None, message, **ordered)
    resume_button.click(resume, None, message, **ordered)
    gr.Timer(1.0).tick(follow, None, [progress, plot, log], **quiet)


def _elem(key: str) -> str:
    return "knob-" + key.replace(".", "-").replace("_", "-")
