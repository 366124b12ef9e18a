"""Dynamic micro-batching: many small concurrent requests become few large model calls.

One :class:`DynamicBatcher` per endpoint. Requests enqueue their items; a background task
packs whole requests (FIFO) into batches of at most ``max_batch_size`` items, waiting at
most ``max_wait_s`` after the oldest queued item, and runs the synchronous batch function
in a worker thread so the event loop stays responsive. A request larger than a batch is
split across consecutive batches; otherwise a request's items always stay together.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from e2ekit.core.errors import ServiceUnavailable

log = logging.getLogger("e2ekit.serve")

BatchFn = Callable[[list[Any]], Sequence[Any]]
#: Called after every model call with (batch size, seconds, succeeded).
BatchHook = Callable[[int, float, bool], None]


class BatcherError(Exception):
    """Base of the errors a request can get from the batcher."""


class QueueFullError(BatcherError):
    """Accepting the request would exceed ``max_queue`` pending items."""


class BatcherClosedError(BatcherError):
    """The batcher is shutting down (or not started) and takes no new work."""


class BatchFailedError(BatcherError):
    """The model call for a batch holding this request raised; ``__cause__`` is the error."""


def _batch_failed(cause: Exception) -> BatchFailedError:
    error = BatchFailedError(f"model batch failed ({type(cause).__name__})")
    error.__cause__ = cause
    return error


@dataclass(eq=False)
class _Job:
    items: list[Any]
    future: asyncio.Future[list[Any]]
    enqueued_at: float
    results: list[Any] = field(init=False)
    dispatched: int = 0  # items handed to a batch so far
    resolved: int = 0  # items whose results came back

    def __post_init__(self) -> None:
        self.results = [None] * len(self.items)

    @property
    def undispatched(self) -> int:
        return len(self.items) - self.dispatched


# (job, start, end): the slice of a job's items that went into one batch.
_Chunk = tuple[_Job, int, int]


class DynamicBatcher:
    """Queue + background task that batches items for one synchronous batch function.

    ``executor`` is where the batch function runs; pass one single-thread executor shared
    by all batchers of an app so that the model is never called concurrently. Without it
    the batcher owns a private single-thread executor.
    """

    def __init__(
        self,
        run_batch: BatchFn,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        executor: Executor | None = None,
        name: str = "batcher",
        on_batch: BatchHook | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("need max_batch_size >= 1, max_queue >= 1, max_wait_s >= 0")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.name = name
        self._on_batch = on_batch
        self._executor = executor
        self._owns_executor = executor is None
        self._queue: deque[_Job] = deque()
        self._pending = 0
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- state ------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Items queued and not yet handed to the model (the queue depth)."""
        return self._pending

    @property
    def accepting(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Start the background task on the running event loop."""
        if self._task is not None:
            raise RuntimeError(f"batcher {self.name!r} already started")
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"e2ekit-{self.name}")
        self._task = self._loop.create_task(self._run(), name=f"e2ekit-batcher-{self.name}")
        self._task.add_done_callback(self._task_done)

    async def close(self, timeout: float | None = None) -> None:
        """Stop taking work, finish what is queued (up to ``timeout`` s), then stop."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        task = self._task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except asyncio.TimeoutError:
                log.error("batcher %s: drain timed out after %ss, cancelling", self.name, timeout)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # Whatever is still queued (drain timed out or never started) fails cleanly.
        self._fail_queued("server is shutting down")
        if self._owns_executor and self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # -- producer side --------------------------------------------------------------------
    def enqueue(self, items: Sequence[Any]) -> asyncio.Future[list[Any]]:
        """Queue ``items``; the future resolves to their results in order.

        Raises :class:`QueueFullError` or :class:`BatcherClosedError` at once instead of
        queueing, so the caller can answer 503 without waiting. Cancelling the future
        (e.g. on a timeout) drops the request's items that have not run yet.
        """
        if not self.accepting:
            if self._closing:
                raise BatcherClosedError("server is shutting down")
            if self._task is None:
                raise BatcherClosedError(f"batcher {self.name!r} is not started")
            raise BatcherClosedError(f"batcher {self.name!r} stopped after an internal error")
        assert self._loop is not None and self._wakeup is not None
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        items = list(items)
        if not items:
            future.set_result([])
            return future
        if self._pending + len(items) > self.max_queue:
            raise QueueFullError(
                f"queue is full ({self._pending} of {self.max_queue} items pending, "
                f"request has {len(items)}); retry later"
            )
        job = _Job(items, future, self._loop.time())
        future.add_done_callback(lambda _f, job=job: self._forget(job))
        self._queue.append(job)
        self._pending += len(items)
        self._wakeup.set()
        return future

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """Queue ``items`` and wait for their results."""
        return await self.enqueue(items)

    def _forget(self, job: _Job) -> None:
        # The request is answered (or cancelled/failed): its undispatched items leave the
        # queue count now so they stop holding capacity; _take_batch skips the job.
        # Idempotent: the consumer also calls it for a done job whose callback is pending.
        self._pending -= job.undispatched
        job.dispatched = len(job.items)

    def _finished(self, job: _Job) -> bool:
        """No items of ``job`` left to dispatch. A job answered or cancelled (a request
        timeout) is finished at once, not only when its done callback runs: that callback
        is scheduled for a later loop turn, and the consumer must never find a queue of
        jobs it can neither take nor drop (it would loop without yielding)."""
        if job.future.done():
            self._forget(job)
        return job.undispatched == 0

    # -- consumer side ----------------------------------------------------------------------
    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        log.error("batcher %s stopped unexpectedly", self.name, exc_info=task.exception())
        self._fail_queued("batcher stopped after an internal error")

    def _fail_queued(self, message: str) -> None:
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(BatcherClosedError(message))

    def _drop_finished_head(self) -> None:
        while self._queue and self._finished(self._queue[0]):
            self._queue.popleft()

    async def _run(self) -> None:
        assert self._wakeup is not None and self._loop is not None
        wakeup, loop = self._wakeup, self._loop
        while True:
            self._drop_finished_head()
            if not self._queue:
                if self._closing:
                    return
                wakeup.clear()
                await wakeup.wait()
                continue
            # Wait for a full batch or the oldest item's deadline; draining skips the wait.
            deadline = self._queue[0].enqueued_at + self.max_wait_s
            while not self._closing:
                wakeup.clear()
                remaining = deadline - loop.time()
                if self._pending >= self.max_batch_size or remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            chunks = self._take_batch()
            if chunks:
                await self._execute(chunks)

    def _take_batch(self) -> list[_Chunk]:
        """Pack queued requests in FIFO order; split only a request bigger than a batch."""
        chunks: list[_Chunk] = []
        size = 0
        for job in self._queue:
            if self._finished(job):
                continue  # answered or cancelled: its count is released
            left = job.undispatched
            room = self.max_batch_size - size
            if left <= room:
                take = left
            elif size == 0:
                take = room
            else:
                break  # keep the request whole and the order fair: it opens the next batch
            chunks.append((job, job.dispatched, job.dispatched + take))
            job.dispatched += take
            self._pending -= take
            size += take
            if size >= self.max_batch_size:
                break
        self._drop_finished_head()
        return chunks

    async def _execute(self, chunks: list[_Chunk]) -> None:
        assert self._loop is not None
        items = [item for job, start, end in chunks for item in job.items[start:end]]
        started = time.perf_counter()
        ok = False
        try:
            outputs = await self._loop.run_in_executor(self._executor, self._call, items)
            ok = True
        except asyncio.CancelledError:
            self._fail(chunks, lambda: BatcherClosedError("server is shutting down"))
            raise
        except Exception as exc:
            if isinstance(exc, ServiceUnavailable):  # expected while a store is down: one line
                log.error("batcher %s: batch of %d items failed: %s", self.name, len(items), exc)
            else:
                log.exception("batcher %s: batch of %d items failed", self.name, len(items))
            self._fail(chunks, functools.partial(_batch_failed, exc))
        finally:
            self._report(len(items), time.perf_counter() - started, ok)
        if not ok:
            return
        offset = 0
        for job, start, end in chunks:
            n = end - start
            job.results[start:end] = outputs[offset : offset + n]
            offset += n
            job.resolved += n
            if job.resolved == len(job.items) and not job.future.done():
                job.future.set_result(job.results)

    def _call(self, items: list[Any]) -> list[Any]:
        outputs = list(self._run_batch(items))
        if len(outputs) != len(items):
            raise ValueError(f"run_batch returned {len(outputs)} results for {len(items)} items")
        return outputs

    @staticmethod
    def _fail(chunks: list[_Chunk], make_error: Callable[[], BatcherError]) -> None:
        # One exception object per request: they are raised in different coroutines.
        for job, _start, _end in chunks:
            if not job.future.done():
                job.future.set_exception(make_error())

    def _report(self, size: int, seconds: float, ok: bool) -> None:
        if self._on_batch is None:
            return
        try:
            self._on_batch(size, seconds, ok)
        except Exception:  # metrics must never take the batcher down
            log.exception("batcher %s: on_batch hook failed", self.name)
