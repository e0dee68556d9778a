"""Export formats, one module and class each, in one registry (``FORMATS``).

The exporter writes every format asked for, at every precision it declares (INT8 with ``--int8``, FP16 with
``--fp16``); the manifest records each artifact under ``<key>-<precision>`` with its format and precision, and the
runtime registry (``edgekd.runtimes``) runs it. A new format is one module here: subclass ``ExportFormat``, decorate
it with ``@register_format`` and import it below. Modules import their heavy packages (torch, ONNX, OpenVINO,
NNCF) only when they write, so listing the formats is cheap.
"""

from __future__ import annotations

from edgekd.contracts.manifest import artifact_key
from edgekd.contracts.registry import Registry
from edgekd.export.formats.base import ExportFormat

FORMATS: Registry[type[ExportFormat]] = Registry("export format", "key")
register_format = FORMATS.register  # class decorator: the exporter and the CLI then know the format by its key


def artifact_kinds() -> dict[str, tuple[str, str]]:
    """Every artifact key an export can hold -> (format, precision)."""
    return {artifact_key(key, p): (key, p) for key, cls in FORMATS.items() for p in cls.files}


# Importing a format module registers it; the order here is the order they are written in (ONNX first: every other
# format descends from its graph).
from edgekd.export.formats import onnx  # noqa: E402, F401, I001
from edgekd.export.formats import openvino  # noqa: E402, F401

__all__ = ["FORMATS", "ExportFormat", "artifact_kinds", "register_format"]
