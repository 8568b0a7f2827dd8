"""Dispatching: order kept, bounded concurrency, retries with backoff, held and spilled chunks, no loss."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from client.api import ChunkResult, PermanentError, RetryableError, Word
from client.chunker import Chunk
from client.dispatcher import Backoff, Dispatcher
from client.stats import Stats

FAST = Backoff(first_s=0.001, max_s=0.01)


def chunk(i: int) -> Chunk:
    return Chunk(i, i * 2.0, np.full(48000, i / 1000, np.float32))


class FakeService:
    """Answers with the chunk's own id as text; can be told to fail, be slow or hear no speech."""

    def __init__(
        self,
        fail_first: int = 0,
        error: Exception | None = None,
        detector_down: bool = False,
        silent: set[int] = frozenset(),
        delay: float = 0.0,
    ) -> None:
        self.fail_first = fail_first
        self.error = error or RetryableError("ConnectError: connection refused")
        self.detector_down = detector_down
        self.silent = silent
        self.delay = delay
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.prompts: list[str | None] = []

    async def detect(self, samples: np.ndarray) -> bool:
        if self.detector_down:
            raise RetryableError("ConnectError: detector down")
        return round(float(samples[0]) * 1000) not in self.silent

    async def transcribe(self, samples, offset, language=None, prompt=None) -> ChunkResult:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay * random.random())
            if self.fail_first > 0:
                self.fail_first -= 1
                raise self.error
            self.prompts.append(prompt)
            i = round(float(samples[0]) * 1000)
            return ChunkResult([Word(offset + 0.5, offset + 0.9, f" c{i}")], f"c{i}")
        finally:
            self.in_flight -= 1


async def run_all(dispatcher: Dispatcher, n: int) -> list:
    async def produce() -> None:
        for i in range(n):
            await dispatcher.submit(chunk(i))
        await dispatcher.close()

    producer = asyncio.create_task(produce())
    outcomes = [o async for o in dispatcher.results()]
    await producer
    return outcomes


async def test_results_come_back_in_order_with_bounded_concurrency() -> None:
    random.seed(3)
    service = FakeService(delay=0.02)
    stats = Stats()
    outcomes = await run_all(Dispatcher(service, stats, concurrency=3, backoff=FAST), 30)
    assert [o.chunk.index for o in outcomes] == list(range(30))
    assert [o.result.text for o in outcomes] == [f"c{i}" for i in range(30)]
    assert service.max_in_flight == 3
    assert stats.chunks_sent == 30 and stats.chunks_dropped == 0


@pytest.mark.parametrize(
    "error", [RetryableError("ConnectError"), RetryableError("503 not_ready: loading"), RetryableError("429", 0.01)]
)
async def test_connection_errors_5xx_and_429_are_retried_until_they_succeed(error: Exception) -> None:
    service = FakeService(fail_first=7, error=error)
    stats = Stats()
    outcomes = await run_all(Dispatcher(service, stats, concurrency=1, backoff=FAST), 5)
    assert [o.result.text for o in outcomes] == [f"c{i}" for i in range(5)]
    assert stats.chunks_retried == 7 and stats.chunks_sent == 5 and stats.chunks_dropped == 0
    assert not stats.backend_down


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    b = Backoff(first_s=0.25, max_s=5.0, jitter=0.0)
    assert [b.delay(n) for n in range(6)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0]
    assert b.delay(0, hint=3.0) == 3.0  # the server said when to come back
    assert b.delay(9, hint=30.0) == 30.0
    assert b.delay(5000) == 5.0  # a long outage: the cap holds, no float overflow
    jittered = Backoff(first_s=1.0, jitter=0.2)
    assert all(0.8 <= jittered.delay(0) <= 1.2 for _ in range(100))


