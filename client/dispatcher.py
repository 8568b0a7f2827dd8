"""Send chunks for transcription: bounded concurrency, in-order results, retries, no chunk lost.

Each chunk goes through the detector (if on), then ``/transcribe``. Connection errors,
timeouts, 5xx and 429 are retried forever with capped exponential backoff: a live client
should survive a backend restart, and "forever" is bounded by the user pressing Ctrl-C
twice. Chunks waiting their turn sit in a :class:`~client.spill.ChunkStore` (memory, then
disk). Workers finish out of order; :meth:`Dispatcher.results` hands them back in order.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from client.api import ChunkResult, PermanentError, RetryableError
from client.chunker import SAMPLE_RATE, Chunk
from client.spill import ChunkStore
from client.stats import Stats
from services.common.commit_policy import CommitPolicy, Update

log = logging.getLogger(__name__)


class Transcriber(Protocol):
    """What the dispatcher needs from :class:`client.api.SttApi` (tests pass fakes)."""

    async def detect(self, samples: np.ndarray) -> bool: ...

    async def transcribe(
        self, samples: np.ndarray, offset: float, language: str | None = None, prompt: str | None = None
    ) -> ChunkResult: ...


@dataclass
class Backoff:
    """Capped exponential backoff with jitter, so many clients do not retry in lockstep."""

    first_s: float = 0.25
    max_s: float = 5.0
    factor: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int, hint: float | None = None) -> float:
        base = min(self.max_s, self.first_s * self.factor**attempt)
        if hint is not None:
            base = min(max(base, hint), max(self.max_s, hint))
        return base * (1 + random.uniform(-self.jitter, self.jitter))


@dataclass
class Outcome:
    """A chunk and what became of it; ``result`` is None when nothing is to be stitched."""

    chunk: Chunk
    result: ChunkResult | None
    speech: bool = True
    error: str = ""
    offset: float | None = None  # stream time where the audio sent began (before chunk.start with context)
    request_s: float = 0.0  # round trip of the answered /transcribe request (for latency measurements)
    window: tuple[float, float] | None = None  # agreement: the stream time decoded for this step
    update: Update | None = None  # agreement: what the commit policy made of the answer

    @property
    def audio_start(self) -> float:
        return self.chunk.start if self.offset is None else self.offset


class Dispatcher:
    def __init__(
        self,
        api: Transcriber,
        stats: Stats,
        *,
        concurrency: int = 2,
        detector: bool = True,
        language: str | None = None,
        prompt: Callable[[Chunk], str | None] | None = None,
        max_in_memory: int = 64,
        spill_dir: Path | None = None,
        backoff: Backoff | None = None,
        resend_empty: bool = True,
        context_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.stats = stats
        self.detector = detector
        self.language = language
        self.prompt = prompt
        self.backoff = backoff or Backoff()
        self.resend_empty = resend_empty
        self.context_s = context_s
        self.clock = clock
        self.store = ChunkStore(max_in_memory, spill_dir)
        self._done: dict[int, Outcome] = {}
        self._done_changed = asyncio.Condition()
        self._workers = [asyncio.create_task(self._work(), name=f"dispatch-{i}") for i in range(concurrency)]
        self._next = 0
        self._submitted = 0

    async def submit(self, chunk: Chunk) -> None:
        """Queue a chunk; returns at once (spilling to disk if memory is full)."""
        self._submitted += 1
        await self.store.put(chunk)
        self._update_held()

    async def close(self) -> None:
        """No more chunks will come; workers exit once everything queued is answered."""
        await self.store.close()

    async def abort(self) -> None:
        """Stop now (second Ctrl-C): in-flight and held chunks are abandoned."""
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self.store.cleanup()
        async with self._done_changed:
            self._done_changed.notify_all()

    def _update_held(self) -> None:
        self.stats.chunks_held = len(self.store)
        self.stats.chunks_spilled = self.store.spilled

    async def results(self) -> AsyncIterator[Outcome]:
        """Outcomes in chunk order, as soon as each one and all before it are done."""
        while True:
            async with self._done_changed:
                await self._done_changed.wait_for(
                    lambda: self._next in self._done or all(t.done() for t in self._workers)
                )
                outcome = self._done.pop(self._next, None)
            if outcome is None:
                self.store.cleanup()
                return
            self._next += 1
            yield outcome

    async def _work(self) -> None:
        try:
            while True:
                chunk = await self.store.get()
                self._update_held()
                if chunk is None:
                    return
                outcome = await self._process(chunk)
                async with self._done_changed:
                    self._done[chunk.index] = outcome
                    self._done_changed.notify_all()
        finally:
            async with self._done_changed:
                self._done_changed.notify_all()

    async def _is_speech(self, chunk: Chunk) -> bool:
        if not self.detector:
            return True
        try:
            return await self.api.detect(chunk.samples)
        except (RetryableError, PermanentError) as exc:
            # A chunk that cannot be checked is transcribed: losing speech is worse than a request.
            self.stats.detector_unavailable += 1
            log.debug("detector unavailable for chunk %d (%s); sending it on", chunk.index, exc)
            return True

    async def _process(self, chunk: Chunk) -> Outcome:
        if not await self._is_speech(chunk):
            self.stats.chunks_nonspeech += 1
            return Outcome(chunk, None, speech=False)
        # Left context: Whisper hears how the sentence began, the stitcher cuts the words it repeats.
        audio, offset = chunk.with_lead(self.context_s)
        outcome = await self._transcribe(chunk, audio, offset)
        empty = outcome.result is not None and not outcome.result.words
        if empty and self.resend_empty and self.detector and audio.size < chunk.lead.size + chunk.samples.size:
            # The detector heard speech but Whisper wrote nothing: greedy decoding of 3 s that start
            # mid-sentence sometimes ends at once. The same audio with 1 s before it is decoded
            # differently (measured: it recovers the words); the stitcher drops what repeats.
            self.stats.chunks_resent_with_lead += 1
            outcome = await self._transcribe(chunk, *chunk.with_lead())
        return outcome

    async def _transcribe(self, chunk: Chunk, samples: np.ndarray, offset: float) -> Outcome:
        attempt = 0
        while True:
            prompt = self.prompt(chunk) if self.prompt else None
            began = time.perf_counter()
            try:
                result = await self.api.transcribe(samples, offset, self.language, prompt)
            except RetryableError as exc:
                self.stats.chunks_retried += 1
                self.stats.backend_down = True
                self.stats.last_error = str(exc)
                await asyncio.sleep(self.backoff.delay(attempt, exc.retry_after))
                attempt += 1
                continue
            except PermanentError as exc:
                self.stats.chunks_dropped += 1
                self.stats.last_error = str(exc)
                log.error("chunk %d at %.1f s was refused and is lost: %s", chunk.index, chunk.start, exc)
                return Outcome(chunk, None, error=str(exc))
            self.stats.chunks_sent += 1
            self.stats.audio_sent_s += samples.size / SAMPLE_RATE
            self.stats.backend_down = False
            return Outcome(chunk, result, offset=offset, request_s=time.perf_counter() - began)


class AgreementDispatcher(Dispatcher):
    """Chunks are the policy's steps (``step_s`` of new audio each); each is checked by the
    detector, then the window the policy asks for (uncommitted audio plus context, built from
    the steps kept here) is transcribed and its words handed to the policy.

    One request at a time: a window's start depends on what the previous answer committed.
    Holding and spilling work as for the stitcher: steps wait in the store while the service
    is down; only the audio a window can still reach (``policy.keep_from`` onwards) is kept here.
    """

    def __init__(self, api: Transcriber, stats: Stats, policy: CommitPolicy, **kwargs) -> None:
        self.policy = policy
        self._audio = np.zeros(0, np.float32)
        self._audio_start = 0  # stream sample index of _audio[0]
        kwargs.update(concurrency=1, resend_empty=False, context_s=0.0, prompt=None)
        super().__init__(api, stats, **kwargs)

    def _keep(self, chunk: Chunk) -> int:
        """Add the step's new samples (a final chunk may reach back over audio already kept)."""
        first = round(chunk.start * SAMPLE_RATE)
        have = self._audio_start + self._audio.size
        if not self._audio.size:
            self._audio_start, have = first, first
        new = chunk.samples[max(0, have - first) :]
        self._audio = np.concatenate([self._audio, new.astype(np.float32, copy=False)])
        return self._audio_start + self._audio.size

    def _trim(self) -> None:
        drop = min(self.policy.keep_from - self._audio_start, self._audio.size)
        if drop > 0:
            self._audio = self._audio[drop:]
            self._audio_start += drop

    async def _process(self, chunk: Chunk) -> Outcome:
        speech = await self._is_speech(chunk)
        if not speech:
            self.stats.chunks_nonspeech += 1
        self.policy.advance(self._keep(chunk), speech)
        span = self.policy.window()
        if span is None:  # silence, and nothing waiting to be committed
            self._trim()
            return Outcome(chunk, None, speech=speech)
        start, end = span
        offset = start / SAMPLE_RATE
        samples = self._audio[start - self._audio_start : end - self._audio_start]
        outcome = await self._transcribe(chunk, samples, offset)
        outcome.speech, outcome.window = speech, (offset, end / SAMPLE_RATE)
        if outcome.result is None:  # refused: the next step's window covers this audio again
            self.policy.cancel()
        else:
            outcome.update = self.policy.update(outcome.result.segments, offset)
        self._trim()
        return outcome
