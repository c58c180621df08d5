"""The loss curve of a run, drawn from the trainer's log history."""
from __future__ import annotations

from pathlib import Path


def loss_points(log_history: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, train loss) and (step, eval loss) pairs, in order."""
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h and "step" in h]
    return train, evals


def plot_loss(log_history: list[dict], path: Path, title: str) -> bool:
    """Write a PNG of train and eval loss against steps; False if there was nothing to draw."""
    train, evals = loss_points(log_history)
    lines = ([("train loss", *zip(*train), {"linewidth": 1.2})] if train else []) + \
        ([("eval loss", *zip(*evals), {"linewidth": 1.5, "marker": "o"})] if evals else [])
    return plot_lines(lines, path, title, "loss")


def plot_lines(lines: list[tuple], path: Path, title: str, ylabel: str) -> bool:
    """Write a PNG of (label, steps, values, matplotlib style) lines against the step, atomically; False if
    there is nothing to draw. The loss curve of SFT and the reward curve of GRPO both come from here."""
    if not lines:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=120)
    for label, steps, values, style in lines:
        axes.plot(steps, values, label=label, **style)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    figure.savefig(tmp)
    plt.close(figure)
    tmp.replace(path)
    return True
