"""Streaming sessions: live PCM in, partial and committed words out.

A session runs the pipeline ``stt-client --policy agreement`` runs on the user's machine, here
in the proxy: the audio is cut into steps (3 s), each step is checked by the detector, and
the window the commit policy asks for (:mod:`core.commit_policy`, the same module
the client uses) is transcribed through the routed backends (:mod:`services.proxy.upstream`),
so sessions share the backends' batching with every other request and follow the routing
mode and its fallback.

The session knows nothing of WebSockets or JSON framing: it takes samples
(:meth:`StreamSession.feed`) and hands events (plain dicts) to an ``emit`` callback. The
native protocol (:mod:`services.proxy.stream_ws`) sends them as they are; the OpenAI
Realtime adapter (:mod:`services.proxy.realtime`) translates them.

No audio is lost: the session processes every step in order, one window at a time (a window's
start depends on what the previous answer committed; inside an utterance a step's window is
sent while the detector still listens to the step, as it is decoded whatever the detector
says); a backend that is busy or down is retried with backoff while new audio waits; the
client is told its lag. Each ``transcript.committed`` event carries ``settled_sample`` and
``keep_from_sample``: audio before ``keep_from_sample`` will never be needed again, so a
client that keeps the rest can resume on any replica (:meth:`SessionOptions` ``resume_from`` /
``committed_until``).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from core.commit_policy import CommitPolicy, PolicyConfig, Segment, Update, Word, join_words
from core.errors import ApiError
from core.language_lock import LanguageLock
from core.vocabulary import MAX_BEAM_SIZE, SAMPLE_RATE, SESSION_BEAM_SIZE
from services.proxy import metrics

log = logging.getLogger("stt.proxy.sessions")

PCM_TYPE = "audio/pcm;rate=16000"

Emit = Callable[[dict], Awaitable[None]]
# The last step of a flush (StreamSession.flush) shorter than this is not sent to the detector:
# it needs 250 ms of speech to call anything speech (STT_VAD_MIN_SPEECH_MS), so it would say no.
MIN_DETECT_SAMPLES = SAMPLE_RATE // 4


class SessionBackend(Protocol):
    """What a session needs from the proxy: detection and routed transcription of raw PCM."""

    async def detect(self, pcm: bytes) -> bool: ...

    async def transcribe(self, pcm: bytes, language: str | None, last: bool = False) -> dict:
        """``last``: no later window decodes this audio again (a flush or the stream's end), so
        speech the decode left out after its last word must be recovered now."""
        ...


class ProxyBackend:
    """:class:`SessionBackend` over the proxy's :class:`~services.proxy.upstream.Upstreams`;
    ``beam_size``: what the session asked its windows to be decoded with (1: greedy)."""

    def __init__(self, upstreams, beam_size: int = SESSION_BEAM_SIZE) -> None:
        self.upstreams = upstreams
        self.beam_size = beam_size

    async def detect(self, pcm: bytes) -> bool:
        response = await self.upstreams.detect(pcm, PCM_TYPE)
        _raise_for(response)
        return bool(json.loads(response.body).get("speech"))

    async def transcribe(self, pcm: bytes, language: str | None, last: bool = False) -> dict:
        # fill_skipped: the window's last decode has no later one to bring back a phrase it left
        # out; fill_tail: nor, in the last window, one that decodes its end again
        query = "word_timestamps=true&fill_skipped=true" + ("&fill_tail=true" if last else "")
        query += f"&language={language}" if language else ""
        if self.beam_size != 1:
            query += f"&beam_size={self.beam_size}"
        response, backend, _ = await self.upstreams.routed("/transcribe-chunk", pcm, PCM_TYPE, query, "session")
        _raise_for(response)
        body = json.loads(response.body)
        body["backend"] = backend.name
        return body


def _raise_for(response) -> None:
    if response.status < 400:
        return
    try:
        error = json.loads(response.body)["error"]
        code, message = error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        code, message = "backend_error", response.body[:200].decode(errors="replace")
    headers = {"Retry-After": response.headers["retry-after"]} if "retry-after" in response.headers else None
    raise ApiError(response.status, code, message, headers=headers)


@dataclass
class SessionOptions:
    """What a client may choose for its session (query parameters of the native protocol)."""

    language: str | None = None
    detector: bool = True  # skip decoding steps the detector calls non-speech
    step_s: float = PolicyConfig.step_s
    window_s: float = PolicyConfig.max_window_s
    context_s: float = PolicyConfig.context_s
    settle_s: float = PolicyConfig.settle_s
    beam_size: int = SESSION_BEAM_SIZE  # Whisper's beams per window: 1 greedy, up to MAX_BEAM_SIZE (docs/api.md)
    resume_from: int = 0  # stream sample where the audio sent now begins
    committed_until: int | None = None  # with resume_from: words before this sample are already committed

    def policy(self) -> CommitPolicy:
        """The commit policy these options ask for; ValueError says which option is out of range."""
        if not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            raise ValueError(f"beam_size must be between 1 (greedy) and {MAX_BEAM_SIZE}")
        config = PolicyConfig(
            step_s=self.step_s, max_window_s=self.window_s, context_s=self.context_s, settle_s=self.settle_s
        )
        if self.committed_until is None and not self.resume_from:
            return CommitPolicy(config)
        until = self.resume_from if self.committed_until is None else self.committed_until
        return CommitPolicy.resumed(config, self.resume_from, until)


@dataclass
class Limits:
    """Per-session bounds; the proxy's settings (``STT_SESSION_*``) fill them."""

    max_buffer_s: float = 120.0  # audio received but not yet settled; past it the session ends (too far behind)
    lag_event_s: float = 6.0  # tell the client when processing is this far behind the audio received
    retry_first_s: float = 0.25
    retry_max_s: float = 5.0


@dataclass
class _Arrivals:
    """When each stretch of audio arrived (monotonic clock), to measure latency per sample."""

    ends: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def add(self, end_sample: int, at: float) -> None:
        self.ends.append(end_sample)
        self.times.append(at)

    def at(self, sample: int) -> float | None:
        i = bisect.bisect_left(self.ends, sample)
        return self.times[i] if i < len(self.times) else None

    def forget_before(self, sample: int) -> None:
        i = bisect.bisect_left(self.ends, sample)
        if i > 1:
            del self.ends[: i - 1], self.times[: i - 1]


class TooFarBehindError(Exception):
    """The session's unprocessed audio exceeds its bound."""


class StreamSession:
    """One live stream. ``feed`` audio, ``finish`` at the end; events go to ``emit``.

    Events (all carry ``type``; times in seconds of stream time, samples at 16 kHz):

    - ``session.started``: ``session_id``, ``sample_rate``, ``step_s``, ``resume_from``
    - ``speech.started`` / ``speech.stopped``: ``at_s``
    - ``transcript.partial``: ``text``, ``words`` (may still change; replaces the previous partial),
      ``decoded_until_sample`` (the end of the audio this decode heard)
    - ``transcript.committed``: ``text``, ``words`` (new final words only, never changed),
      ``forced``, ``settled_sample``, ``keep_from_sample``, ``backend``
    - ``session.lag``: ``lag_s``, ``received_s``, ``processed_s``
    - ``error``: ``code``, ``message``, ``retryable``
    - ``session.ended``: ``text`` (everything committed in this session), ``audio_s``, ``settled_sample``

    With ``utterance_events=True`` (the OpenAI Realtime adapter, which groups words into one
    conversation item per utterance; the native protocol does not ask for it) also:

    - ``utterance.ended``: ``reason`` (``silence``: the detector heard a pause and the decode
      that commits the utterance whole is done; ``flush``: :meth:`flush` committed everything
      received; ``finish``: the session ends), ``end_sample``, ``at_s``. Every word of the
      utterance was sent (``transcript.committed``) before it.
    """

    def __init__(
        self,
        backend: SessionBackend,
        emit: Emit,
        options: SessionOptions | None = None,
        limits: Limits | None = None,
        protocol: str = "native",
        on_error: Callable[[BaseException], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        utterance_events: bool = False,
    ) -> None:
        self.backend = backend
        self.emit = emit
        self.options = options or SessionOptions()
        self.limits = limits or Limits()
        self.protocol = protocol
        self.on_error = on_error
        self.clock = clock
        self.utterance_events = utterance_events
        self.id = uuid.uuid4().hex[:16]
        self.policy = self.options.policy()
        self.language_lock = LanguageLock()  # used while the client gives none (options.language)
        self._step = round(self.options.step_s * SAMPLE_RATE)
        self._audio = np.zeros(0, np.int16)  # samples from _audio_start on
        self._audio_start = self.options.resume_from
        self._received = self.options.resume_from  # stream sample after the newest one received
        self._processed = self.options.resume_from  # end of the last step handed to the policy
        self._arrivals = _Arrivals()
        self._wake = asyncio.Event()
        self._finishing = False
        self._flushes: list[tuple[int, asyncio.Future[None]]] = []  # (end sample, done) asked by flush()
        self._speaking = False
        self._task: asyncio.Task | None = None
        self.started = self.clock()
        self.last_lag_s = 0.0

    # -- input ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.emit(
            {
                "type": "session.started",
                "session_id": self.id,
                "sample_rate": SAMPLE_RATE,
                "step_s": self.options.step_s,
                "resume_from": self.options.resume_from,
            }
        )
        self._task = asyncio.create_task(self._run(), name=f"session-{self.id}")

    def feed(self, samples: np.ndarray) -> None:
        """Append 16 kHz mono int16 samples. Never blocks: processing runs in its own task."""
        if self._finishing:
            raise RuntimeError("feed() after finish()")
        if samples.size == 0:
            return
        self._audio = np.concatenate([self._audio, samples.astype(np.int16, copy=False)])
        self._received += samples.size
        self._arrivals.add(self._received, self.clock())
        if (self._received - self.policy.keep_from) / SAMPLE_RATE > self.limits.max_buffer_s:
            raise TooFarBehindError(
                f"more than {self.limits.max_buffer_s:g} s of audio is waiting to be transcribed; "
                "the backends cannot keep up: reconnect later or send less"
            )
        self._wake.set()

    async def finish(self) -> None:
        """No more audio: process what is left, commit everything, send ``session.ended``."""
        self._finishing = True
        self._wake.set()
        if self._task:
            await asyncio.gather(self._task, return_exceptions=True)  # a failure was reported by on_error

    def flush(self) -> asyncio.Future[None]:
        """Commit everything received so far, and keep the session open.

        What :meth:`finish` does to the end of the stream, done to the audio received until
        now: it is processed (the last, shorter step included), the newest hypothesis becomes
        final, an utterance in progress is cut here (``speech.stopped``; audio fed after this
        call starts the next one) and, with ``utterance_events``, ``utterance.ended`` with
        ``reason: "flush"`` follows. The OpenAI Realtime adapter needs this for
        ``input_audio_buffer.commit``: the client, not the detector, says where an item ends.

        The returned future resolves once all of that was emitted; awaiting it is optional (the
        flush point is fixed now, when called, so audio fed meanwhile is not part of it).
        """
        if self._finishing:
            raise RuntimeError("flush() after finish()")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushes.append((self._received, done))
        self._wake.set()
        return done

    async def cancel(self) -> None:
        """The client went away: stop at once (its unacknowledged audio is its to resend)."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _, done in self._flushes:
            done.cancel()

    @property
    def lag_s(self) -> float:
        return (self._received - self._processed) / SAMPLE_RATE

    # -- processing -------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a malformed backend answer: end the session, loudly
            if self.on_error:
                self.on_error(exc)
            raise

    async def _loop(self) -> None:
        while True:
            flush_at = self._flushes[0][0] if self._flushes else None
            available = self._received if flush_at is None else flush_at  # a flush point is not stepped over
            if available - self._processed >= self._step:
                end = self._processed + self._step
                # A whole step can be the last one too: a flush or the stream's end right at it.
                await self._process(end, last=end == flush_at or (self._finishing and end == self._received))
                continue
            if flush_at is not None:
                await self._flush(flush_at)
                continue
            if self._finishing:
                if self._received > self._processed:
                    await self._process(self._received, last=True)
                await self._end()
                return
            self._wake.clear()
            await self._wake.wait()

    async def _flush(self, end: int) -> None:
        """Process the audio up to ``end`` (a shorter last step) and commit all of it."""
        try:
            if end > self._processed:
                await self._process(end, flushing=True, last=True)
            update = self.policy.finish()
            if update.committed:
                await self._send_update(update, end, None)
            if self._speaking:
                self._speaking = False
                await self.emit({"type": "speech.stopped", "at_s": round(end / SAMPLE_RATE, 3)})
            await self._utterance_ended("flush", end)
            self._trim()
        finally:
            _, done = self._flushes.pop(0)
            if not done.done():
                done.set_result(None)

    async def _utterance_ended(self, reason: str, end: int) -> None:
        if self.utterance_events:
            await self.emit(
                {"type": "utterance.ended", "reason": reason, "end_sample": end, "at_s": round(end / SAMPLE_RATE, 3)}
            )

    def _slice(self, start: int, end: int) -> np.ndarray:
        return self._audio[start - self._audio_start : end - self._audio_start]

    async def _process(self, end: int, flushing: bool = False, last: bool = False) -> None:
        """One step: the detector on the new audio, then the window the policy asks for. ``last``:
        everything up to ``end`` is committed after this step (a flush or the stream's end)."""
        begin = self._processed
        speech = True
        early: tuple[tuple[int, int], asyncio.Task] | None = None
        try:
            if flushing and end - begin < MIN_DETECT_SAMPLES:
                speech = self._speaking  # too short for the detector to call speech: it continues what came before
            elif self.options.detector:
                # Inside an utterance the step is decoded whatever the detector says: start
                # that decode now instead of after the detector's answer.
                if not last and (ahead := self.policy.window_ahead(end)) is not None:
                    early = (ahead, asyncio.create_task(self._transcribe(ahead)))
                speech = await self._retrying("detect", self.backend.detect, self._slice(begin, end).tobytes())
                if speech is None:
                    speech = True  # the detector is unreachable: decode rather than risk dropping speech
            await self._speech_edge(bool(speech), begin, end)
            self.policy.advance(end, bool(speech))
            self._processed = end
            await self._report_lag()
            span = self.policy.window()  # one decode per step; a backlog is worked off step by step
            if span is not None:
                started = early[1] if early is not None and early[0] == span else None
                await self._decode(span, started, last=last and span[1] >= end)
        finally:
            if early is not None and not early[1].done():
                early[1].cancel()  # not the window decoded after all (or the session ended)
        self._trim()

    @property
    def _language(self) -> str | None:
        """The language each window asks for: the client's, else the one the session locked
        on; None: the backend detects it."""
        return self.options.language or self.language_lock.language

    def _transcribe(self, span: tuple[int, int], last: bool = False) -> Coroutine[Any, Any, dict | None]:
        start, end = span
        pcm = self._slice(start, end).tobytes()
        return self._retrying("transcribe", self.backend.transcribe, pcm, self._language, last)

    async def _decode(
        self, span: tuple[int, int], started: Awaitable[dict | None] | None = None, last: bool = False
    ) -> None:
        """Decode ``span`` (or take the answer of its decode ``started`` earlier) and pass the
        policy's update on. ``last``: no later window decodes the end of this one again."""
        start, end = span
        language = self._language
        answer = await (started if started is not None else self._transcribe(span, last))
        if answer is None:  # refused for good: the next window covers this audio again
            self.policy.cancel()
            return
        offset = start / SAMPLE_RATE
        utterance_end = self.policy.utterance_end
        segments = Segment.parse(answer.get("segments") or [], offset)
        if language is None:
            self.language_lock.observe(
                answer.get("language"), answer.get("language_probability"), sum(len(s.words) for s in segments)
            )
        update = self.policy.update(segments, offset)
        await self._send_update(update, end, answer.get("backend"), answer.get("model"))
        if utterance_end is not None and self.policy.utterance_end is None:
            await self._utterance_ended("silence", utterance_end)  # this decode committed the utterance whole

    async def _send_update(
        self, update: Update, decoded_end: int, backend: str | None, model: str | None = None
    ) -> None:
        now = self.clock()
        arrived = self._arrivals.at(decoded_end)
        if arrived is not None and update.partial:
            metrics.SESSION_PARTIAL_SECONDS.observe(max(0.0, now - arrived))
        for word in update.committed:
            heard = self._arrivals.at(round(word.end * SAMPLE_RATE))
            if heard is not None:
                metrics.SESSION_COMMIT_SECONDS.observe(max(0.0, now - heard))
        if update.committed:
            await self.emit(
                {
                    "type": "transcript.committed",
                    "text": join_words(update.committed),
                    "words": [_word(w) for w in update.committed],
                    "forced": update.forced,
                    "settled_sample": self.policy.settled,
                    "keep_from_sample": self.policy.keep_from,
                    "backend": backend,
                    "model": model,
                }
            )
        await self.emit(
            {
                "type": "transcript.partial",
                "text": join_words(update.partial),
                "words": [_word(w) for w in update.partial],
                "decoded_until_sample": decoded_end,
            }
        )

    async def _end(self) -> None:
        update = self.policy.finish()
        if update.committed:
            await self._send_update(update, self._received, None)
        if self._speaking:
            self._speaking = False
            await self.emit({"type": "speech.stopped", "at_s": round(self._received / SAMPLE_RATE, 3)})
        await self._utterance_ended("finish", self._received)
        await self.emit(
            {
                "type": "session.ended",
                "text": self.policy.committed_text,
                "audio_s": round((self._received - self.options.resume_from) / SAMPLE_RATE, 3),
                "settled_sample": self._received,
            }
        )

    async def _speech_edge(self, speech: bool, begin: int, end: int) -> None:
        if speech != self._speaking:
            self._speaking = speech
            kind = "speech.started" if speech else "speech.stopped"
            await self.emit({"type": kind, "at_s": round(begin / SAMPLE_RATE, 3)})

    async def _report_lag(self) -> None:
        lag = (self._received - self._processed) / SAMPLE_RATE
        self.last_lag_s = lag
        metrics.SESSION_LAG_SECONDS.observe(lag)
        if lag >= self.limits.lag_event_s:
            await self.emit(
                {
                    "type": "session.lag",
                    "lag_s": round(lag, 3),
                    "received_s": round(self._received / SAMPLE_RATE, 3),
                    "processed_s": round(self._processed / SAMPLE_RATE, 3),
                }
            )

    def _trim(self) -> None:
        keep = min(self.policy.keep_from, self._processed)
        drop = keep - self._audio_start
        if drop > 0:
            self._audio = self._audio[drop:]
            self._audio_start = keep
            self._arrivals.forget_before(keep)

    async def _retrying(self, what: str, call, *args):
        """Call the backend until it answers. Busy or unreachable (429, 5xx): wait and retry,
        while new audio keeps arriving and the client is told its lag. Refused (other 4xx):
        tell the client and return None."""
        attempt = 0
        while True:
            try:
                return await call(*args)
            except ApiError as exc:
                if exc.status in (429, 502, 503, 504):
                    if what == "detect" and exc.status != 429:
                        return None
                    hint = _retry_after(exc)
                    delay = min(self.limits.retry_max_s, self.limits.retry_first_s * 2**attempt)
                    delay = max(delay, hint or 0.0) * random.uniform(0.8, 1.2)
                    if attempt == 0:
                        await self.emit(_error(exc, retryable=True))
                    attempt += 1
                    await self._report_lag()
                    await asyncio.sleep(delay)
                    continue
                await self.emit(_error(exc, retryable=False))
                return None


def _retry_after(exc: ApiError) -> float | None:
    value = (exc.headers or {}).get("Retry-After")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _error(exc: ApiError, retryable: bool) -> dict:
    return {"type": "error", "code": exc.code, "message": exc.message, "retryable": retryable}


def _word(word: Word) -> dict:
    return {
        "start": round(word.start, 3),
        "end": round(word.end, 3),
        "text": word.text,
        "probability": round(word.probability, 3),
    }
