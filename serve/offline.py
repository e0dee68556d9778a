"""Classify image files without a server, for ``edgekd predict`` and ``edgekd val``.

Everything that decides a file's scores is the server's own: the artifact choice (``select_artifact``), its loading
(``open_artifact``, sha256-checked), the manifest's preprocessing (``Preprocessor``) and the softmax, so a file gets
the answer ``POST /predict`` gives it. Files are decoded in a few threads, one batch ahead of the model.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from edgekd.contracts.manifest import PRECISIONS, load_manifest
from edgekd.errors import EdgeKDError, one_line
from edgekd.progress import progress_bar
from edgekd.runtimes import open_artifact, run_checked, runtime_of, select_artifact
from edgekd.serve.preprocess import ImageError, Preprocessor
from edgekd.settings import OFFLINE

if TYPE_CHECKING:
    pass

# torchvision's ImageFolder extensions: `val` reads the files a training run on the same folder read
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DECODE_THREADS = 4  # Pillow decodes and resizes without the GIL; more threads only hold more images in memory


def images_under(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder``, in ImageFolder's order (sorted walk, symlinks followed)."""
    found = []
    for root, _, files in sorted(os.walk(folder, followlinks=True)):
        found += [Path(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def find_images(paths: Sequence[Path]) -> list[Path]:
    """The files named (whatever their extension) and the images under the folders named, each once."""
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found += images_under(p)
        elif p.exists():
            found.append(p)
        else:
            raise EdgeKDError(f"{p} does not exist; pass image files or folders of images")
    if not found:
        raise EdgeKDError(f"no image files ({' '.join(IMAGE_EXTENSIONS)}) in {', '.join(map(str, paths))}")
    return list(dict.fromkeys(found))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities along the last axis, in float64 (what ``/predict`` reports)."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def top_classes(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, highest first; ties keep the lower index first."""
    return np.argsort(-probs, kind="stable")[:k]


def check_top_k(top_k: int | None, num_classes: int) -> int:
    """``top_k`` as ``/predict`` takes it: default 5 (or all classes if fewer), at most the number of classes."""
    if top_k is None:
        return min(5, num_classes)
    if not 1 <= top_k <= num_classes:
        raise EdgeKDError(f"top-k must be between 1 and {num_classes} (the number of classes); got {top_k}")
    return top_k


def decode_file(preprocess: Preprocessor, path: Path) -> np.ndarray | str:
    """A file as the model's (3, H, W) input, or why it cannot be classified."""
    try:
        return preprocess(path.read_bytes())
    except OSError as e:
        return f"cannot read it: {e.strerror or one_line(e)}"
    except ImageError as e:
        return one_line(e)
    except Exception as e:  # Pillow failing on an odd file in a way nobody foresaw: still only that file's problem
        return f"cannot classify it ({type(e).__name__}: {one_line(e)})"


@dataclass
class Batch:
    """One batch of files: those that decoded, their stacked input, and the others with the reason."""

    paths: list[Path] = field(default_factory=list)
    arrays: list[np.ndarray] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def input(self) -> np.ndarray:
        return np.stack(self.arrays)


def decoded_batches(paths: Sequence[Path], preprocess: Preprocessor, batch: int = OFFLINE.batch) -> Iterator[Batch]:
    """``paths`` decoded in batches of ``batch``, in order; the next batch decodes while the caller runs this one."""
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # max_pixels refuses those, in one line
    chunks = [paths[i : i + batch] for i in range(0, len(paths), batch)]
    with ThreadPoolExecutor(min(DECODE_THREADS, os.cpu_count() or 1), thread_name_prefix="edgekd-decode") as pool:

        def submit(chunk: Sequence[Path]) -> list[tuple[Path, Future]]:
            return [(p, pool.submit(decode_file, preprocess, p)) for p in chunk]

        ahead = submit(chunks[0]) if chunks else []
        for i in range(len(chunks)):
            current, ahead = ahead, submit(chunks[i + 1]) if i + 1 < len(chunks) else []
            out = Batch()
            for path, future in current:
                result = future.result()
                if isinstance(result, str):
                    out.failed.append((path, result))
                else:
                    out.paths.append(path)
                    out.arrays.append(result)
            yield out


class Classifier:
    """The artifact ``edgekd serve`` would load for the same ``runtime``/``precision``, with its preprocessing."""

    def __init__(self, export_dir: Path, *, runtime: str | None = None, precision: str | None = None,
                 threads: int | None = None) -> None:
        if precision is not None and precision not in PRECISIONS:
            raise EdgeKDError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if threads is not None and threads < 1:
            raise EdgeKDError(f"threads must be >= 1 (or left out for the runtime's default); got {threads}")
        self.manifest = load_manifest(export_dir)
        self.key = select_artifact(self.manifest, runtime, precision)
        entry = self.manifest["artifacts"][self.key]
        self.runtime_name, self.precision = runtime or runtime_of(entry["format"]), entry["precision"]
        self.preprocess = Preprocessor.from_manifest(self.manifest)
        self.model = open_artifact(export_dir, self.manifest, self.key, runtime=runtime, threads=threads)
        self.class_names = [str(c) for c in self.manifest["class_names"]]

    def predict(self, paths: Sequence[Path], top_k: int, *, batch: int = OFFLINE.batch,
                progress: bool = False) -> list[dict[str, Any]]:
        """Per file, in order: ``{"file", "predictions": [{"index", "label", "score"}]}`` or ``{"file", "error"}``."""
        if batch < 1:
            raise EdgeKDError(f"batch must be >= 1, got {batch}")
        results: dict[Path, dict[str, Any]] = {}
        with progress_bar(progress) as bar:
            task = bar.add_task("predict", total=len(paths))
            for b in decoded_batches(paths, self.preprocess, batch):
                for path, reason in b.failed:
                    results[path] = {"file": str(path), "error": reason}
                if b.paths:
                    probs = softmax(run_checked(self.model, self.key, b.input, len(self.class_names)))
                    for path, p in zip(b.paths, probs):
                        top = top_classes(p, top_k)
                        results[path] = {"file": str(path), "predictions": [
                            {"index": int(i), "label": self.class_names[i], "score": float(p[i])} for i in top]}
                bar.advance(task, len(b.paths) + len(b.failed))
        return [results[p] for p in paths]
