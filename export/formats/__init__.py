"""Export formats, one module and class each, in one registry (``FORMATS``).

The exporter writes every format asked for, at every precision it declares (INT8 with ``--int8``, FP16 with
``--fp16``); the manifest records each artifact under ``<key>-<precision>`` with its format and precision, and the
runtime registry (``edgekd.runtimes``) runs it. A new format is one module here: subclass ``ExportFormat``, decorate
it with ``@register_format`` (both from ``.base``) and import it below. Modules import their heavy packages (torch,
ONNX, OpenVINO, NNCF) only when they write, so listing the formats is cheap.
"""

from __future__ import annotations

# Importing a format module registers it; the order here is the order they are written in (ONNX first: every other
# format descends from its graph). The modules import the registry from ``base``, never from this package.
from edgekd.export.formats import onnx, openvino  # noqa: F401
from edgekd.export.formats.base import FORMATS, ExportFormat, artifact_kinds, register_format

__all__ = ["FORMATS", "ExportFormat", "artifact_kinds", "register_format"]
