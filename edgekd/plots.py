"""Training curves as a PNG (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_curves(history: list[dict[str, Any]], path: str | Path, title: str) -> None:
    """Losses by name (left) and train/held-out accuracy (right) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgekd.fsutil import atomic_path

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for name in history[-1]["losses"]:
        ax_loss.plot(epochs, [r["losses"].get(name, float("nan")) for r in history], marker="o", label=name)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="losses")
    ax_loss.legend()
    ax_acc.plot(epochs, [r["train_acc"] for r in history], marker="o", label="train")
    ax_acc.plot(epochs, [r["val_acc"] for r in history], marker="o", label="held-out")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy", title="accuracy", ylim=(0, 1.02))
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
