"""Inference runtimes, one module and class each, in one registry (``registry.RUNTIMES``).

Torch-free at import: this is what the server, the benchmark and the exporter's verification execute, and each
runtime imports its own package only when a model is opened. A new runtime is one module here that subclasses
``Runtime``, decorates it with ``@register_runtime`` and is imported below.
"""

# Importing a runtime module registers it; the order here is the order of preference (ORT first).
from edgekd.runtimes import ort  # noqa: F401, I001
from edgekd.runtimes import openvino  # noqa: F401
from edgekd.runtimes import torch_eager  # noqa: F401
from edgekd.runtimes.base import Runtime, run_checked
from edgekd.runtimes.registry import (
    RUNTIMES,
    artifact_runtimes,
    check_runtime_name,
    open_artifact,
    register_runtime,
    runtime_of,
    select_artifact,
)

__all__ = [
    "RUNTIMES", "Runtime", "artifact_runtimes", "check_runtime_name", "open_artifact", "register_runtime",
    "run_checked", "runtime_of", "select_artifact",
]
