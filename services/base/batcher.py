"""Dynamic batching: collect chunks that arrive close together into one model call.

Requests wait at most ``window_ms`` for company (only when the model is busy or others are
queued does a batch grow), then run together, up to ``max_batch``. Queue depth is bounded:
past ``max_queue`` waiting chunks the service answers 429 with Retry-After instead of
letting latency grow without bound. The model runs in one dedicated thread, so the event
loop stays free to accept and answer requests while it works.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from services.base.metrics import BATCH_SIZE, QUEUE_DEPTH, QUEUE_WAIT_SECONDS
from services.base.transcriber import Request, Result
from services.common.errors import ApiError

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    request: Request
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(
        self,
        run_batch: Callable[[list[Request]], list[Result]],
        max_batch: int = 8,
        window_ms: float = 20.0,
        max_queue: int = 64,
        key: Callable[[Request], Hashable] = lambda request: request.group_key,
    ):
        """``key``: what the chunks of one batch must share (``BatchTranscriber.batch_key``)."""
        self.run_batch = run_batch
        self.key = key
        self.max_batch = max_batch
        self.window = window_ms / 1000
        self.max_queue = max_queue
        self._pending: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper")
        self._task: asyncio.Task | None = None
        self.last_batch_size = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(ApiError(503, "shutting_down", "the service is shutting down; retry"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self) -> int:
        return len(self._pending)

    async def submit(self, request: Request) -> tuple[Result, int]:
        """Transcribe one chunk; returns its result and the size of the batch it ran in."""
        if len(self._pending) >= self.max_queue:
            raise ApiError(
                429,
                "overloaded",
                f"{len(self._pending)} chunks are already waiting; retry after a moment or add replicas",
                headers={"Retry-After": "1"},
            )
        item = _Pending(request, asyncio.get_running_loop().create_future())
        self._pending.append(item)
        QUEUE_DEPTH.set(len(self._pending))
        self._wakeup.set()
        return await item.future

    def _take_batch(self) -> list[_Pending]:
        key = self.key(self._pending[0].request)
        batch = [p for p in self._pending if self.key(p.request) == key][: self.max_batch]
        taken = set(map(id, batch))
        self._pending = [p for p in self._pending if id(p) not in taken]
        QUEUE_DEPTH.set(len(self._pending))
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Give concurrent senders a brief moment to join, unless the batch is already full.
            deadline = self._pending[0].enqueued + self.window
            while len(self._pending) < self.max_batch and (delay := deadline - time.perf_counter()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), delay)
                except TimeoutError:
                    break
            batch = [p for p in self._take_batch() if not p.future.cancelled()]
            if not batch:
                continue
            now = time.perf_counter()
            for item in batch:
                QUEUE_WAIT_SECONDS.observe(now - item.enqueued)
            BATCH_SIZE.observe(len(batch))
            self.last_batch_size = len(batch)
            await self._run(loop, batch)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, [p.request for p in batch])
        except Exception as exc:  # one bad batch must not kill the loop
            log.exception("batch of %d failed", len(batch))
            if len(batch) > 1:
                # One bad chunk must not fail its neighbours: run each alone, so only it errs.
                for item in batch:
                    await self._run(loop, [item])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result((result, len(batch)))
