"""PyTorch eager FP32: the baseline row of ``edgekd bench``, the speed every exported artifact is compared with.

Kept apart from ``bench.py`` because it needs torch; the benchmark imports it only when the torch row is
asked for, and reports the row as skipped where torch is not installed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from edgekd.rundir import load_model
from edgekd.serve.runtime import Runtime


class TorchRuntime(Runtime):
    """The run dir's model in eval mode on CPU under ``torch.inference_mode``."""

    name = "torch"

    def __init__(self, run_dir: str | Path) -> None:
        self.model, self.description = load_model(run_dir, device="cpu")

    def run(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()

    @staticmethod
    def version() -> str:
        return torch.__version__


@contextlib.contextmanager
def torch_runtime(run_dir: str | Path, threads: int | None = None) -> Iterator[TorchRuntime]:
    """A ``TorchRuntime`` with ``threads`` intra-op threads (None: torch's default); the old count is restored after."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield TorchRuntime(run_dir)
    finally:
        torch.set_num_threads(previous)
