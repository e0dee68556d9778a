"""Score exported artifacts against the PyTorch model on the held-out split.

Torch-free: it runs an artifact through the same runtime classes the server uses, on float32 batches the
exporter prepared once, so every artifact is judged on identical inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekd.runtimes import RUNTIMES, runtime_of

BATCH = 64


def run_batched(runtime: Any, images: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """Logits of ``images`` (N, C, H, W) through ``runtime.run`` in chunks of ``batch``."""
    return np.concatenate([runtime.run(images[i : i + batch]) for i in range(0, len(images), batch)])


def compare_logits(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy, top-1 agreement with ``reference`` and the largest absolute logit difference."""
    pred = logits.argmax(1)
    return {
        "accuracy": float((pred == labels).mean()),
        "agreement": float((pred == reference.argmax(1)).mean()),
        "max_abs_diff": float(np.abs(logits.astype(np.float64) - reference).max()),
    }


def verify_file(model_file: Path, fmt: str, images: np.ndarray, labels: np.ndarray,
                reference: np.ndarray) -> dict[str, float]:
    """Load ``model_file`` with the runtime of ``fmt`` and compare its logits with the reference logits."""
    runtime = RUNTIMES[runtime_of(fmt)](model_file)
    return compare_logits(run_batched(runtime, images), reference, labels)


def manifest_table_rows(manifest: dict[str, Any]) -> list[dict[str, str]]:
    """One row per artifact, written or dropped, for the CLI's summary table (all values preformatted).

    Columns: MB on disk, held-out top-1, its drop from PyTorch in points, top-1 agreement with PyTorch, the
    largest logit difference, export seconds.
    """
    torch_acc = manifest["eval"]["torch_accuracy"]
    rows = [
        {"format": "pytorch", "status": "reference", "MB": "-", "top-1": f"{torch_acc:.4f}",
         "drop pts": "-", "agree": "-", "max |Δ|": "-", "s": "-"}
    ]
    entries = [(k, a, "ok") for k, a in manifest["artifacts"].items()]
    entries += [(k, a, "dropped: " + a["reason"]) for k, a in manifest.get("dropped", {}).items()]
    for key, a, status in entries:
        rows.append({
            "format": key,
            "status": status,
            "MB": f"{a['size_bytes'] / 1e6:.3f}" if "size_bytes" in a else "-",
            "top-1": f"{a['accuracy']:.4f}",
            "drop pts": f"{(torch_acc - a['accuracy']) * 100:+.2f}",
            "agree": f"{a['agreement']:.4f}",
            "max |Δ|": f"{a['max_abs_diff']:.3g}",
            "s": f"{a['export_seconds']:.1f}",
        })
    return rows
