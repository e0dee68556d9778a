"""What every export format declares and does, and the registry they join (``edgekd.export.formats``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgekd.contracts.manifest import artifact_key
from edgekd.contracts.registry import Registry

if TYPE_CHECKING:  # the exporter's job; only its interface is used here
    from edgekd.export.exporter import ExportJob


class ExportFormat:
    """One file format: its key, the files of each precision it writes, the runtime that loads it, and how it writes
    them. One instance serves one export, so a format may keep what its precisions share (a converted model)."""

    key: ClassVar[str]  # the --formats value and the manifest's "format"
    title: ClassVar[str]  # how the CLI's help names it
    runtime: ClassVar[str]  # the runtime (``edgekd.runtimes``) that loads it; the registry test checks they agree
    # precision -> files relative to the export dir, the model file first; fp32 is always written, int8 with --int8,
    # fp16 with --fp16, each where the format has it
    files: ClassVar[dict[str, list[str]]]

    def write(self, precision: str, job: ExportJob) -> dict[str, Any]:
        """Write the files of ``precision`` under ``job.out``; return what the manifest records beside the scores."""
        raise NotImplementedError

    def paths(self, precision: str, out: Path) -> list[Path]:
        return [out / f for f in self.files[precision]]


FORMATS: Registry[type[ExportFormat]] = Registry("export format", attribute="key")
register_format = FORMATS.register  # class decorator: the exporter and the CLI then know the format by its key


def artifact_kinds() -> dict[str, tuple[str, str]]:
    """Every artifact key an export can hold -> (format, precision)."""
    return {artifact_key(key, p): (key, p) for key, cls in FORMATS.items() for p in cls.files}