async def test_a_refused_chunk_is_counted_as_dropped_never_silently() -> None:
    service = FakeService(fail_first=1, error=PermanentError("400 not_audio: ..."))
    stats = Stats()
    outcomes = await run_all(Dispatcher(service, stats, concurrency=1, backoff=FAST), 3)
    assert outcomes[0].result is None and "not_audio" in outcomes[0].error
    assert [o.result.text for o in outcomes[1:]] == ["c1", "c2"]
    assert stats.chunks_dropped == 1


async def test_non_speech_chunks_are_skipped_and_unchecked_ones_are_sent() -> None:
    stats = Stats()
    service = FakeService(silent={1, 3})
    outcomes = await run_all(Dispatcher(service, stats, concurrency=2, backoff=FAST), 5)
    assert [o.speech for o in outcomes] == [True, False, True, False, True]
    assert service.calls == 3 and stats.chunks_nonspeech == 2

    stats = Stats()
    down = FakeService(silent={1, 3}, detector_down=True)
    outcomes = await run_all(Dispatcher(down, stats, concurrency=2, backoff=FAST), 5)
    assert all(o.result is not None for o in outcomes)  # could not check: transcribe rather than lose
    assert stats.detector_unavailable == 5


async def test_detector_off_sends_everything() -> None:
    service = FakeService(silent={0, 1, 2})
    outcomes = await run_all(Dispatcher(service, Stats(), detector=False, backoff=FAST), 3)
    assert all(o.result is not None for o in outcomes)


async def test_chunks_are_held_and_spilled_to_disk_during_an_outage(tmp_path) -> None:
    """The service is down while 40 chunks arrive: 8 stay in memory, the rest wait on disk, none is lost."""
    outage = asyncio.Event()
    stats = Stats()

    class Flaky(FakeService):
        async def transcribe(self, samples, offset, language=None, prompt=None):
            if not outage.is_set():
                raise RetryableError("ConnectError: connection refused")
            return await super().transcribe(samples, offset, language, prompt)

    service = Flaky()
    dispatcher = Dispatcher(service, stats, concurrency=2, max_in_memory=8, spill_dir=tmp_path, backoff=FAST)
    for i in range(40):
        await dispatcher.submit(chunk(i))
    await asyncio.sleep(0.05)
    assert stats.backend_down
    assert stats.chunks_held == 38  # 2 are with the workers, retrying
    assert stats.chunks_spilled == 30
    assert len(list(tmp_path.rglob("*.npy"))) == 30
    outage.set()
    await dispatcher.close()
    outcomes = [o async for o in dispatcher.results()]
    assert [o.result.text for o in outcomes] == [f"c{i}" for i in range(40)]
    assert all(o.chunk.samples.size == 48000 for o in outcomes)  # samples came back from disk intact
    assert stats.chunks_dropped == 0 and stats.chunks_held == 0
    assert not list(tmp_path.rglob("*.npy"))


async def test_prompt_is_asked_for_at_send_time() -> None:
    service = FakeService()
    seen: list[int] = []

    def prompt(c: Chunk) -> str:
        seen.append(c.index)
        return f"before {c.index}"

    await run_all(Dispatcher(service, Stats(), concurrency=1, prompt=prompt, backoff=FAST), 3)
    assert service.prompts == ["before 0", "before 1", "before 2"]


async def test_the_first_sure_language_is_asked_for_from_then_on() -> None:
    asked: list[str | None] = []
    detections = [("cy", 0.5), ("en", 0.95), ("nn", 0.99)]  # then English, sure

    class Detecting(FakeService):
        async def transcribe(self, samples, offset, language=None, prompt=None):
            asked.append(language)
            result = await super().transcribe(samples, offset, language, prompt)
            result.words *= 4  # a window with words enough to trust its language
            result.language, result.language_probability = (
                (language, 1.0) if language else (detections.pop(0) if detections else ("en", 0.99))
            )
            return result

    await run_all(Dispatcher(Detecting(), Stats(), concurrency=1, backoff=FAST), 5)
    assert asked == [None, None, "en", "en", "en"]
    asked.clear()
    await run_all(Dispatcher(Detecting(), Stats(), concurrency=1, language="de", backoff=FAST), 3)
    assert asked == ["de", "de", "de"]


