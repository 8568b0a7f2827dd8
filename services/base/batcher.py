"""Dynamic batching with two priorities, bounded queues, cancellation, deadlines and a hang watch.

Requests wait at most ``window_ms`` for company, then run together; a live chunk waits only
when company came lately (see below). The model runs in dedicated threads (one, or two
with a live lane), so the event loop stays free to accept and answer requests while it works.

Why each part exists:

- **Two classes of work.** Live chunks (``/transcribe-chunk``: someone is waiting for the next
  words) and file windows (the speech windows of ``/v1/audio/transcriptions`` and
  ``/translations``: a whole file is waiting, so seconds matter less). The batch taker always
  serves live chunks first, and a live batch never carries file windows: on a CPU a model
  call's cost grows with every chunk in it, so a file window riding along would delay the live
  chunks it shares the call with. A model call already running cannot be interrupted, so file
  batches are kept small (``file_batch_max``), and with ``live_lane`` a live call does not wait
  for a running file call at all: it starts beside it, in a second model worker (CTranslate2
  shares the weights between workers on one device). A file call still starts only when no
  live work runs or waits, so live chunks keep strict priority; the two calls share the
  cores while they overlap (what that costs and saves: docs/reliability.md, "A live lane").
- **Live chunks are refused by the wait they would have, not only by count.** A live chunk is
  refused at once (429, ``Retry-After``) when the live work already queued would make it wait
  longer than ``max_wait_s``: the queue's batches times the measured length of a recent live
  call. Sixty-four queued chunks on a CPU are a minute of waiting; a live caller is better told
  at once to retry (or go to another replica) than answered a minute late, and the proxy's own
  chunk timeout would give up first anyway. Under overload latency stays bounded and the
  excess gets fast 429s (``python -m bench.open_loop`` measures it).
- **Separate queue caps.** Past ``max_queue`` waiting live chunks, a live chunk gets 429 with
  Retry-After; past ``max_queue`` waiting file windows, a *new* file gets 429. The windows of a
  file already admitted are never refused (the caller submits only a few at a time, see
  ``services.base.app.transcribe_windows``), so a long file cannot fail half-way through, and a
  running file never makes a live chunk wait for a queue slot. Before this, a file's windows all
  went into one queue of 64: a file of more than 64 speech windows was refused on an idle
  server, and every live chunk was refused while it ran.
- **Cancellation.** When a caller stops waiting (it hung up, or its task was cancelled), its
  queued items are removed at once and never run (``stt_queue_cancelled_total``).
- **Deadlines.** An item may carry a deadline (a ``time.perf_counter()`` value); when it passes
  while the item still waits, the item is removed and its caller gets 504 ``deadline_exceeded``
  (``stt_queue_expired_total``): whoever sent it has already given up, so running it would only
  delay work someone still waits for.
- **A lone stream does not wait for company.** Live chunks arrive every step (3 s) per stream;
  unless two arrived within ``window_ms`` of each other in the last ``COMPANY_MEMORY_S``, no
  other is likely to join, and waiting only adds the window to every answer. (Chunks that
  queued behind a running call never wait: they are already older than the window.)
- **Lighter work when live chunks wait.** With ``lighten`` and ``lighten_after_s``, once the
  oldest waiting live chunk has waited that long, every waiting live chunk is replaced by
  ``lighten(request)`` before the batch is taken (the app drops a session window's beam search
  to greedy decoding). A backend that keeps up never does it, so one stream's words are the
  ones it asked for; one that has fallen behind spends less per chunk and batches more of them
  together (chunks of different beam sizes never share a call) until it catches up, instead of
  letting every stream's latency grow (docs/client.md, "Beams under load").
- **Hang watch.** A model call that never returns (a hang in C, not a crash) blocks every
  request of this process and cannot be undone from Python. :meth:`Batcher.hung` says so once a
  call (of either class) has run longer than ``hang_seconds`` plus
  ``hang_seconds_per_audio_second`` for each second of audio in it; the app registers it with
  ``Readiness.watch``, so ``/readyz`` and ``/healthz`` answer 503 and Kubernetes stops routing
  to the pod and restarts it.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import math
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from core.errors import ApiError
from core.vocabulary import SAMPLE_RATE
from services.base.metrics import (
    BATCH_CANCELLED,
    BATCH_EXPIRED,
    BATCH_REFUSED_WAIT,
    BATCH_SIZE,
    QUEUE_DEPTH,
    QUEUE_DEPTH_BY_PRIORITY,
    QUEUE_WAIT_SECONDS,
)
from services.base.transcriber import Request, Result

log = logging.getLogger(__name__)
# Weight of the newest live call in the moving average that estimates a new chunk's wait.
LIVE_CALL_SMOOTHING = 0.3
# How long two live chunks arriving within the window of each other keep live chunks waiting
# for company: several steps (3 s each) of streams whose chunks arrive together.
COMPANY_MEMORY_S = 30.0


class Priority(enum.Enum):
    """Who waits for a chunk: a live stream (served first) or a whole file."""

    LIVE = "live"
    FILE = "file"


@dataclass(eq=False)
class _Pending:
    request: Request
    future: asyncio.Future
    priority: Priority
    deadline: float | None = None  # time.perf_counter() value; None: no deadline
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class _Call:
    """A model call running now (for the hang watch and the live wait estimate)."""

    started: float
    audio_seconds: float
    chunks: int


class Batcher:
    def __init__(
        self,
        run_batch: Callable[[list[Request]], list[Result]],
        max_batch: int = 8,
        window_ms: float = 20.0,
        max_queue: int = 64,
        key: Callable[[Request], Hashable] = lambda request: request.group_key,
        *,
        file_batch_max: int | None = None,
        hang_seconds: float = 30.0,
        hang_seconds_per_audio_second: float = 2.0,
        max_wait_s: float | None = None,
        live_lane: bool = False,
        lighten: Callable[[Request], Request] | None = None,
        lighten_after_s: float | None = None,
    ):
        """``key``: what the chunks of one batch must share (``BatchTranscriber.batch_key``).
        ``max_batch``: most live chunks per call; ``file_batch_max``: most file windows per call
        (default ``max_batch``). ``max_queue``: waiting chunks per class before 429.
        ``max_wait_s``: the longest a new live chunk may expect to wait before 429 (None: no bound).
        ``live_lane``: a live call may run while a file call runs (``run_batch`` is then called
        from two threads at once, so the model must have two workers); otherwise one call at a time.
        ``lighten``: a cheaper form of a live request, used for every waiting live chunk once the
        oldest has waited ``lighten_after_s`` (None: never)."""
        self.run_batch = run_batch
        self.key = key
        self.max_batch = max_batch
        self.file_batch_max = file_batch_max or max_batch
        self.window = window_ms / 1000
        self.max_queue = max_queue
        self.hang_seconds = hang_seconds
        self.hang_seconds_per_audio_second = hang_seconds_per_audio_second
        self.max_wait_s = max_wait_s
        self.live_lane = live_lane
        self.lighten = lighten
        self.lighten_after_s = lighten_after_s
        self._live_call_s: float | None = None  # moving average of a live model call's wall time
        self._last_live_arrival = -math.inf  # time.perf_counter() of the newest live chunk
        self._live_company_at = -math.inf  # when two live chunks last arrived within the window
        self._queues: dict[Priority, list[_Pending]] = {p: [] for p in Priority}
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=2 if live_lane else 1, thread_name_prefix="whisper")
        self._task: asyncio.Task | None = None
        self._running: dict[Priority, asyncio.Task] = {}  # the batch of each class being run now
        self._calls: dict[Priority, _Call] = {}  # their model calls, written by the model threads
        self.last_batch_size = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for queue in self._queues.values():
            for item in queue:
                if not item.future.done():
                    item.future.set_exception(ApiError(503, "shutting_down", "the service is shutting down; retry"))
            queue.clear()
        self._count()
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self) -> int:
        """Chunks waiting, of both classes."""
        return sum(len(q) for q in self._queues.values())

    def depth_of(self, priority: Priority) -> int:
        return len(self._queues[priority])

    async def submit(
        self,
        request: Request,
        priority: Priority = Priority.LIVE,
        *,
        deadline: float | None = None,
        admitted: bool = False,
    ) -> tuple[Result, int]:
        """Transcribe one chunk; returns its result and the size of the batch it ran in.

        ``deadline``: a ``time.perf_counter()`` value past which the chunk is not started (504).
        ``admitted``: a further window of a file whose first window was accepted; never refused
        for a full queue (the caller bounds how many it has waiting)."""
        queue = self._queues[priority]
        if (
            priority is Priority.LIVE
            and (bound := self.max_wait_s) is not None
            and (wait := self.expected_wait_s()) is not None
            and wait > bound
        ):
            BATCH_REFUSED_WAIT.inc()
            raise ApiError(
                429,
                "overloaded",
                f"the live chunks already queued here would make this one wait about {wait:.0f} s "
                f"(bound {bound:g} s); retry shortly or add replicas",
                headers={"Retry-After": str(max(1, math.ceil(wait - bound)))},
            )
        if not admitted and len(queue) >= self.max_queue:
            what = "live chunks" if priority is Priority.LIVE else "file windows"
            raise ApiError(
                429,
                "overloaded",
                f"{len(queue)} {what} are already waiting; retry after a moment or add replicas",
                headers={"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        item = _Pending(request, loop.create_future(), priority, deadline)
        if deadline is not None and deadline <= item.enqueued:
            BATCH_EXPIRED.labels(priority.value).inc()
            raise self._expired_error(item)
        if priority is Priority.LIVE:
            if item.enqueued - self._last_live_arrival <= self.window:
                self._live_company_at = item.enqueued
            self._last_live_arrival = item.enqueued
        queue.append(item)
        self._count()
        self._wakeup.set()
        timer = loop.call_later(deadline - item.enqueued, self._expire, item) if deadline is not None else None
        try:
            return await item.future
        except asyncio.CancelledError:
            if self._remove(item):  # still queued: it will never run
                BATCH_CANCELLED.labels(priority.value).inc()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def expected_wait_s(self) -> float | None:
        """How long a live chunk submitted now would wait before its model call ends: what is
        left of the call it must wait for (the live call running now; without a live lane, any
        call), then the batches of live work ahead of it and its own, at the recent length of a
        live call. None until a live call has been measured, or when no bound is set."""
        if self.max_wait_s is None or self._live_call_s is None:
            return None
        batches = math.ceil((len(self._queues[Priority.LIVE]) + 1) / self.max_batch)
        ahead = [self._calls.get(Priority.LIVE)] if self.live_lane else list(self._calls.values())
        now = time.perf_counter()
        left = max((self._live_call_s - (now - call.started) for call in ahead if call), default=0.0)
        return max(0.0, left) + batches * self._live_call_s

    def hung(self) -> str | None:
        """Why a model call running now counts as hung, or None (a ``Readiness.watch`` check)."""
        now = time.perf_counter()
        for call in list(self._calls.values()):
            elapsed = now - call.started
            bound = self.hang_seconds + self.hang_seconds_per_audio_second * call.audio_seconds
            if elapsed > bound:
                return (
                    f"a model call on {call.audio_seconds:.1f} s of audio ({call.chunks} chunks) has run "
                    f"{elapsed:.0f} s (bound {bound:.0f} s); the process will be restarted"
                )
        return None

    # --- internals ---------------------------------------------------------------------------

    def _count(self) -> None:
        for priority, queue in self._queues.items():
            QUEUE_DEPTH_BY_PRIORITY.labels(priority.value).set(len(queue))
        QUEUE_DEPTH.set(self.depth)

    def _remove(self, item: _Pending) -> bool:
        queue = self._queues[item.priority]
        for i, other in enumerate(queue):
            if other is item:
                del queue[i]
                self._count()
                return True
        return False

    @staticmethod
    def _expired_error(item: _Pending) -> ApiError:
        waited = time.perf_counter() - item.enqueued
        return ApiError(
            504,
            "deadline_exceeded",
            f"the chunk waited {waited:.1f} s and its deadline passed before the model could start it; "
            "it was not transcribed",
        )

    def _expire(self, item: _Pending) -> None:
        """The deadline of ``item`` passed: drop it if it has not started."""
        if self._remove(item):
            BATCH_EXPIRED.labels(item.priority.value).inc()
            if not item.future.done():
                item.future.set_exception(self._expired_error(item))

    def _drop_dead(self) -> None:
        """Remove cancelled items and items whose deadline has passed (their timers may not
        have fired yet when the loop wakes up)."""
        now = time.perf_counter()
        for queue in self._queues.values():
            for item in list(queue):
                if item.future.cancelled():
                    self._remove(item)
                    BATCH_CANCELLED.labels(item.priority.value).inc()
                elif item.deadline is not None and item.deadline <= now:
                    self._expire(item)

    def _next(self) -> Priority | None:
        """The class whose batch may start now, or None: live first, always. A live batch starts
        when no live call runs and, without a live lane, no file call either; a file batch only
        when nothing runs and no live chunk waits (strict priority: files get the gaps)."""
        if self._queues[Priority.LIVE]:
            if Priority.LIVE in self._running or (not self.live_lane and self._running):
                return None
            return Priority.LIVE
        if self._queues[Priority.FILE] and not self._running:
            return Priority.FILE
        return None

    def _company_likely(self, priority: Priority) -> bool:
        """Whether a batch of this class is worth holding back for more: always for file
        windows (a file sends several), for live chunks only when they came together lately."""
        return priority is Priority.FILE or time.perf_counter() - self._live_company_at <= COMPANY_MEMORY_S

    def _limit(self, priority: Priority) -> int:
        return self.max_batch if priority is Priority.LIVE else self.file_batch_max

    def _take_batch(self, priority: Priority) -> list[_Pending]:
        self._drop_dead()
        queue, limit = self._queues[priority], self._limit(priority)
        if not queue:
            return []
        if priority is Priority.LIVE:
            self._lighten_if_behind(queue)
        key = self.key(queue[0].request)
        batch = [p for p in queue if self.key(p.request) == key][:limit]
        taken = set(map(id, batch))
        queue[:] = [p for p in queue if id(p) not in taken]
        self._count()
        return batch

    def _lighten_if_behind(self, queue: list[_Pending]) -> None:
        """Replace every waiting live request by its lighter form once the oldest has waited
        ``lighten_after_s``; the replaced ones then share a batch key and run together."""
        if self.lighten is None or self.lighten_after_s is None:
            return
        if time.perf_counter() - queue[0].enqueued < self.lighten_after_s:
            return
        for item in queue:
            item.request = self.lighten(item.request)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self._next() is None:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Give concurrent senders a brief moment to join, unless the batch is already full
            # or (live) no company came lately.
            # Re-checked on every wake-up: a live chunk arriving meanwhile is served first.
            while (priority := self._next()) is not None:
                queue = self._queues[priority]
                if len(queue) >= self._limit(priority) or not self._company_likely(priority):
                    break
                delay = queue[0].enqueued + self.window - time.perf_counter()
                if delay <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), delay)
                except TimeoutError:
                    break
            if priority is None:
                continue
            batch = self._take_batch(priority)
            if not batch:
                continue
            now = time.perf_counter()
            for item in batch:
                QUEUE_WAIT_SECONDS.observe(now - item.enqueued)
            BATCH_SIZE.observe(len(batch))
            self.last_batch_size = len(batch)
            task = asyncio.create_task(self._run(loop, batch), name=f"batch-{priority.value}")
            self._running[priority] = task
            task.add_done_callback(functools.partial(self._finished, priority))

    def _finished(self, priority: Priority, _task: asyncio.Task) -> None:
        self._running.pop(priority, None)
        self._wakeup.set()

    def _call_model(self, priority: Priority, requests: list[Request]) -> list[Result]:
        """Run in a model thread; records the call for :meth:`hung`. A call that never
        returns leaves its record in place, which is the point."""
        audio = sum(r.samples.size for r in requests) / SAMPLE_RATE
        self._calls[priority] = _Call(time.perf_counter(), audio, len(requests))
        try:
            return self.run_batch(requests)
        finally:
            self._calls.pop(priority, None)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(
                self._executor, self._call_model, batch[0].priority, [p.request for p in batch]
            )
        except Exception as exc:  # one bad batch must not kill the loop
            log.exception("batch of %d failed", len(batch))
            if len(batch) > 1:
                # One bad chunk must not fail its neighbours: run each alone, so only it errs.
                for item in batch:
                    if not item.future.done():
                        await self._run(loop, [item])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        if batch[0].priority is Priority.LIVE:
            elapsed = time.perf_counter() - started
            last = self._live_call_s
            smoothed = elapsed if last is None else last + LIVE_CALL_SMOOTHING * (elapsed - last)
            self._live_call_s = smoothed
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result((result, len(batch)))
