"""Benchmark harness: QLoRA fine-tuning speed and memory of R1-Distill shapes, the seed scripts' method, bare
Unsloth and this project's trainer, on one realistic reasoning workload. Run it with `python -m bench`.

Modules: `shapes` (random-init models of the real configs), `workload` (the rows), `variants` (what each
variant runs, in its own subprocess), `measure` (token counting, timing, MFU, the table), `packing` (do packed
rows attend to each other?) and `runner` (the parent process that plans, launches and collects).
"""
