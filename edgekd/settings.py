"""The defaults of every stage after training, one frozen dataclass per stage (training's are
``edgekd.config.TrainConfig``). ``edgekd prune``/``export``/``bench``/``serve``/``val``/``predict``, the Python API
and the library functions behind both take their defaults from here, and ``tests/test_defaults.py`` walks every
command to check that none differs. Imports nothing, so the torch-free device side and ``--help`` read it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PruneSettings:
    """`edgekd prune`, ``Run.prune``, ``edgekd.recover.prune``."""

    ratio: float = 0.3  # the cut when neither a ratio nor a MACs target is given
    target_macs: float | None = None
    prune_method: str = "structured"
    # ORT's x86 kernels work on 8 FP32 channels at a time; on an AVX-512 VNNI Xeon its INT8 convolution with 8
    # output channels ran slower than with 16 (benchmarks/results/prune.md)
    channel_multiple: int = 16
    recover_epochs: int = 0
    recover_method: str = "kd"
    lr: float = 0.01  # recovery fine-tunes trained weights: a fifth of a fresh run's peak


@dataclass(frozen=True)
class ExportSettings:
    """`edgekd export`, ``Run.export``, ``edgekd.export.export_run``."""

    int8: bool = False
    calib_samples: int = 300
    calib_method: str = "minmax"
    max_drop: float | None = 0.5  # top-1 points an INT8 artifact may lose on the held-out split
    fp16: bool = False
    qat_epochs: int = 0


@dataclass(frozen=True)
class BenchSettings:
    """`edgekd bench`, ``Export.bench``, ``edgekd.export.bench.run_bench``."""

    precisions: tuple[str, ...] = ("fp32", "int8")
    batches: tuple[int, ...] = (1,)
    warmup: int = 20
    iters: int | None = None
    seconds: float = 2.0
    ov_hint: str = "LATENCY"
    ov_streams: int | None = None


@dataclass(frozen=True)
class ServeSettings:
    """`edgekd serve`, ``Export.serve``, ``edgekd.serve.server.run_server`` and ``create_app``."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 8
    batch_timeout_ms: float = 0.0
    max_upload_mb: float = 10.0
    max_pixels: int = 25_000_000  # the decompression-bomb guard
    queue_size: int = 256
    header_timeout: float = 10.0
    body_timeout: float = 60.0  # a 10 MB upload at 2 Mbit/s takes 40 s
    max_header_kb: int = 64
    log_level: str = "info"
    access_log: bool = False


@dataclass(frozen=True)
class OfflineSettings:
    """`edgekd val` and `predict`, ``Export.val`` and ``Export.predict``."""

    batch: int = 64  # images per model call, as the exporter scores its artifacts


PRUNE, EXPORT, BENCH, SERVE, OFFLINE = PruneSettings(), ExportSettings(), BenchSettings(), ServeSettings(), \
    OfflineSettings()
