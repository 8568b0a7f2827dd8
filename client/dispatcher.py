"""Send chunks for transcription: bounded concurrency, in-order results, retries, no chunk lost.

Each chunk goes through the detector (if on), then ``/transcribe``. Connection errors,
timeouts, 5xx and 429 are retried forever with capped exponential backoff: a live client
should survive a backend restart, and "forever" is bounded by the user pressing Ctrl-C
twice. Chunks waiting their turn sit in a :class:`~client.spill.ChunkStore` (memory, then
disk). Workers finish out of order; :meth:`Dispatcher.results` hands them back in order.

Every chunk ends transcribed or counted as dropped with a reason (:meth:`Stats.drop`): a 4xx
(``refused``), a 200 whose body is not a transcription (``malformed_answer``), a spill file
that cannot be read back (``damaged_spill``), any other exception (``error``, logged with its
traceback), Ctrl-C twice (``aborted``). A worker never dies on a chunk: it records the drop and
takes the next one. A spilled chunk's file is deleted only once its outcome is known.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from client.api import ChunkResult, PermanentError, RetryableError, Word
from client.chunker import Chunk
from client.spill import ChunkStore
from client.stats import ABORTED, DAMAGED_SPILL, ERROR, MALFORMED_ANSWER, REFUSED, Stats
from core.commit_policy import CommitPolicy, Update
from core.language_lock import LanguageLock
from core.vocabulary import SAMPLE_RATE

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
        # the exponent is capped: past ~1000 attempts factor**attempt would overflow a float
        base = min(self.max_s, self.first_s * self.factor ** min(attempt, 64))
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
    dropped: str = ""  # the reason it was given up on (client.stats), empty when it was not

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
        store: ChunkStore | None = None,
        spill_meta: dict[str, Any] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        """``store``: chunks to work through instead of a new store (a previous run's, replayed);
        ``spill_meta``: what ``run.json`` says about this run (the source); ``warn``: where the
        one warning about a failing spill goes (the live view; default the log)."""
        self.api = api
        self.stats = stats
        self.detector = detector
        self.language = language
        self.language_lock = LanguageLock()  # used while no language is given
        self.prompt = prompt
        self.backoff = backoff or Backoff()
        self.resend_empty = resend_empty
        self.context_s = context_s
        self.clock = clock
        self.warn = warn or log.warning
        self._spill_failing = False
        self.store = store or ChunkStore(
            max_in_memory, spill_dir, run_meta=spill_meta, on_spill_failure=self._on_spill_failure
        )
        self._in_flight: dict[int, Chunk] = {}
        self._aborted = False
        self._done: dict[int, Outcome] = {}
        self._done_changed = asyncio.Condition()
        self._workers = [asyncio.create_task(self._work(), name=f"dispatch-{i}") for i in range(concurrency)]
        for task in self._workers:
            task.add_done_callback(self._worker_ended)
        # Chunk indices in the order they were queued: results come back in this order (0, 1, 2, ...
        # for a live stream; a replayed run's chunks may have gaps where chunks were not on disk).
        self._order: deque[int] = deque(c.index for c in self.store.held)

    async def submit(self, chunk: Chunk) -> None:
        """Queue a chunk; returns at once (spilling to disk if memory is full)."""
        if self._aborted:  # captured after the second Ctrl-C: nobody will send it
            self.stats.drop(ABORTED)
            return
        self._order.append(chunk.index)
        written = self.store.spill_writes
        await self.store.put(chunk)
        if self.store.spill_writes > written:
            self._spill_failing = False  # writing works again: warn anew if it fails again
        self._update_held()

    def _on_spill_failure(self, exc: OSError) -> None:
        """A chunk could not be written to disk (full, read-only): it stays in memory. One
        warning per episode, not one per chunk; Stats.spill_failures counts them all."""
        self.stats.spill_failures += 1
        if not self._spill_failing:
            self._spill_failing = True
            self.warn(
                f"cannot spill held chunks to disk ({exc}); keeping them in memory, capture goes on "
                f"(spill dir {self.store.run.root})"
            )

    async def close(self) -> None:
        """No more chunks will come; workers exit once everything queued is answered."""
        await self.store.close()

    async def abort(self) -> None:
        """Stop now (second Ctrl-C): in-flight and held chunks are abandoned. Those in memory are
        counted as dropped (``aborted``); those on disk stay there for the next run to replay."""
        self._aborted = True
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        abandoned = [*self._in_flight.values(), *self.store.held]
        self._in_flight.clear()
        for chunk in abandoned:
            path = chunk.meta.get("spilled")
            if path is not None and path.exists():
                self.stats.chunks_left_on_disk += 1
            else:
                self.stats.drop(ABORTED)
        self._release()
        async with self._done_changed:
            self._done_changed.notify_all()

    def _worker_ended(self, task: asyncio.Task) -> None:
        """A worker never ends by an exception (each chunk's is caught); should one all the same,
        say so loudly rather than let the chunks it would have taken wait in silence."""
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.stats.last_error = f"worker {task.get_name()} died: {type(exc).__name__}: {exc}"
            log.error("%s", self.stats.last_error, exc_info=exc)

    def _release(self) -> None:
        self.store.release()
        self._update_held()

    def _update_held(self) -> None:
        self.stats.chunks_held = len(self.store)
        self.stats.chunks_spilled = self.store.spilled

    async def results(self) -> AsyncIterator[Outcome]:
        """Outcomes in chunk order, as soon as each one and all before it are done."""
        while True:
            async with self._done_changed:
                await self._done_changed.wait_for(
                    lambda: (self._order and self._order[0] in self._done) or all(t.done() for t in self._workers)
                )
                outcome = self._done.pop(self._order[0], None) if self._order else None
            if outcome is None:
                if self._order and not self._aborted:  # only after a worker died (a bug): count, not lose
                    for _ in self._order:
                        self.stats.drop(ERROR)
                    self._order.clear()
                self._release()
                return
            self._order.popleft()
            yield outcome

    async def _work(self) -> None:
        try:
            while True:
                chunk = await self.store.get()
                self._update_held()
                if chunk is None:
                    return
                self._in_flight[chunk.index] = chunk
                outcome = await self._settle(chunk)
                self._in_flight.pop(chunk.index, None)
                self.store.done(chunk)  # the answer is here (or it is counted): its file can go
                async with self._done_changed:
                    self._done[chunk.index] = outcome
                    self._done_changed.notify_all()
        finally:
            async with self._done_changed:
                self._done_changed.notify_all()

    async def _settle(self, chunk: Chunk) -> Outcome:
        """The chunk's outcome, whatever happens: an exception drops this chunk, not the worker."""
        damaged = chunk.meta.get("damaged")
        if damaged:
            log.warning(
                "chunk %d at %.1f s: its spill file is damaged and is skipped (%s)", chunk.index, chunk.start, damaged
            )
            return self._dropped(chunk, DAMAGED_SPILL, damaged)
        try:
            return await self._process(chunk)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("chunk %d at %.1f s failed and is lost", chunk.index, chunk.start)
            return self._dropped(chunk, ERROR, f"{type(exc).__name__}: {exc}")

    def _dropped(self, chunk: Chunk, reason: str, error: str) -> Outcome:
        self.stats.drop(reason)
        self.stats.last_error = f"{reason}: {error}"
        return Outcome(chunk, None, error=error, dropped=reason)

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
            language = self.language or self.language_lock.language
            try:
                result = await self.api.transcribe(samples, offset, language, prompt)
            except RetryableError as exc:
                self.stats.chunks_retried += 1
                self.stats.backend_down = True
                self.stats.last_error = str(exc)
                await asyncio.sleep(self.backoff.delay(attempt, exc.retry_after))
                attempt += 1
                continue
            except PermanentError as exc:
                log.error("chunk %d at %.1f s was refused and is lost: %s", chunk.index, chunk.start, exc)
                return self._dropped(chunk, REFUSED, str(exc))
            except Exception as exc:  # the answer came (a 200) but could not be read
                log.error("chunk %d at %.1f s: unreadable answer, chunk lost: %r", chunk.index, chunk.start, exc)
                return self._dropped(chunk, MALFORMED_ANSWER, f"{type(exc).__name__}: {exc}")
            problem = malformed(result)
            if problem:
                log.error("chunk %d at %.1f s: malformed answer, chunk lost: %s", chunk.index, chunk.start, problem)
                return self._dropped(chunk, MALFORMED_ANSWER, problem)
            if language is None:
                self.language_lock.observe(result.language, result.language_probability, len(result.words))
            self.stats.chunks_sent += 1
            self.stats.audio_sent_s += samples.size / SAMPLE_RATE
            self.stats.backend_down = False
            return Outcome(chunk, result, offset=offset, request_s=time.perf_counter() - began)


def malformed(result: object) -> str:
    """What is wrong with an answer the stitcher cannot use (empty when nothing): not a
    ChunkResult, words that are not words or have times that are not finite."""
    if not isinstance(result, ChunkResult):
        return f"not a transcription: {type(result).__name__}"
    if not isinstance(result.words, list) or not isinstance(result.text, str):
        return "words or text of the wrong type"
    for w in result.words:
        if not isinstance(w, Word) or not isinstance(w.text, str):
            return f"not a word: {w!r}"
        if not (math.isfinite(w.start) and math.isfinite(w.end)) or w.end < w.start:
            return f"word with impossible times: {w!r}"
    return ""


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
        elif first > have:  # a step was lost (damaged spill file): silence keeps the times true
            self._audio = np.concatenate([self._audio, np.zeros(first - have, np.float32)])
            have = first
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
        try:
            outcome = await self._transcribe(chunk, samples, offset)
            outcome.speech, outcome.window = speech, (offset, end / SAMPLE_RATE)
            if outcome.result is None:  # refused: the next step's window covers this audio again
                self.policy.cancel()
            else:
                outcome.update = self.policy.update(outcome.result.segments, offset)
        except Exception:
            self.policy.cancel()  # the window will not be answered; the next one covers it
            raise
        finally:
            self._trim()
        return outcome
