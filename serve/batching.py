"""Dynamic micro-batching: concurrent requests share one runtime call.

Requests wait in a bounded asyncio queue. One worker task takes the first waiting request, then gathers
more until ``max_batch`` samples or ``batch_timeout_ms`` after the first, stacks them, and runs the model in
a single dedicated thread (off the event loop; one thread because an OpenVINO infer request is not
thread-safe and ORT already uses every core inside one call). Each request's future gets its rows back.

The worker only waits for company while more requests are known to be on their way (admitted by the
app and still decoding): at low load a lone request runs at once instead of paying the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from edgekd.serve.metrics import Metrics


class QueueFull(Exception):
    """The request queue is at capacity; the client should retry later (HTTP 503)."""


@dataclass
class _Item:
    batch: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Collects (n, C, H, W) inputs from many coroutines into runtime calls of at most ``max_batch`` samples."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int = 8,
        batch_timeout_ms: float = 2.0,
        queue_size: int = 256,
        metrics: Metrics | None = None,
    ) -> None:
        if max_batch < 1 or queue_size < 1 or batch_timeout_ms < 0:
            raise ValueError("max_batch and queue_size must be >= 1 and batch_timeout_ms >= 0")
        self._run = run
        self.max_batch = max_batch
        self.timeout = batch_timeout_ms / 1000.0
        self.queue_size = queue_size
        self.metrics = metrics
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._incoming = 0
        self._pending: _Item | None = None  # taken from the queue but too big to join the last batch
        self._inflight: list[_Item] = []

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgekd-infer")
        self._worker = asyncio.get_running_loop().create_task(self._loop(), name="edgekd-batcher")

    async def stop(self) -> None:
        """Stop taking work; requests still queued are failed rather than left hanging."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        leftovers = self._inflight + ([self._pending] if self._pending else [])
        while self._queue is not None and not self._queue.empty():
            leftovers.append(self._queue.get_nowait())
        for item in leftovers:
            if not item.future.done():
                item.future.set_exception(QueueFull("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @contextlib.contextmanager
    def incoming(self):
        """Mark a request as on its way (being decoded) so the worker waits for it to join a batch."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1

    async def submit(self, batch: np.ndarray) -> np.ndarray:
        """Queue ``batch`` (n, C, H, W) and wait for its logits; raises ``QueueFull`` when at capacity."""
        if not self.running or self._queue is None:
            raise QueueFull("the model is not loaded")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Item(batch, future))
        except asyncio.QueueFull:
            raise QueueFull(f"{self.queue_size} requests are already waiting") from None
        if self.metrics:
            self.metrics.queue_depth.set(self._queue.qsize())
        return await future

    async def _gather(self, first: _Item) -> list[_Item]:
        """``first`` plus whatever joins it in time; held in ``_inflight`` so ``stop`` can fail them."""
        items = self._inflight = [first]
        samples = len(first.batch)
        deadline = time.perf_counter() + self.timeout
        assert self._queue is not None
        while samples < self.max_batch:
            if self._queue.empty():
                remaining = deadline - time.perf_counter()
                if self._incoming == 0 or remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                item = self._queue.get_nowait()
            if item.future.done():  # the client went away while waiting
                continue
            if samples + len(item.batch) > self.max_batch:
                # too big to share this call: run it next, first in line
                self._pending = item
                break
            items.append(item)
            samples += len(item.batch)
        return items

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = self._pending or await self._queue.get()
            self._pending = None
            if first.future.done():
                continue
            items = await self._gather(first)
            now = time.perf_counter()
            stacked = items[0].batch if len(items) == 1 else np.concatenate([it.batch for it in items])
            try:
                t0 = time.perf_counter()
                logits = await loop.run_in_executor(self._executor, self._run, stacked)
                elapsed = time.perf_counter() - t0
            except Exception as e:  # a runtime failure fails these requests, not the worker
                for it in items:
                    if not it.future.done():
                        it.future.set_exception(e)
                self._inflight = []
                continue
            if self.metrics:
                self.metrics.inference_latency.observe(elapsed)
                self.metrics.batch_size.observe(len(stacked))
                self.metrics.queue_depth.set(self._queue.qsize())
                for it in items:
                    self.metrics.queue_wait.observe(now - it.enqueued)
            start = 0
            for it in items:
                n = len(it.batch)
                if not it.future.done():
                    it.future.set_result(logits[start : start + n])
                start += n
            self._inflight = []
