"""torchrun/DDP plumbing: PyTorch's own engine, with rank-0-only side effects."""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from edgekd.errors import RANK_ERRORS_ENV, EdgeKDError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return info


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device, info: DistInfo) -> list[float]:
    """Sum a few scalars over ranks (global accuracy, loss sums); a no-op in one process."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def launch_local(nproc: int, args: list[str]) -> None:
    """Run ``python -m edgekd ARGS`` in ``nproc`` processes on this machine, as ``torchrun --standalone`` does.

    torchelastic's launcher is called directly so that a failure ends in one line instead of its traceback: every
    rank hits the same user mistake, so ranks hand their messages over (``EDGEKD_RANK_ERRORS``) and each distinct
    one is printed once. Each process gets cores/N OpenMP threads unless ``OMP_NUM_THREADS`` is set (torchrun sets 1).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()), rdzv_backend="c10d",
        rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=1.0,  # torchrun polls every 0.1 s: 8 % of a core
    )
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    with tempfile.TemporaryDirectory(prefix="edgekd-ranks-") as errors:
        os.environ[RANK_ERRORS_ENV] = errors
        logging.disable(logging.CRITICAL)  # the agent logs each failure with a traceback; the summary below replaces it
        try:
            elastic_launch(config, sys.executable)("-m", "edgekd", *args)
        except SignalException:
            raise SystemExit(130) from None
        except ChildFailedError as e:
            messages = [p.read_text(encoding="utf-8") for p in sorted(Path(errors).glob("rank-*"))]
            if messages:
                raise EdgeKDError("\n".join(dict.fromkeys(messages))) from None
            rank, failure = e.get_first_failure()
            how = (f"exit code {failure.exitcode}" if failure.exitcode >= 0
                   else f"signal {signal.Signals(-failure.exitcode).name}")
            raise SystemExit(f"error: training process rank {rank} failed ({how}); its output is above") from None
        finally:
            logging.disable(logging.NOTSET)
            del os.environ[RANK_ERRORS_ENV]

