"""``edgekd val``: top-1, top-5 and per-class accuracy of every artifact of an export on a labelled image folder.

Torch-free, on the server's preprocessing and runtimes (``edgekd.serve.offline``), so on the held-out images the
exporter scored, an artifact's top-1 is the manifest's accuracy, image for image. Each batch is decoded once and
run through every artifact.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.contracts.manifest import PRECISIONS, load_manifest
from edgekd.errors import EdgeKDError, one_line
from edgekd.progress import progress_bar
from edgekd.runtimes import RUNTIMES, Runtime, artifact_runtimes, check_runtime_name, open_artifact, run_checked
from edgekd.serve.offline import decoded_batches, images_under
from edgekd.serve.preprocess import Preprocessor
from edgekd.settings import OFFLINE

LAYOUT = "a folder with one sub-folder of images per class, named as the export's classes (PATH/<class>/*.png|jpg|...)"
TOP_K = 5


def labelled_images(data: str, class_names: Sequence[str]) -> tuple[Path, list[tuple[Path, int]]]:
    """The images of ``--data`` (PATH or imagefolder:PATH) with their class index, and the folder read.

    A folder in the training layout (``train/`` and ``val/``) is read at ``val/``, the split the exporter scores.
    """
    folder = Path(data.removeprefix("imagefolder:"))
    if not folder.is_dir():
        raise EdgeKDError(f"--data {data} is not a folder; `edgekd val` reads {LAYOUT} (built-in datasets such as "
                          "digits are read by the training side only)")
    if (folder / "val").is_dir() and "val" not in class_names:
        folder = folder / "val"
    classes = sorted(d for d in folder.iterdir() if d.is_dir())
    unknown = [d.name for d in classes if d.name not in class_names]
    if unknown or not classes:
        found = f"its sub-folders {_few(unknown, 5)} are not" if unknown else "it has no"
        raise EdgeKDError(f"{folder}: {found} classes of this export ({_few(class_names, 10)}); pass {LAYOUT}")
    index = {name: i for i, name in enumerate(class_names)}
    samples = [(path, index[d.name]) for d in classes for path in images_under(d)]
    if not samples:
        raise EdgeKDError(f"{folder} has class folders but no images in them; pass {LAYOUT}")
    return folder, samples


def _few(names: Sequence[str], most: int) -> str:
    return ", ".join(names[:most]) + (" ..." if len(names) > most else "")


def val_plan(manifest: dict[str, Any], runtimes: Sequence[str] | None,
             precisions: Sequence[str] | None) -> list[tuple[str, str]]:
    """(artifact key, runtime) for each artifact of ``precisions``, with each of ``runtimes`` that runs its format."""
    for runtime in runtimes or ():
        check_runtime_name(runtime)
    bad = [p for p in precisions or () if p not in PRECISIONS]
    if bad:
        raise EdgeKDError(f"unknown precision {', '.join(bad)}; choose from {', '.join(PRECISIONS)}")
    plan = [
        (key, runtime)
        for key, entry in manifest["artifacts"].items()
        for runtime in runtimes or artifact_runtimes()
        if entry["format"] in RUNTIMES[runtime].formats and (not precisions or entry["precision"] in precisions)
    ]
    if not plan:
        have = ", ".join(f"{k} ({a['format']})" for k, a in manifest["artifacts"].items())
        raise EdgeKDError(f"no artifact for runtimes={','.join(runtimes or ['any'])} precisions="
                          f"{','.join(precisions or ['any'])}; this export has: {have}")
    return plan


class ArtifactScore:
    """One artifact on one runtime: the loaded model and its running counts, or why it has none."""

    def __init__(self, export_dir: Path, manifest: dict[str, Any], key: str, runtime: str, threads: int | None) -> None:
        self.key, self.runtime, self.entry = key, runtime, manifest["artifacts"][key]
        self.num_classes = len(manifest["class_names"])
        self.correct = np.zeros(self.num_classes, np.int64)  # top-1 hits per class
        self.top5 = 0
        self.status = "ok"
        self.model: Runtime | None = None
        try:
            self.model = open_artifact(export_dir, manifest, key, runtime=runtime, threads=threads)
        except ImportError as e:
            self.status = f"skipped: {e.name or RUNTIMES[runtime].package} not installed (pip install 'edgekd[device]')"
        except EdgeKDError as e:
            self.status = f"error: {e}"
        except Exception as e:  # a runtime's own error types: this artifact fails, the others are still scored
            self.status = f"error: {type(e).__name__}: {one_line(e)}"

    def add(self, batch: np.ndarray, labels: np.ndarray) -> None:
        """Count a batch's hits; a model that fails on it stops being scored, with the reason as its status."""
        if self.model is None:
            return
        try:
            logits = run_checked(self.model, self.key, batch, self.num_classes)
        except EdgeKDError as e:
            self.status, self.model = f"error: {e}", None
            return
        pred = logits.argmax(1)  # as the exporter scores: the first of equal logits
        self.correct += np.bincount(labels[pred == labels], minlength=self.num_classes)
        top = np.argsort(-logits, axis=1, kind="stable")[:, :TOP_K]
        self.top5 += int((top == labels[:, None]).any(1).sum())

    def result(self, counts: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
        """The JSON row: top-1 (a fraction, as the manifest's accuracy), top-5, per-class top-1, or the status alone."""
        row = {"artifact": self.key, "runtime": self.runtime, "format": self.entry["format"],
               "precision": self.entry["precision"], "status": self.status,
               "manifest_accuracy": self.entry.get("accuracy")}
        if self.status != "ok":
            return row
        total = int(counts.sum())
        return {
            **row, "images": total, "correct": int(self.correct.sum()), "top1": int(self.correct.sum()) / total,
            "top5": self.top5 / total,
            "per_class": {name: {"images": int(n), "correct": int(c), "top1": int(c) / int(n) if n else None}
                          for name, n, c in zip(class_names, counts, self.correct)},
        }


def run_val(export_dir: str | Path, data: str, *, runtimes: Sequence[str] | None = None,
            precisions: Sequence[str] | None = None, batch: int = OFFLINE.batch, threads: int | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Score the artifacts of ``export_dir`` on the labelled images of ``data`` (see ``labelled_images``).

    Returns the export, the folder, the image count, the unreadable files with the reason, and one row per
    (artifact, runtime) from ``ArtifactScore.result``.
    """
    if batch < 1 or (threads is not None and threads < 1):
        raise EdgeKDError(f"batch and threads must be >= 1; got batch {batch}, threads {threads}")
    export_dir = Path(export_dir)
    manifest = load_manifest(export_dir)
    names = [str(c) for c in manifest["class_names"]]
    folder, samples = labelled_images(data, names)
    plan = val_plan(manifest, runtimes, precisions)
    preprocess = Preprocessor.from_manifest(manifest)
    scores = [ArtifactScore(export_dir, manifest, key, runtime, threads) for key, runtime in plan]
    label_of = dict(samples)
    counts = np.zeros(len(names), np.int64)
    unreadable: list[dict[str, str]] = []
    with progress_bar(progress) as bar:
        task = bar.add_task("val", total=len(samples))
        for b in decoded_batches([path for path, _ in samples], preprocess, batch):
            unreadable += [{"file": str(path), "error": why} for path, why in b.failed]
            if b.paths:
                labels = np.array([label_of[path] for path in b.paths])
                counts += np.bincount(labels, minlength=len(names))
                x = b.input
                for s in scores:
                    s.add(x, labels)
            bar.advance(task, len(b.paths) + len(b.failed))
    if not counts.sum():
        raise EdgeKDError(f"none of the {len(samples)} images under {folder} could be read "
                          f"({unreadable[0]['file']}: {unreadable[0]['error']})")
    return {
        "export": str(export_dir), "model": manifest.get("model"), "data": str(folder), "images": int(counts.sum()),
        "unreadable": unreadable, "artifacts": [s.result(counts, names) for s in scores],
    }
