"""The served model: what ``create_app`` was given, and what loading the export dir makes of it.

``load`` reads the manifest, opens the artifact (sha256-checked), warms it up and checks its output, so every way
an export can be unservable ends as one ``EdgeKDError`` before the server takes traffic. ``start`` and ``stop`` run
in the app's lifespan; the routes reach the model through ``require`` and ``infer``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException
from PIL import Image

from edgekd.contracts.manifest import load_manifest
from edgekd.runtimes import Runtime, open_artifact, run_checked, runtime_of, select_artifact
from edgekd.serve.batching import MicroBatcher, QueueFull
from edgekd.serve.metrics import Metrics
from edgekd.serve.preprocess import Preprocessor

log = logging.getLogger("edgekd.serve")

# Large KServe v2 JSON bodies read and parsed at once: each holds up to --max-upload-mb, and its parse as much again
JSON_SLOTS = 4


class ServeState:
    """Options given to ``create_app``, the loaded model, and the batcher and decode threads that serve it."""

    def __init__(
        self, export_dir: Path, runtime: str | None, precision: str | None, threads: int | None, max_pixels: int,
        *, max_batch: int, batch_timeout_ms: float, queue_size: int, decode_threads: int | None,
    ) -> None:
        self.export_dir = export_dir
        self.runtime_name = runtime
        self.precision = precision
        self.threads = threads
        self.max_pixels = max_pixels
        self.warmup_batch = max_batch
        self.decode_threads = decode_threads
        self.ready = False
        self.error: str | None = None  # why loading failed, for run_server's one-line message
        self.manifest: dict[str, Any] = {}
        self.artifact = ""
        self.runtime: Runtime | None = None
        self.preprocess: Preprocessor | None = None
        self.load_seconds = 0.0
        self.metrics = Metrics()
        self.batcher = MicroBatcher(
            lambda batch: self.runtime.run(batch), max_batch=max_batch, batch_timeout_ms=batch_timeout_ms,
            queue_size=queue_size, metrics=self.metrics,
        )
        self.decode_pool: ThreadPoolExecutor | None = None
        self.json_slots = asyncio.Semaphore(JSON_SLOTS)

    @property
    def loaded(self) -> bool:
        return self.runtime is not None

    def load(self) -> None:
        """Manifest -> artifact (sha256-checked) -> runtime, then warm both the model and the image decoders."""
        start = time.perf_counter()
        self.manifest = load_manifest(self.export_dir)
        self.artifact = select_artifact(self.manifest, self.runtime_name, self.precision)
        # spin off (ORT): between batches the cores are the event loop's
        runtime = open_artifact(self.export_dir, self.manifest, self.artifact, runtime=self.runtime_name, verify=True,
                                threads=self.threads, spin=False)
        self.preprocess = Preprocessor.from_manifest(self.manifest, self.max_pixels)
        sample = io.BytesIO()
        Image.new("RGB", (8, 8), (128, 64, 32)).save(sample, "PNG")
        x = self.preprocess(sample.getvalue())[None]
        for n in sorted({1, self.warmup_batch}):
            for _ in range(2):
                run_checked(runtime, self.artifact, np.repeat(x, n, axis=0), self.num_classes)
        self.runtime = runtime
        self.load_seconds = time.perf_counter() - start

    def start(self) -> None:
        """Start serving a loaded model: decode threads, the batcher, readiness."""
        # decoding (images, large JSON bodies) runs beside the event loop; a few threads bound the memory in flight
        self.decode_pool = ThreadPoolExecutor(
            max_workers=self.decode_threads or min(4, os.cpu_count() or 1), thread_name_prefix="edgekd-decode"
        )
        self.json_slots = asyncio.Semaphore(JSON_SLOTS)  # anew: a semaphore belongs to the loop that first waits on it
        self.batcher.start()
        self.ready = True
        self.metrics.ready.set(1)
        entry = self.manifest["artifacts"][self.artifact]
        age = process_age()
        log.info(
            "ready: %s, artifact %s (%s, %s) verified, loaded and warmed up in %.2f s%s",
            self.model_name,
            self.artifact,
            self.runtime_used,
            entry["precision"],
            self.load_seconds,
            f"; cold start {age:.2f} s after process start" if age is not None else "",
        )

    async def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        await self.batcher.stop()
        if self.decode_pool is not None:
            self.decode_pool.shutdown(wait=False, cancel_futures=True)

    def require(self, name: str | None = None) -> ServeState:
        """This state, once it serves; 503 while loading, 404 for another model's name."""
        if not self.ready:
            raise HTTPException(503, "the model is still loading", headers={"Retry-After": "1"})
        if name is not None and name != self.model_name:
            raise HTTPException(404, f"unknown model {name!r}; this server serves {self.model_name!r}")
        return self

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits of a (n, C, H, W) batch through the batcher; 503 when its queue is full."""
        try:
            return await self.batcher.submit(batch)
        except QueueFull as e:
            raise HTTPException(503, f"server busy: {e}; retry shortly", headers={"Retry-After": "1"}) from None

    @property
    def runtime_used(self) -> str:
        """The runtime that runs the artifact: the one asked for, else its format's own."""
        return self.runtime_name or runtime_of(self.manifest["artifacts"][self.artifact]["format"])

    @property
    def model_name(self) -> str:
        return str(self.manifest.get("model") or self.export_dir.name)

    @property
    def num_classes(self) -> int:
        return int(self.manifest.get("num_classes") or len(self.manifest["class_names"]))

    @property
    def input_name(self) -> str:
        return str(self.manifest["input"].get("name", "input"))

    @property
    def sample_shape(self) -> list[int]:
        """(C, H, W) of one input sample."""
        assert self.preprocess is not None
        return [3, *self.preprocess.size]

    def label(self, index: int) -> str:
        names = self.manifest["class_names"]
        return str(names[index]) if index < len(names) else str(index)


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), for the cold-start log line; None elsewhere."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
