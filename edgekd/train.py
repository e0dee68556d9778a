"""`edgekd train` (method ``ce``) and `edgekd distill` (any registered method) as one call: ``run_training``.

One process or many (torchrun/DDP); CPU or CUDA (AMP, channels_last). The engine (``edgekd.engine``) builds the
run, and its callbacks end every epoch with a line in ``metrics.jsonl`` and an atomic ``checkpoint.pt``, so a
killed run resumes where it stopped and, on CPU, reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from edgekd.config import TrainConfig
from edgekd.distributed import init_from_env, shutdown
from edgekd.engine import Callback, fit_run
from edgekd.engine.checks import resolve_device


def run_training(cfg: TrainConfig, *, show_progress: bool = True, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train or distil as ``cfg`` says and return the run's summary (also written to ``summary.json``); ``callbacks``
    are fired after the default ones (``edgekd.engine.default_callbacks``)."""
    device = resolve_device(cfg.device)
    info = init_from_env(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        return fit_run(cfg, device, info, show_progress, callbacks)
    finally:
        shutdown()
