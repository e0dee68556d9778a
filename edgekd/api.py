"""The Python API: a run dir as ``Run``, an export dir as ``Export``; each stage one call that returns the next object.

    from edgekd import Run
    teacher = Run.train(data="digits", model="resnet20", epochs=5, out="runs/teacher")
    student = Run.distill(method="r2kd", student="resnet8", teacher=teacher, epochs=5, out="runs/r2kd")
    export = student.prune(target_macs=0.5, recover_epochs=3, out="runs/pruned").export(int8=True, out="exports/p")
    export.bench(batch=[1, 8]); export.predict(["digit.png"])

The calls take the CLI's options by their Python names (``--batch-size`` is ``batch_size``) with the same defaults,
which live in the config the CLI uses too (``edgekd.config``, ``edgekd.defaults``), and raise ``EdgeKDError`` for a
user mistake. Training imports torch when a training call runs; ``import edgekd`` and ``Export`` never do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekd.contracts.rundir import SUMMARY, read_description
from edgekd.errors import EdgeKDError
from edgekd.exported import Export

__all__ = ["EdgeKDError", "Export", "Run"]


class Run:
    """A run dir written by ``train``, ``distill`` or ``prune``: the model, its config, metrics and summary."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        read_description(self.path)  # the run dir contract's own check: a one-line error for anything else

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @classmethod
    def load(cls, path: str | Path) -> Run:
        return cls(path)

    @classmethod
    def train(cls, *, out: str | Path, config: str | Path | None = None, progress: bool = True,
              **options: Any) -> Run:
        """Plain cross-entropy training (``edgekd train``): ``data``, ``model``, ``epochs``, ... as the CLI has them."""
        return cls._fit({**options, "method": "ce"}, out, config, progress)

    @classmethod
    def distill(cls, *, method: str, out: str | Path, student: str | None = None,
                teacher: Run | str | Path | None = None, config: str | Path | None = None, progress: bool = True,
                **options: Any) -> Run:
        """Distil ``student`` with ``method`` (``edgekd distill``), from ``teacher`` where the method needs one."""
        given = {"model": student, "teacher": str(Path(teacher)) if teacher is not None else None}
        return cls._fit({**options, **given, "method": method}, out, config, progress)

    @classmethod
    def _fit(cls, overrides: dict[str, Any], out: str | Path, config: str | Path | None, progress: bool) -> Run:
        from edgekd.config import run_config
        from edgekd.train import run_training

        summary = run_training(run_config(config, {**overrides, "out": str(out)}), show_progress=progress)
        return cls(summary["out"])

    @property
    def summary(self) -> dict[str, Any]:
        """What the run reported: held-out accuracy, parameters, MACs where pruned, method, dataset, ..."""
        import json

        path = self.path / SUMMARY
        if not path.is_file():
            raise EdgeKDError(f"{self.path} has no summary.json: the run did not finish; resume it with --resume")
        return json.loads(path.read_text(encoding="utf-8"))

    def prune(self, *, out: str | Path, progress: bool = True, **options: Any) -> Run:
        """Prune by ``ratio`` or to ``target_macs``, then with ``recover_epochs`` win accuracy back by distilling from
        this run (``edgekd prune``; ``edgekd.recover.prune`` has every option and default)."""
        from edgekd.recover import prune

        prune(self.path, out, show_progress=progress, **options)
        return Run(out)

    def fit(self, budget_ms: float, *, out: str | Path, **options: Any) -> Export:
        """The most accurate pruned model whose measured latency meets ``budget_ms``, recovered and exported
        (``edgekd fit``; ``edgekd.fit.fit`` has every option and default). Returns its export; ``out/fit.json`` holds
        every step."""
        from edgekd.contracts.rundir import FIT_EXPORT
        from edgekd.fit import fit

        fit(self.path, out, budget_ms, **options)
        return Export(Path(out) / FIT_EXPORT)

    def export(self, *, out: str | Path, int8: bool = False, progress: bool = True, **options: Any) -> Export:
        """ONNX and OpenVINO artifacts, each verified against this run's model, INT8 too with ``int8``
        (``edgekd export``; ``edgekd.export.export_run`` has every option and default)."""
        from edgekd.export import export_run

        export_run(self.path, out, int8=int8, progress=progress, **options)
        return Export(out)
