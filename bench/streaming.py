"""Streams through the real path: the client library (chunker → /detect → /transcribe →
stitcher) against a real proxy, at real-time pace or as fast as the services answer.

Latency is what a person watching the live view waits: from the moment a chunk's last
sample was captured (``Chunk.captured_at``) to the moment its answer is stitched into the
transcript. ``commit`` latency runs to the moment those words can no longer change (the next
chunk's answer has been stitched), which adds one chunk step by design.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from client.api import SttApi
from client.dispatcher import Outcome
from client.pipeline import Pipeline, Settings
from client.sources import ArraySource
from client.stitcher import join_words


class DetectorApi(SttApi):
    """The client's API with the detector chosen per request (the seed design asks Whisper
    tiny, the shipped client asks the service default, Silero)."""

    def __init__(self, url: str, detector: str | None = None, timeout_s: float = 120.0) -> None:
        super().__init__(url, timeout_s=timeout_s, detect_timeout_s=timeout_s)
        self.detector = detector

    async def detect(self, samples: np.ndarray) -> bool:
        if not self.detector:
            return await super().detect(samples)
        body = await self._post("/detect", samples, {"detector": self.detector}, timeout=self.detect_timeout_s)
        return bool(body.get("speech"))


@dataclass(frozen=True)
class Client:
    """How the HTTP client cuts and sends audio: the default before streaming sessions (3 s
    chunks, 1 s overlap, 2 s context, stitched by word timestamps), or the seed design's."""

    chunk_s: float = Settings.chunk_s
    overlap_s: float = Settings.overlap_s
    context_s: float = Settings.context_s
    detector: str | None = None  # None: the service default (Silero)
    concurrency: int = 2
    language: str | None = "en"


# The HTTP client's defaults, the default transport until sessions: every goal compares with it.
PREVIOUS_DEFAULT = Client()
SEED = Client(overlap_s=0.0, context_s=0.0, detector="whisper-tiny", concurrency=1)


@dataclass
class StreamResult:
    text: str
    audio_s: float
    wall_s: float
    latencies_s: list[float] = field(default_factory=list)
    commit_latencies_s: list[float] = field(default_factory=list)
    chunks: int = 0
    chunks_nonspeech: int = 0
    chunks_dropped: int = 0
    retries: int = 0
    answered_at: list[float] = field(default_factory=list)  # monotonic time of each answer
    audio_done_s: float = 0.0  # end of the last chunk handed to the stitcher (seconds of stream)


async def stream(
    url: str,
    samples: np.ndarray,
    client: Client = PREVIOUS_DEFAULT,
    realtime: bool = True,
    result: StreamResult | None = None,
    on_latency: Callable[[float], None] | None = None,
) -> StreamResult:
    """Run one stream to the end; returns its transcript and per-chunk latencies. Pass
    ``result`` to read the latencies of a stream that gets cancelled part-way."""
    api = DetectorApi(url, client.detector)
    settings = Settings(
        chunk_s=client.chunk_s,
        overlap_s=client.overlap_s,
        context_s=client.context_s,
        detector=True,
        language=client.language,
        concurrency=client.concurrency,
    )
    result = result or StreamResult("", samples.size / 16_000, 0.0)
    pending: list[float] = []  # captured_at of answered chunks whose words are not committed yet

    def on_outcome(outcome: Outcome) -> None:
        now = time.monotonic()
        result.chunks += 1
        result.audio_done_s = outcome.chunk.end
        if outcome.result is None:
            return
        result.latencies_s.append(now - outcome.chunk.captured_at)
        if on_latency:
            on_latency(now - outcome.chunk.captured_at)
        result.answered_at.append(now)
        # This answer commits the words of every earlier answered chunk (see Stitcher.add).
        result.commit_latencies_s.extend(now - captured for captured in pending)
        pending[:] = [outcome.chunk.captured_at]

    pipeline = Pipeline(ArraySource(samples, realtime=realtime), api, settings, on_outcome=on_outcome)
    began = time.monotonic()
    try:
        words = await pipeline.run()
    except asyncio.CancelledError:
        await pipeline.abort()  # stop its workers before their HTTP client goes away
        raise
    finally:
        await api.aclose()
    done = time.monotonic()
    result.commit_latencies_s.extend(done - captured for captured in pending)
    result.wall_s = done - began
    result.text = join_words(words)
    result.chunks_nonspeech = pipeline.stats.chunks_nonspeech
    result.chunks_dropped = pipeline.stats.chunks_dropped
    result.retries = pipeline.stats.chunks_retried
    return result


async def _delayed(delay: float, coro):
    await asyncio.sleep(delay)
    return await coro


async def streams(
    url: str,
    audios: list[np.ndarray],
    client: Client = PREVIOUS_DEFAULT,
    realtime: bool = True,
    stagger_s: float = 0.0,
    give_up_s: float | None = None,
) -> tuple[list[StreamResult], bool]:
    """Several streams at once, the i-th starting ``i * stagger_s / n`` late, so that their
    chunks do not all arrive in the same instant (real callers are not phase-aligned).

    With ``give_up_s``, all streams are cancelled as soon as one chunk's latency exceeds it:
    an overloaded step has answered its question, and letting its backlog drain would cost
    minutes. Returns the results (partial when cancelled) and whether it gave up."""
    n = len(audios)
    overloaded = asyncio.Event()

    def watch(latency: float) -> None:
        if give_up_s is not None and latency > give_up_s:
            overloaded.set()

    results = [StreamResult("", a.size / 16_000, 0.0) for a in audios]
    tasks = [
        asyncio.create_task(_delayed(i * stagger_s / max(n, 1), stream(url, a, client, realtime, results[i], watch)))
        for i, a in enumerate(audios)
    ]
    watcher = asyncio.create_task(overloaded.wait())
    everything = asyncio.gather(*tasks)
    racing: list[asyncio.Future[Any]] = [everything, watcher]  # futures of different results
    await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
    gave_up = overloaded.is_set() and not everything.done()
    watcher.cancel()
    if gave_up:
        everything.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await everything
    return results, gave_up


async def transcribe_all(
    url: str, audios: list[np.ndarray], client: Client = PREVIOUS_DEFAULT, parallel: int = 2
) -> list[str]:
    """Transcripts of many files through the streamed path, as fast as the services answer
    (WER does not depend on pacing), ``parallel`` files at a time."""
    gate = asyncio.Semaphore(parallel)

    async def one(samples: np.ndarray) -> str:
        async with gate:
            return (await stream(url, samples, client, realtime=False)).text

    return list(await asyncio.gather(*(one(a) for a in audios)))
