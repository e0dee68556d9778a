"""PyTorch eager FP32: the baseline row of ``edgekd bench``, the speed every exported artifact is compared with.

It runs the export's source run dir, not an artifact, and needs the training side to rebuild the model; torch
and ``edgekd.rundir`` are imported only when it is opened, so a device without torch gets a "skipped" row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.runtimes.base import Runtime
from edgekd.runtimes.registry import register_runtime


@register_runtime
class TorchRuntime(Runtime):
    """The run dir's model in eval mode on CPU under ``torch.inference_mode``, with ``threads`` intra-op threads
    (None: torch's default); ``close`` gives the process its old thread count back."""

    name = "torch"
    title = "PyTorch"
    package = "torch"
    source_run = True

    def __init__(self, run_dir: str | Path, threads: int | None = None) -> None:
        import torch

        from edgekd.rundir import load_model

        self._torch = torch
        self._previous_threads = torch.get_num_threads()
        self.model, self.description = load_model(run_dir, device="cpu")
        if threads:
            torch.set_num_threads(threads)

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.model(self._torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()

    def close(self) -> None:
        self._torch.set_num_threads(self._previous_threads)

    @classmethod
    def version(cls) -> str:
        import torch

        return torch.__version__