async def test_abort_stops_retrying_at_once() -> None:
    service = FakeService(fail_first=10**9)
    dispatcher = Dispatcher(service, Stats(), concurrency=2, backoff=FAST)
    await dispatcher.submit(chunk(0))
    await asyncio.sleep(0.02)
    await asyncio.wait_for(dispatcher.abort(), 1)
    outcomes = [o async for o in dispatcher.results()]
    assert outcomes == []


async def test_a_speech_chunk_that_comes_back_empty_is_resent_with_its_lead_in() -> None:
    """Measured on the 180 s recording: the chunk at 172 s came back empty; with 1 s before it,
    the words came back. The resend carries the lead-in and the shifted offset."""
    sent: list[tuple[int, float]] = []

    class EmptyAlone(FakeService):
        async def transcribe(self, samples, offset, language=None, prompt=None):
            sent.append((samples.size, offset))
            if samples.size == 48000:
                return ChunkResult([], "")
            return ChunkResult([Word(offset + 0.5, offset + 0.9, " found")], "found")

    stats = Stats()
    c = Chunk(0, 2.0, np.full(48000, 0.001, np.float32), lead=np.zeros(16000, np.float32))
    dispatcher = Dispatcher(EmptyAlone(), stats, backoff=FAST)
    await dispatcher.submit(c)
    await dispatcher.close()
    outcomes = [o async for o in dispatcher.results()]
    assert sent == [(48000, 2.0), (64000, 1.0)]
    assert [w.text for w in outcomes[0].result.words] == [" found"]
    assert stats.chunks_resent_with_lead == 1


async def test_empty_answers_are_not_resent_without_a_detector_verdict() -> None:
    """With the detector off an empty answer may be plain silence: no second request."""
    calls = []

    class Empty(FakeService):
        async def transcribe(self, samples, offset, language=None, prompt=None):
            calls.append(samples.size)
            return ChunkResult([], "")

    c = Chunk(0, 0.0, np.zeros(48000, np.float32), lead=np.zeros(16000, np.float32))
    dispatcher = Dispatcher(Empty(), Stats(), detector=False, backoff=FAST)
    await dispatcher.submit(c)
    await dispatcher.close()
    _ = [o async for o in dispatcher.results()]
    assert calls == [48000]


async def test_spilled_chunks_keep_their_lead_in(tmp_path) -> None:
    from client.spill import ChunkStore

    store = ChunkStore(max_in_memory=0, spill_dir=tmp_path)
    lead, samples = np.full(16000, 0.25, np.float32), np.full(48000, 0.5, np.float32)
    await store.put(Chunk(3, 6.0, samples, lead=lead))
    assert list(tmp_path.rglob("*.npy"))
    back = await store.get()
    np.testing.assert_array_equal(back.samples, samples)
    np.testing.assert_array_equal(back.lead, lead)
    assert (back.index, back.start) == (3, 6.0)


async def test_each_chunk_is_sent_with_its_left_context_and_the_matching_offset() -> None:
    """The 2 s before a chunk go with it, its words are timed from where that audio began,
    and an empty answer is not resent (the context already holds the lead-in)."""
    sent: list[tuple[int, float]] = []

    class Recorder(FakeService):
        async def transcribe(self, samples, offset, language=None, prompt=None):
            sent.append((samples.size, offset))
            return ChunkResult([], "")

    first = Chunk(0, 0.0, np.full(48000, 0.001, np.float32))
    second = Chunk(1, 2.0, np.full(48000, 0.001, np.float32), lead=np.zeros(32000, np.float32))
    dispatcher = Dispatcher(Recorder(), Stats(), backoff=FAST, context_s=2.0)
    for c in (first, second):
        await dispatcher.submit(c)
    await dispatcher.close()
    outcomes = [o async for o in dispatcher.results()]
    assert sent == [(48000, 0.0), (80000, 0.0)]
    assert [o.audio_start for o in outcomes] == [0.0, 0.0]
