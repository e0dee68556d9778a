"""What the benchmark scripts share: interleaved batch-1 timing and the machine they ran on."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np


def time_runners(runners: dict, x: np.ndarray, iters: int, warmup: int, rounds: int = 8) -> dict[str, float]:
    """Median batch-1 latency (ms) per runner, measured round-robin in ``rounds`` slices after a warm-up."""
    for run in runners.values():
        for _ in range(warmup):
            run(x)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    per_round = max(1, iters // rounds)
    for _ in range(rounds):
        for name, run in runners.items():
            for _ in range(per_round):
                start = time.perf_counter()
                run(x)
                samples[name].append(time.perf_counter() - start)
    return {name: float(np.median(s) * 1e3) for name, s in samples.items()}


def time_export(run_dir: Path, export_dir: Path, manifest: dict, keys: list[str], threads: int, iters: int,
                warmup: int) -> dict[str, float]:
    """Batch-1 ms of the run's PyTorch eager model (``pytorch-fp32``) and of the export's artifacts ``keys``, timed
    side by side by ``time_runners`` at ``threads`` intra-op threads each."""
    import torch

    from edgekd.rundir import load_model
    from edgekd.runtimes import open_artifact

    torch.set_num_threads(threads)
    model, desc = load_model(run_dir)
    x = np.random.default_rng(0).standard_normal((1, *desc["input_size"])).astype(np.float32)
    xt = torch.from_numpy(x)

    def eager(_: np.ndarray) -> None:
        with torch.inference_mode():
            model(xt)

    runners = {"pytorch-fp32": eager}
    for key in keys:
        runners[key] = open_artifact(export_dir, manifest, key, threads=threads).run
    return time_runners(runners, x, iters, warmup)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())
