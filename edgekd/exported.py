"""``Export``: an export dir as one object, the device side of the Python API (``edgekd.api`` re-exports it).

Everything here runs where torch is not installed, as ``edgekd bench/val/predict/serve`` do: each method is one call
into the code those commands run, with their defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekd.contracts.manifest import load_manifest
from edgekd.settings import BENCH, SERVE


class Export:
    """An export dir written by ``Run.export`` or ``edgekd export``: its manifest and verified artifacts."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest: dict[str, Any] = load_manifest(self.path)

    def __repr__(self) -> str:
        return f"Export({str(self.path)!r}: {self.manifest['model']}, {', '.join(self.artifacts)})"

    @property
    def artifacts(self) -> list[str]:
        """The artifact keys it holds (``onnx-fp32``, ``onnx-int8``, ...)."""
        return list(self.manifest["artifacts"])

    def bench(self, *, batch: int | Sequence[int] = BENCH.batches, runtimes: Sequence[str] | None = None,
              precisions: Sequence[str] = BENCH.precisions, progress: bool = False,
              **options: Any) -> list[dict[str, Any]]:
        """Latency and throughput of each runtime and precision here (``edgekd bench``); one row each."""
        from edgekd.export.bench import run_bench

        batches = [batch] if isinstance(batch, int) else list(batch)
        return run_bench(self.path, runtimes=runtimes, precisions=precisions, batches=batches, progress=progress,
                         **options)

    def val(self, data: str | Path, *, progress: bool = False, **options: Any) -> dict[str, Any]:
        """Top-1, top-5 and per-class accuracy of every artifact on a labelled image folder (``edgekd val``)."""
        from edgekd.serve.val import run_val

        return run_val(self.path, str(data), progress=progress, **options)

    def predict(self, paths: str | Path | Sequence[str | Path], *, top_k: int | None = None,
                runtime: str | None = None, precision: str | None = None) -> list[dict[str, Any]]:
        """Classify image files and folders as ``POST /predict`` would (``edgekd predict``): per file, its top
        classes or the reason it could not be read."""
        from edgekd.serve.offline import Classifier, check_top_k, find_images

        named = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
        images = find_images(named)
        classifier = Classifier(self.path, runtime=runtime, precision=precision)
        return classifier.predict(images, check_top_k(top_k, len(classifier.class_names)))

    def serve(self, *, host: str = SERVE.host, port: int = SERVE.port, **options: Any) -> None:
        """Serve it over HTTP (``edgekd serve``: ``POST /predict``, KServe v2, ``/metrics``) until interrupted."""
        from edgekd.serve.server import run_server

        run_server(self.path, host=host, port=port, **options)
