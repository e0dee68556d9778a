"""What every runtime class declares and does: a loaded model, float32 NCHW batch in, float32 logits out."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgekd.errors import EdgeKDError, one_line


class Runtime:
    """One inference engine. Subclasses declare who they are and what they load, and import their package lazily,
    so that listing the registry needs none of them installed."""

    name: ClassVar[str]  # the --runtime value and the bench rows' "runtime"
    title: ClassVar[str]  # how reports name it
    package: ClassVar[str]  # the Python distribution it needs ("skipped: X not installed")
    formats: ClassVar[tuple[str, ...]] = ()  # manifest artifact formats it loads, its own format first
    platform: ClassVar[str] = ""  # the KServe v2 model-metadata platform of its artifacts
    options: ClassVar[tuple[str, ...]] = ()  # keyword options its constructor takes besides ``threads``
    source_run: ClassVar[bool] = False  # True: it runs the export's source run dir, not an artifact (a baseline)

    def __init__(self, model_path: str | Path, threads: int | None = None, **options: Any) -> None:
        raise NotImplementedError

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Undo process-wide settings made when opening; most runtimes make none."""

    @classmethod
    def version(cls) -> str:
        """The installed version of the runtime's package."""
        return metadata.version(cls.package)

    @classmethod
    def installed_version(cls) -> str | None:
        """The package's version, or None where it is not installed (nothing is imported)."""
        try:
            return metadata.version(cls.package)
        except metadata.PackageNotFoundError:
            return None


def run_checked(model: Runtime, key: str, batch: np.ndarray, num_classes: int) -> np.ndarray:
    """Logits of a batch; a model that rejects the manifest's input or answers another shape is a one-line error."""
    try:
        logits = model.run(batch)
    except Exception as e:  # the runtime's own error types: the model and the manifest's input disagree
        raise EdgeKDError(
            f"artifact {key} cannot run on the input the manifest describes (shape {list(batch.shape)}): "
            f"{type(e).__name__}: {one_line(e)}; re-run `edgekd export`"
        ) from None
    if logits.shape != (len(batch), num_classes):
        raise EdgeKDError(f"artifact {key} returns logits of shape {logits.shape}, expected "
                          f"({len(batch)}, {num_classes}); re-run `edgekd export`")
    return logits
