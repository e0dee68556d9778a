"""Export a run to verified ONNX / OpenVINO artifacts (FP32 and INT8) with a manifest (``edgekd.contracts.manifest``).

Importing this package stays torch-free: the device side reads manifests and tables from here, and
``export_run`` pulls in torch, ONNX and the quantizers only when it is first used.
"""

from __future__ import annotations

from typing import Any

from edgekd.export.verify import manifest_table_rows

__all__ = ["export_run", "manifest_table_rows"]


def __getattr__(name: str) -> Any:
    if name == "export_run":
        from edgekd.export.exporter import export_run

        return export_run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
