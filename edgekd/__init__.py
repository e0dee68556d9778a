"""edgekd: distil a vision model, quantize it, and serve it on an edge device.

The Python API is ``Run`` and ``Export`` (``edgekd.api``), loaded on first use. This module stays import-light:
the device side (``Export``, ``edgekd bench``, ``edgekd serve``) runs where torch is not installed, so nothing here
imports torch.
"""

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["EdgeKDError", "Export", "Run", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("EdgeKDError", "Export", "Run"):
        # by name: every module imports this package (for __version__), and the API is the layer above them all
        return getattr(importlib.import_module("edgekd.api"), name)
    raise AttributeError(f"module 'edgekd' has no attribute {name!r}")
