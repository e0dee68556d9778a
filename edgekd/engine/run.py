"""One training run, built and fitted with the default callbacks and any others given."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from edgekd.config import TrainConfig
from edgekd.distributed import DistInfo
from edgekd.engine.callbacks import Callback, default_callbacks
from edgekd.engine.parts import build_parts
from edgekd.engine.trainer import Trainer


def fit_run(cfg: TrainConfig, device: torch.device, info: DistInfo, show_progress: bool = True,
            callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    parts = build_parts(cfg, device, info, lambda teacher: fit_run(teacher, device, info, show_progress))
    return Trainer(parts, [*default_callbacks(parts, show_progress), *callbacks]).fit()
