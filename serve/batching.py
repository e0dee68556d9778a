"""Dynamic micro-batching: concurrent requests share one runtime call.

Requests wait in a bounded queue. One dedicated inference thread takes the first waiting request, gathers
more until ``max_batch`` samples or ``batch_timeout_ms`` after the first, stacks them and runs the model
(one thread because an OpenVINO infer request is not thread-safe and ORT already uses every core inside
one call). Results go back to the event loop in one callback per batch.

The thread, not a coroutine, decides when the next batch starts: the moment a call returns it takes what
queued up meanwhile, instead of waiting for the busy event loop to get round to it, which left a core idle
between batches under load.

Requests that arrive while a call runs form the next batch, so load makes batches by itself. The default
``batch_timeout_ms`` is therefore 0: on a CPU, where ONNX Runtime costs about the same per image at any
batch size, holding the cores idle for company loses throughput (docs/decisions.md). With a timeout
(for accelerators whose cost grows slower than the batch) the thread only waits while more requests are
known to be on their way (admitted by the app and still decoding): a lone request still runs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
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
        batch_timeout_ms: float = 0.0,
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
        self._queue: deque[_Item] = deque()
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._incoming = 0  # written on the event loop, read by the thread: a stale value costs one timeout at most

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def start(self) -> None:
        """Start the inference thread; results are delivered on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="edgekd-infer", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop taking work: the batch in flight finishes, requests still queued are failed rather than left hanging."""
        with self._wakeup:
            self._stopping = True
            leftovers = list(self._queue)
            self._queue.clear()
            self._wakeup.notify()
        if self._thread is not None:
            # the last batch's results were posted to the loop before the thread ended, so they land before this returns
            await asyncio.to_thread(self._thread.join)
        for item in leftovers:
            if not item.future.done():
                item.future.set_exception(QueueFull("the server is shutting down"))

    @contextlib.contextmanager
    def incoming(self):
        """Mark a request as on its way (being decoded) so the thread waits for it to join a batch."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1

    async def submit(self, batch: np.ndarray) -> np.ndarray:
        """Queue ``batch`` (n, C, H, W) and wait for its logits; raises ``QueueFull`` when at capacity."""
        if not self.running:
            raise QueueFull("the model is not loaded")
        future = asyncio.get_running_loop().create_future()
        with self._wakeup:
            if len(self._queue) >= self.queue_size:
                raise QueueFull(f"{self.queue_size} requests are already waiting")
            self._queue.append(_Item(batch, future))
            depth = len(self._queue)
            self._wakeup.notify()
        if self.metrics:
            self.metrics.queue_depth.set(depth)
        return await future

    def _gather(self) -> list[_Item] | None:
        """The next batch: the first waiting request plus whatever joins it in time; None once stopping."""
        q = self._queue
        with self._wakeup:
            while not q and not self._stopping:
                self._wakeup.wait()
            if self._stopping:
                return None
            items = [q.popleft()]
            samples = len(items[0].batch)
            deadline = time.perf_counter() + self.timeout
            while samples < self.max_batch:
                if not q:
                    remaining = deadline - time.perf_counter()
                    if self._incoming == 0 or remaining <= 0 or self._stopping:
                        break
                    self._wakeup.wait(remaining)
                    continue
                if samples + len(q[0].batch) > self.max_batch:
                    break  # too big to share this call: it runs next, first in line
                items.append(q.popleft())
                samples += len(items[-1].batch)
        return items

    def _work(self) -> None:
        assert self._loop is not None
        while (items := self._gather()) is not None:
            # a client that went away while queued is dropped here (a racy read: at worst one wasted row)
            live = [it for it in items if not it.future.done()]
            if not live:
                continue
            started = time.perf_counter()
            stacked = live[0].batch if len(live) == 1 else np.concatenate([it.batch for it in live])
            calls: list[tuple[int, float]] = []  # (samples, seconds) of each model call
            try:
                result: np.ndarray | Exception = self._run_capped(stacked, calls)
            except Exception as e:  # a runtime failure fails these requests, not the thread
                result = e
            try:
                self._loop.call_soon_threadsafe(self._deliver, live, result, started, calls)
            except RuntimeError:  # the event loop is closed (the app went away without stop): nobody is waiting
                return

    def _run_capped(self, stacked: np.ndarray, calls: list[tuple[int, float]]) -> np.ndarray:
        """Run ``stacked`` in calls of at most ``max_batch`` samples (one request bigger than that runs alone,
        sliced)."""
        outputs = []
        for first in range(0, len(stacked), self.max_batch):
            part = stacked[first : first + self.max_batch]
            t0 = time.perf_counter()
            outputs.append(self._run(part))
            calls.append((len(part), time.perf_counter() - t0))
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def _deliver(self, items: list[_Item], result: np.ndarray | Exception, started: float,
                 calls: list[tuple[int, float]]) -> None:
        """On the event loop: hand each request its rows (or the runtime's error), then record the calls."""
        start = 0
        for it in items:
            n = len(it.batch)
            if not it.future.done():
                if isinstance(result, Exception):
                    it.future.set_exception(result)
                else:
                    it.future.set_result(result[start : start + n])
            start += n
        if self.metrics and not isinstance(result, Exception):
            for samples, seconds in calls:
                self.metrics.inference_latency.observe(seconds)
                self.metrics.batch_size.observe(samples)
            self.metrics.queue_depth.set(len(self._queue))
            for it in items:
                self.metrics.queue_wait.observe(started - it.enqueued)
