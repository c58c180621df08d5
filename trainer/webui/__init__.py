"""The web UI (Gradio): a client of the same CLI and run folders as `make`, holding no training logic.

Each tab is a small module; `jobs` starts the CLI in the background, `knobs` maps the recipe schema to form
fields, `views` turns run folders into what the page shows. `python -m trainer.webui` (`make webui`) starts it.
"""
