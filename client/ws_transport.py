"""``--transport ws``: stream the source over the proxy's WebSocket ``/v1/stream``, surviving drops.

The proxy runs the commit policy itself (:mod:`services.proxy.sessions`): the client only
sends 16 kHz s16le PCM and shows what comes back. What the client must do is not lose audio
when the connection does (a proxy pod killed, a network error, close 1011/1013/1001):

- every captured sample is kept in an :class:`AudioLog` until the server has said it will
  never need it. Each ``transcript.committed`` event carries ``keep_from_sample`` (later
  windows start no earlier) and ``settled_sample`` (words before it are final and were sent):
  the log releases audio before the smaller of the two;
- after a drop the client reconnects (capped exponential backoff with jitter, a server's
  ``retry_after_s`` honoured for that URL, the next ``--url`` tried first) with
  ``resume_from`` = where the kept audio begins and ``committed_until`` = the last settled
  sample, sends the kept audio again and then continues live. The new session treats audio
  before ``committed_until`` as context only, so words are neither lost nor committed twice;
  a word Whisper moves across that sample is caught at the seam (:meth:`WsTransport._seam`);
- capture never waits on the network: a producer task appends the source's blocks to the log,
  and a sender task per connection sends from it. Nothing is ever dropped: about once a second
  (``persist_s``) a worker thread writes the audio captured since into the run's spill directory
  (``--spill-dir``, :class:`client.spill.SpillRun`, as the HTTP path's chunks), and deletes a
  file once the server has acknowledged its audio, so a client killed with ``kill -9`` loses at
  most the last second of capture: the next run replays the rest (:meth:`AudioLog.adopt`,
  ``--recover``, :class:`client.pipeline.Recovery`). The log also holds ``max_in_memory_s`` in
  memory; past that, written audio is read back from its files. A write that fails (disk
  full) keeps the audio in memory instead, with one warning, and capture goes on;
- at most ``max_ahead_s`` of audio is sent beyond the last acknowledged ``keep_from_sample``
  (the proxy ends a session with 1013 past ``STT_SESSION_MAX_BUFFER_S``, 120 s): after a long
  outage the backlog goes out as fast as the session works it off, not all at once. While the
  session hears no speech it acknowledges nothing; held back that way and sent no event for
  ``stall_s``, the client ends the session (``stop``: everything received becomes final) and
  resumes in a new one from where ``session.ended`` says it settled.

Committed words are only ever appended; they feed the same :class:`~client.display.Display`
and :mod:`client.output` writers as the HTTP pipeline. Stop (Ctrl-C, or the source's end):
the rest of the audio is sent, then ``{"type": "stop"}``, and the client waits for
``session.ended``; after Ctrl-C that wait is bounded by ``finish_timeout_s``. A stream that
ends settled leaves nothing on disk; one that does not (given up, refused for good) writes
what the server has not acknowledged and leaves it for the next run.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from client.api import Word, auth_headers
from client.dispatcher import Backoff
from client.display import Display
from client.sources import Source, level_dbfs
from client.spill import LeftoverRun, SpillRun, default_spill_root, load_segment
from client.stats import Stats
from client.stitcher import join_words
from core.commit_policy import PolicyConfig, word_key
from core.vocabulary import SAMPLE_RATE

log = logging.getLogger(__name__)

FRAME_SAMPLES = SAMPLE_RATE  # at most 1 s per binary frame (32 KB; the proxy takes up to 256 KB)
STREAM_PATH = "/v1/stream"
# Close codes after which the same request will never work: policy (bad options, origin),
# unsupported data, frame too big. Everything else (1001 going away, 1006 lost, 1011 internal,
# 1012 restart, 1013 try again, ...) is a reason to reconnect.
FATAL_CLOSE_CODES = {1003, 1008, 1009}
SEAM_SHIFT_S = 0.5  # a re-heard word this close in time to the last committed one is the same word


class WsFatalError(RuntimeError):
    """The proxy refused the session for a reason reconnecting cannot fix (the message says why)."""


@dataclass
class WsSettings:
    """Session options (sent as query parameters) and the client's own bounds."""

    language: str | None = None
    detector: bool = True
    step_s: float = PolicyConfig.step_s
    window_s: float = PolicyConfig.max_window_s
    context_s: float = PolicyConfig.context_s
    beam_size: int | None = None  # Whisper's beams per window (1: greedy); None: the proxy's default
    max_in_memory_s: float = 192.0  # kept audio also held in memory (6 MB); past it, read back from disk
    spill_dir: Path | None = None  # root of the per-run spill directories (None: default_spill_root())
    persist_s: float = 1.0  # kept audio goes to disk this often: what a kill -9 can lose (docs/client.md)
    source_label: str = ""  # what is being transcribed, recorded with the spilled audio for a later replay
    max_ahead_s: float = 90.0  # audio sent beyond the last acknowledged keep_from (proxy's bound: 120 s)
    stall_s: float = 15.0  # held back by max_ahead_s and no event for this long: end the session, resume
    finish_timeout_s: float = 30.0  # after Ctrl-C: give up on the rest after this long
    open_timeout_s: float = 10.0
    ping_s: float = 10.0  # keepalive: a silent network partition is noticed within ~2x this
    healthy_s: float = 10.0  # a session that lasted this long resets the backoff
    backoff: Backoff = field(default_factory=Backoff)

    def query(self, resume_from: int, committed_until: int | None) -> dict[str, str]:
        q = {
            "detector": "true" if self.detector else "false",
            "step_s": f"{self.step_s:g}",
            "window_s": f"{self.window_s:g}",
            "context_s": f"{self.context_s:g}",
            "resume_from": str(resume_from),
        }
        if self.beam_size is not None:
            q["beam_size"] = str(self.beam_size)
        if self.language:
            q["language"] = self.language
        if committed_until is not None:
            q["committed_until"] = str(committed_until)
        return q


def stream_url(url: str) -> str:
    """``http://host:5001`` (what ``--url`` takes for both transports) → ``ws://host:5001/v1/stream``."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"not an http(s):// or ws(s):// URL: {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(STREAM_PATH):
        path += STREAM_PATH
    return urlunsplit((scheme, parts.netloc, path, "", ""))


# ---------------------------------------------------------------------------------------------
# Kept audio


SEGMENT_MAX = 10 * SAMPLE_RATE  # samples per segment file at most (a file read at full speed is cut up)
PERSIST_RETRY_MAX_S = 30.0  # after failed writes, new audio is tried again at most this far apart


@dataclass
class _Segment:
    """Kept audio already in a segment file (``path``), also in memory (``data``) unless evicted.
    ``path`` None too: silence standing for a gap in an interrupted run's files (replay only)."""

    start: int  # stream sample of its first sample
    size: int
    data: np.ndarray | None
    path: Path | None
    offset: int = 0  # index in the file of the sample at ``start`` (after a partial release)

    @property
    def end(self) -> int:
        return self.start + self.size


class AudioLog:
    """Stream samples ``start`` … ``end`` (int16) not yet released, oldest first, and on disk.

    The server may ask for any of it again after a reconnect, so it is kept until released
    (:meth:`release`, driven by the server's acknowledgements). It is also the only copy of
    that audio if the client is killed, so :meth:`persist` (called about once a second, and at
    the end) writes what was appended since as *segment* files into the run's spill directory
    (:class:`client.spill.SpillRun`: the same directories, atomic writes, locks and replay as
    the HTTP path's chunks), deletes the files of released audio and records ``settled`` (the
    sample before which the run's words were committed), so that the next run replays exactly
    the unacknowledged audio (:meth:`adopt`).

    Why segments (one ``.npy`` per batch, named by its first sample) rather than one append-only
    file with an index: releasing audio is deleting files, and every file on disk is complete
    (written to a temporary name, fsynced, renamed), so no index can disagree with the data
    after a kill. Why batches: one fsynced file per second costs one small write per second,
    where one per 100 ms block would be ten; a kill loses at most the audio appended since the
    last batch, i.e. about the last second of capture (plus a batch being written).

    Capture never waits on the disk: :meth:`append` only touches memory, and :meth:`persist`
    writes in a worker thread. Up to ``max_in_memory`` samples also stay in memory; past that,
    written segments are dropped from memory and read back from their files when resent (an
    outage of an hour is 115 MB of 16 kHz s16le). A failed write (disk full) keeps the audio in
    memory and tells ``on_spill_failure``; it is tried again later, backing off.
    """

    def __init__(
        self,
        max_in_memory: int,
        store: SpillRun | None = None,
        on_spill_failure: Callable[[OSError], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``store``: where segments go (None: memory only). ``on_spill_failure``: told each time a write fails."""
        self.max_in_memory = max_in_memory
        self.store = store
        self.on_spill_failure = on_spill_failure
        self.clock = clock
        self.spill_failures = 0  # batches that could not be written (their audio stayed in memory)
        self.spill_writes = 0  # segment files written
        self.damaged: list[str] = []  # segment files that could not be read (silence was used instead)
        self.start = 0
        self.end = 0
        self.in_memory = 0
        self.settled = 0  # words before this sample are committed (recorded with the segments)
        self._segments: list[_Segment] = []  # [start, _pending_start), contiguous
        self._pending: deque[np.ndarray] = deque()  # [_pending_start, end): not written yet
        self._pending_start = 0
        self._released: list[Path] = []  # files of released audio, deleted by the next persist()
        self._state_written: int | None = None
        self._inflight: asyncio.Task | None = None
        self._retry_at = 0.0
        self._failures_in_row = 0

    @classmethod
    def adopt(cls, run: LeftoverRun, max_in_memory: int) -> AudioLog:
        """The segments an interrupted run left (its lock held by ``run``), as a log to resend:
        released audio deletes their files as in the run that wrote them. A file that cannot be
        read is removed and listed in ``damaged``; gaps (audio that never reached the disk) are
        silence, so the times stay those of the interrupted stream."""
        out = cls(max_in_memory, SpillRun.existing(run.path))
        pos: int | None = None
        for segment in run.segments:
            try:
                size = load_segment(segment.path).size
            except (OSError, ValueError) as exc:
                log.warning("spill file %s cannot be read (%s) and was removed", segment.path, exc)
                out.damaged.append(segment.path.name)
                with contextlib.suppress(OSError):
                    segment.path.unlink()
                continue
            if pos is None:
                pos = out.start = segment.start
            skip = max(0, pos - segment.start)  # overlaps an earlier file: never written so, but be safe
            if skip >= size:
                out._released.append(segment.path)
                continue
            if segment.start > pos:
                out._segments.append(_Segment(pos, segment.start - pos, None, None))
                pos = segment.start
            out._segments.append(_Segment(pos, size - skip, None, segment.path, skip))
            pos += size - skip
        out.end = out._pending_start = pos if pos is not None else 0
        out.settled = out._state_written = run.settled or 0
        return out

    def __len__(self) -> int:
        return self.end - self.start

    @property
    def spilled(self) -> int:
        """Samples currently only on disk."""
        return len(self) - self.in_memory

    def append(self, samples: np.ndarray) -> None:
        samples = np.ascontiguousarray(samples, dtype=np.int16)
        if not samples.size:
            return
        self._pending.append(samples)
        self.in_memory += samples.size
        self.end += samples.size

    def read(self, begin: int, stop: int) -> np.ndarray:
        """Samples ``begin`` … ``stop``; they must not have been released."""
        if begin < self.start or stop > self.end or begin > stop:
            raise ValueError(f"samples {begin}..{stop} are not held (held: {self.start}..{self.end})")
        out = []
        first = max(0, bisect.bisect_right(self._segments, begin, key=lambda s: s.start) - 1)
        for segment in self._segments[first:]:
            if segment.start >= stop:
                break
            if segment.end <= begin:
                continue
            lo, hi = max(begin, segment.start) - segment.start, min(stop, segment.end) - segment.start
            out.append(self._segment_samples(segment, lo, hi))
        pos = self._pending_start
        for block in self._pending if stop > pos else ():
            if pos + block.size > begin:
                out.append(block[max(begin, pos) - pos : min(stop, pos + block.size) - pos])
            pos += block.size
            if pos >= stop:
                break
        return np.concatenate(out) if out else np.zeros(0, np.int16)

    def _segment_samples(self, segment: _Segment, lo: int, hi: int) -> np.ndarray:
        if segment.data is not None:
            return segment.data[lo:hi]
        if segment.path is not None:
            try:
                part = np.array(load_segment(segment.path)[segment.offset + lo : segment.offset + hi])
                if part.size == hi - lo:
                    return part
                raise ValueError(f"{part.size} samples where {hi - lo} were written")
            except (OSError, ValueError) as exc:  # removed or damaged under us: say so, never stop
                if segment.path.name not in self.damaged:
                    self.damaged.append(segment.path.name)
                    log.warning("spill file %s cannot be read (%s); sending silence instead", segment.path, exc)
        return np.zeros(hi - lo, np.int16)

    def release(self, before: int, settled: int | None = None) -> None:
        """The server will never ask for samples before ``before`` again; its words are
        committed up to ``settled``."""
        if settled is not None:
            self.settled = max(self.settled, settled)
        before = min(before, self.end)
        if before <= self.start:
            return
        while self._segments and self._segments[0].start < before:
            segment = self._segments[0]
            if segment.end <= before:
                self._segments.pop(0)
                if segment.data is not None:
                    self.in_memory -= segment.size
                if segment.path is not None:
                    self._released.append(segment.path)
                continue
            cut = before - segment.start
            if segment.data is not None:
                segment.data = segment.data[cut:]
                self.in_memory -= cut
            segment.start, segment.size, segment.offset = before, segment.size - cut, segment.offset + cut
        self._drop_pending(before)
        self.start = before

    def _drop_pending(self, until: int) -> None:
        while self._pending and self._pending_start < until:
            block = self._pending[0]
            n = min(block.size, until - self._pending_start)
            if n == block.size:
                self._pending.popleft()
            else:
                self._pending[0] = block[n:]
            self._pending_start += n
            self.in_memory -= n
        self._pending_start = max(self._pending_start, until)

    async def persist(self, force: bool = False) -> None:
        """One batch, in a worker thread: what was appended since the last one, as segment files
        of at most :data:`SEGMENT_MAX`; the files of released audio deleted; ``settled``
        recorded. After a failed write new audio is not tried again for a while (1 s doubling
        to :data:`PERSIST_RETRY_MAX_S`) unless ``force``."""
        await self._wait_inflight()
        if self.store is None:
            return
        batches: list[tuple[int, np.ndarray]] = []
        if self._pending and (force or self.clock() >= self._retry_at):
            data = np.concatenate(list(self._pending))
            batches = [(self._pending_start + i, data[i : i + SEGMENT_MAX]) for i in range(0, data.size, SEGMENT_MAX)]
        state = {"settled_sample": self.settled} if self.settled != self._state_written else None
        deletions, self._released = self._released, []
        if not batches and not deletions and state is None:
            return
        task = asyncio.create_task(asyncio.to_thread(_persist_io, self.store, batches, deletions, state))
        self._inflight = task
        # Applied by a callback, not after the await: a caller cancelled meanwhile (the end of
        # the run) must not leave a written file the log does not know about.
        task.add_done_callback(lambda t: self._persisted(t, batches, state))
        await self._wait_inflight()

    async def _wait_inflight(self) -> None:
        while (task := self._inflight) is not None:
            with contextlib.suppress(Exception):  # logged by _persisted
                await asyncio.shield(task)
            if self._inflight is task:  # done, its callback scheduled but not run yet: let it run
                await asyncio.sleep(0)

    def _persisted(self, task: asyncio.Task, batches: list[tuple[int, np.ndarray]], state: dict | None) -> None:
        self._inflight = None
        if task.cancelled():
            return
        if task.exception() is not None:
            log.error("writing held audio to disk failed", exc_info=task.exception())
            return
        state_written, written, error = task.result()
        if state_written and state is not None:
            self._state_written = state["settled_sample"]
        for (start, samples), path in zip(batches, written, strict=False):
            self.spill_writes += 1
            end = start + samples.size
            if end <= self._pending_start:  # released while it was being written
                self._released.append(path)
                continue
            lo = max(start, self._pending_start)
            self._drop_pending(end)
            self._segments.append(_Segment(lo, end - lo, samples[lo - start :], path, lo - start))
            self.in_memory += end - lo
        if error is not None:
            self.spill_failures += 1
            self._failures_in_row += 1
            self._retry_at = self.clock() + min(PERSIST_RETRY_MAX_S, 2.0 ** (self._failures_in_row - 1))
            if self.on_spill_failure is not None:
                self.on_spill_failure(error)
        elif written:
            self._failures_in_row = 0
        excess = self.in_memory - self.max_in_memory
        for segment in reversed(self._segments):  # the newest go first: the oldest are resent first
            if excess <= 0:
                break
            if segment.data is not None and segment.path is not None:
                segment.data = None
                self.in_memory -= segment.size
                excess -= segment.size

    async def aclose(self) -> None:
        """The end: what is still held goes to disk (the next run replays it), the files of
        released audio are deleted. Waits for writes in flight."""
        await self.persist(force=True)
        if self._released:  # released while being written: delete it too
            await self.persist()


def _persist_io(
    store: SpillRun, batches: list[tuple[int, np.ndarray]], deletions: list[Path], state: dict | None
) -> tuple[bool, list[Path], OSError | None]:
    """The disk side of :meth:`AudioLog.persist` (a worker thread): (state written, segment files
    written, the error that stopped the writes)."""
    state_written = False
    if state is not None:
        try:
            state_written = store.write_state(state)
        except OSError as exc:  # costs at most some words committed twice after a replay
            log.debug("could not record the settled sample: %s", exc)
    for path in deletions:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # replayed by the next run as context only (before settled): harmless
            log.warning("could not delete the acknowledged spill file %s: %s", path, exc)
    written: list[Path] = []
    error = None
    for start, samples in batches:
        try:
            written.append(store.write_segment(start, samples))
        except OSError as exc:
            error = exc
            break
    if state is not None and not state_written and written:  # the first segment made the directory
        with contextlib.suppress(OSError):
            state_written = store.write_state(state)
    return state_written, written, error


# ---------------------------------------------------------------------------------------------
# Sessions


@dataclass
class SessionRecord:
    """One connection: where it resumed and how it ended (for the summary, tests and measurements)."""

    url: str
    resume_from: int
    committed_until: int | None
    started_at: float
    session_id: str | None = None
    sent_until: int = 0  # stream sample after the last one sent on this connection
    words: int = 0  # committed words it contributed
    seam_dropped: int = 0  # words it committed again at the seam (dropped here)
    outcome: str = "connecting"  # connect_failed, dropped, rolled_over, finished, gave_up, aborted, fatal
    close_code: int | None = None
    error: str = ""

    # Per-connection state, not part of the record proper.
    stop_sent: bool = False
    final_stop: bool = False  # the stop ended the stream (not a roll-over to a new session)
    last_event_at: float = 0.0
    ended: bool = False
    keep_from: int = 0
    settled: int = 0


class WsTransport:
    """Streams one source through ``/v1/stream`` sessions, one at a time, until it ends."""

    def __init__(
        self,
        source: Source,
        urls: Sequence[str],
        settings: WsSettings | None = None,
        stats: Stats | None = None,
        display: Display | None = None,
        clock: Callable[[], float] = time.monotonic,
        audio: AudioLog | None = None,
    ) -> None:
        """``audio``: an interrupted run's log to send (:meth:`AudioLog.adopt`); its files are
        deleted as it is acknowledged. None: a log of this run's, written to its own spill directory."""
        if not urls:
            raise ValueError("at least one URL is needed")
        self.source = source
        self.urls = [stream_url(u) for u in urls]
        self.settings = settings or WsSettings()
        self.stats = stats or Stats()
        self.display = display
        self.clock = clock
        s = self.settings
        self._spill_run: SpillRun | None = None  # this run's spill directory (None: replaying another's)
        if audio is None:
            meta = {"source": s.source_label, "transport": "ws", "language": s.language}
            self._spill_run = SpillRun(s.spill_dir or default_spill_root(), meta)
            audio = AudioLog(round(s.max_in_memory_s * SAMPLE_RATE), self._spill_run)
        audio.on_spill_failure = self._on_spill_failure
        self.audio = audio
        self._spill_failing = False
        self.committed: list[Word] = []
        self.partial: list[Word] = []
        self.sessions: list[SessionRecord] = []
        self.max_ahead = round(s.max_ahead_s * SAMPLE_RATE)
        self.gave_up = False  # the stream ended without the server confirming every sample
        self.fatal: str | None = None
        self.on_event: Callable[[dict, float], None] | None = None  # measurements: each event, once handled
        # What the last session acknowledged (the next one resumes from these); a replayed run's log
        # begins where that run's acknowledgements left it.
        self._keep_from = audio.start
        self._settled = audio.settled
        self._arrivals_end: list[int] = []  # capture time per block end, for commit latency
        self._arrivals_at: list[float] = []
        self._wake = asyncio.Event()  # new audio, an acknowledgement, or stop
        self._source_done = False
        self._stopping = False
        self._next_url = 0
        self._not_before: dict[str, float] = {}
        self._task: asyncio.Task | None = None
        self._give_up_timer: asyncio.TimerHandle | None = None
        self._persist_stop = asyncio.Event()

    # -- control ----------------------------------------------------------------------------

    def stop(self) -> None:
        """First Ctrl-C: stop reading input; send what was captured, then wait (bounded) for the rest."""
        self._stopping = True
        self.source.stop()
        self._wake.set()
        if self._give_up_timer is None:
            loop = asyncio.get_running_loop()
            self._give_up_timer = loop.call_later(self.settings.finish_timeout_s, self._give_up)

    def _give_up(self) -> None:
        if self._task is not None and not self._task.done():
            self.gave_up = True
            self._task.cancel()

    async def abort(self) -> None:
        """Second Ctrl-C: give up on what the server has not committed yet."""
        self.gave_up = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def unacknowledged_s(self) -> float:
        """Captured audio the server has not settled (lost if the stream ended now)."""
        return max(0, self.audio.end - self._settled) / SAMPLE_RATE

    # -- main -------------------------------------------------------------------------------

    async def run(self) -> list[Word]:
        """Stream until the source ends and the server has committed everything (or Ctrl-C)."""
        producer = asyncio.create_task(self._produce(), name="ws-produce")
        refresher = asyncio.create_task(self._refresh(), name="ws-refresh") if self.display else None
        persister = asyncio.create_task(self._persist(), name="ws-persist")
        self._task = asyncio.create_task(self._stream(), name="ws-stream")
        finished = False
        try:
            await self._task
            finished = True
        except asyncio.CancelledError:
            if not self.gave_up:
                raise
        finally:
            if self._give_up_timer is not None:
                self._give_up_timer.cancel()
            producer.cancel()
            if refresher:
                refresher.cancel()
            await asyncio.gather(producer, return_exceptions=True)
            self._persist_stop.set()
            await asyncio.gather(persister, return_exceptions=True)
            if finished:  # session.ended after the last sample: all of it is settled
                self.audio.release(self.audio.end, self.audio.end)
            # Otherwise what the server has not acknowledged goes to disk for the next run.
            await self.audio.aclose()
            if self._spill_run is not None:
                self.stats.chunks_left_on_disk += self._spill_run.release()
            self.stats.overruns = self.source.overruns
            self.stats.backend_down = False
            self._update_held()
            if self.display:
                self.display.partial = ""
        if self.gave_up and self.unacknowledged_s > 0:
            self._note(f"gave up: the last {self.unacknowledged_s:.1f} s of audio were not transcribed")
        return self.committed

    async def _produce(self) -> None:
        """Source → log. Never waits on the network: the log grows (memory, then disk) instead."""
        try:
            async for block in self.source.blocks():
                if self.display:
                    self.display.level = level_dbfs(block.samples)
                if block.offset > self.audio.end:  # a gap the source did not fill: keep times true
                    self.audio.append(np.zeros(block.offset - self.audio.end, np.int16))
                pcm = np.clip(np.round(block.samples * 32767.0), -32768, 32767).astype(np.int16)
                self.audio.append(pcm)
                self._arrivals_end.append(self.audio.end)
                self._arrivals_at.append(self.clock())
                self.stats.audio_captured_s = self.audio.end / SAMPLE_RATE
                self.stats.overruns = self.source.overruns
                self._update_held()
                self._wake.set()
                if self._stopping:
                    break
        finally:
            self._source_done = True
            self._wake.set()

    async def _persist(self) -> None:
        """Every ``persist_s``: the audio captured since goes to disk, acknowledged audio leaves it."""
        while not self._persist_stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._persist_stop.wait(), self.settings.persist_s)
            written = self.audio.spill_writes
            await self.audio.persist()
            if self.audio.spill_writes > written:
                self._spill_failing = False  # the disk takes writes again: warn anew next time
            self._update_held()

    async def _stream(self) -> None:
        attempt = 0
        while True:
            url = self._pick_url()
            delay = self._not_before.get(url, 0.0) - self.clock()
            if attempt:
                delay = max(delay, self.settings.backoff.delay(attempt - 1))
            if delay > 0:
                await asyncio.sleep(delay)
            record = await self._session(url)
            if record.outcome == "finished":
                return
            if record.outcome == "fatal":
                self.fatal = record.error
                self.gave_up = True
                raise WsFatalError(record.error)
            if record.outcome == "rolled_over":
                attempt = 0
                continue  # same URL, at once: the session ended cleanly
            healthy = record.words > 0 or self.clock() - record.started_at >= self.settings.healthy_s
            attempt = 1 if healthy else attempt + 1
            self._next_url = (self.urls.index(url) + 1) % len(self.urls)
            self.stats.reconnects += 1
            self.stats.last_error = record.error
            if not self.stats.backend_down:  # once per outage; the status line says the rest
                kept, final = (x / SAMPLE_RATE for x in (self.audio.start, self._settled))
                self._note(
                    f"connection to {url} {record.outcome.replace('_', ' ')} ({record.error}); reconnecting "
                    f"(audio kept from {kept:.1f} s, words final up to {final:.1f} s)"
                )
            self.stats.backend_down = True

    def _pick_url(self) -> str:
        """The next URL in turn that no retry hint holds back; else the one free soonest."""
        now = self.clock()
        order = self.urls[self._next_url :] + self.urls[: self._next_url]
        free = [u for u in order if self._not_before.get(u, 0.0) <= now]
        if free:
            return free[0]
        return min(order, key=lambda u: self._not_before.get(u, 0.0))

    def _resume_point(self) -> tuple[int, int | None]:
        """(resume_from, committed_until) for the next session, from the last acknowledgement."""
        resume_from = max(self.audio.start, min(self._keep_from, self._settled))
        committed_until = self._settled if self._settled > 0 else None
        return resume_from, committed_until

    async def _session(self, url: str) -> SessionRecord:
        resume_from, committed_until = self._resume_point()
        s = self.settings
        record = SessionRecord(url, resume_from, committed_until, self.clock())
        record.keep_from, record.settled = resume_from, committed_until or 0
        record.sent_until = resume_from
        self.sessions.append(record)
        full = f"{url}?{urlencode(s.query(resume_from, committed_until))}"
        try:
            ws = await connect(
                full,
                open_timeout=s.open_timeout_s,
                ping_interval=s.ping_s,
                ping_timeout=s.ping_s,
                close_timeout=5,
                max_size=4 * 1024 * 1024,
                compression=None,  # PCM does not deflate well and costs CPU on both sides
                additional_headers=auth_headers(),  # STT_API_KEY, as for the HTTP transport
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            record.error = f"HTTP {status} on the upgrade"
            hint = _float(exc.response.headers.get("Retry-After"))
            if hint is not None:
                self._not_before[url] = self.clock() + hint
            fatal = 400 <= status < 500 and status not in (408, 429)
            record.outcome = "fatal" if fatal else "connect_failed"
            if fatal:
                record.error += f": {url} has no streaming endpoint or refuses it (use --transport http?)"
            return record
        except InvalidURI as exc:
            record.outcome, record.error = "fatal", str(exc)
            return record
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            record.outcome, record.error = "connect_failed", f"{type(exc).__name__}: {exc}"
            return record
        record.last_event_at = self.clock()
        sender = asyncio.create_task(self._send(ws, record), name="ws-send")
        sender.add_done_callback(lambda task: _abort_on_failure(task, ws))
        try:
            await self._receive(ws, record)
        except ConnectionClosed as exc:
            close = exc.rcvd
            record.close_code = close.code if close else None
            reason = f"close {close.code} {close.reason!r}" if close else "connection lost without a close frame"
            record.error = f"{reason}; {record.error}" if record.error else reason
            record.outcome = "fatal" if record.close_code in FATAL_CLOSE_CODES else "dropped"
        except TimeoutError:
            record.outcome, record.error = "dropped", f"no event for {self.settings.finish_timeout_s:g} s after stop"
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            if record.outcome in ("finished", "rolled_over"):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 5)
            elif ws.transport is not None:
                ws.transport.abort()
        failure = None if sender.cancelled() else sender.exception()
        if failure is not None and not isinstance(failure, ConnectionClosed):
            raise failure  # a bug here, not a network problem: say so loudly
        return record

    async def _send(self, ws: ClientConnection, record: SessionRecord) -> None:
        """Kept audio from ``resume_from``, then live; ``stop`` once the source has ended."""
        while True:
            self._wake.clear()
            limit = record.keep_from + self.max_ahead
            end = min(self.audio.end, limit)
            if record.sent_until < end:
                n = min(end - record.sent_until, FRAME_SAMPLES)
                frame = self.audio.read(record.sent_until, record.sent_until + n)
                await ws.send(frame.tobytes())
                record.sent_until += n
                self.stats.audio_sent_s += n / SAMPLE_RATE
                continue
            if self._source_done and record.sent_until >= self.audio.end:
                record.stop_sent = record.final_stop = True
                await ws.send(json.dumps({"type": "stop"}))
                return
            timeout = None
            if self.audio.end > limit:  # held back until the server acknowledges more
                quiet = self.clock() - record.last_event_at
                if quiet >= self.settings.stall_s:
                    # ... and it says nothing. While it hears no speech it sends no
                    # acknowledgement, so end this session (all it received becomes final,
                    # session.ended says up to where) and resume from there in a new one.
                    record.stop_sent = True
                    await ws.send(json.dumps({"type": "stop"}))
                    return
                timeout = self.settings.stall_s - quiet
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _receive(self, ws: ClientConnection, record: SessionRecord) -> None:
        """Events until ``session.ended``; raises ConnectionClosed when the connection goes."""
        while True:
            # A server that has been asked to stop must answer; before that, silence is normal
            # (no speech, no events) and keepalive pings notice a dead connection.
            timeout = self.settings.finish_timeout_s if record.stop_sent else None
            message = await asyncio.wait_for(ws.recv(), timeout)
            if isinstance(message, bytes):
                continue
            try:
                event = json.loads(message)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            record.last_event_at = self.clock()
            self._handle(event, record)
            if self.on_event:
                self.on_event(event, record.last_event_at)
            if record.ended:
                record.outcome = "finished" if record.final_stop else "rolled_over"
                return

    # -- events -----------------------------------------------------------------------------

    def _handle(self, event: dict, record: SessionRecord) -> None:
        kind = event.get("type")
        if kind == "session.started":
            record.session_id = event.get("session_id")
            self.stats.sessions += 1
            if self.stats.backend_down:
                self._note(f"resumed on {record.url} from {record.resume_from / SAMPLE_RATE:.1f} s")
            self.stats.backend_down = False
        elif kind == "transcript.committed":
            words = [_word(w) for w in event.get("words") or []]
            self._commit(words, record)
            self._acknowledge(record, event.get("keep_from_sample"), event.get("settled_sample"))
        elif kind == "transcript.partial":
            self.partial = [_word(w) for w in event.get("words") or []]
            if self.display:
                self.display.partial = event.get("text") or join_words(self.partial)
        elif kind == "session.lag":
            self.stats.audio_done_s = float(event.get("processed_s", self.stats.audio_done_s))
        elif kind == "error":
            code, message = event.get("code"), event.get("message", "")
            record.error = f"{code}: {message}"
            hint = _float(event.get("retry_after_s"))
            if hint is not None:
                self._not_before[record.url] = self.clock() + hint
            if code == "too_far_behind":
                # The proxy's bound is below ours: send less ahead from now on.
                ahead = record.sent_until - self._keep_from
                self.max_ahead = max(round(2 * self.settings.step_s * SAMPLE_RATE), min(self.max_ahead, ahead) // 2)
            if not event.get("retryable", False):
                log.warning("the service refused: %s", record.error)
                self.stats.last_error = record.error
        elif kind == "session.ended":
            record.ended = True
            settled = int(event.get("settled_sample", record.settled))
            # Everything received is final now; keep context_s before it for the next session.
            keep = settled - round(self.settings.context_s * SAMPLE_RATE)
            self._acknowledge(record, max(record.keep_from, keep), settled)

    def _commit(self, words: list[Word], record: SessionRecord) -> None:
        if not words:
            return
        if record.committed_until is not None:
            floor = record.committed_until / SAMPLE_RATE
            kept = [w for w in words if w.mid > floor]  # the server should never send these
            if record.words == 0:
                kept = self._seam(kept)
            record.seam_dropped += len(words) - len(kept)
            self.stats.seam_duplicates += len(words) - len(kept)
            words = kept
        if not words:
            return
        record.words += len(words)
        self.committed.extend(words)
        if self.display:
            self.display.commit(words)
        heard = self._captured_at(round(words[-1].end * SAMPLE_RATE))
        if heard is not None:
            self.stats.lag_s = max(0.0, self.clock() - heard)

    def _seam(self, words: list[Word]) -> list[Word]:
        """The first words a resumed session commits, less any it heard again from before the seam.

        The resumed session drops words by time alone (a word's middle before
        ``committed_until``), not knowing their text; Whisper moves a word by a few tenths of a
        second between decodes, so the last committed word can come back just past the seam.
        It is the same word when the text matches and it is within :data:`SEAM_SHIFT_S`.
        """
        if not self.committed:
            return words
        for k in range(min(3, len(self.committed), len(words)), 0, -1):
            tail, head = self.committed[-k:], words[:k]
            if [word_key(w) for w in tail] == [word_key(w) for w in head] and all(
                abs(a.mid - b.mid) <= SEAM_SHIFT_S for a, b in zip(tail, head, strict=True)
            ):
                return words[k:]
        return words

    def _acknowledge(self, record: SessionRecord, keep_from: Any, settled: Any) -> None:
        if keep_from is not None:
            record.keep_from = max(record.keep_from, int(keep_from))
        if settled is not None:
            record.settled = max(record.settled, int(settled))
        # Only this session's numbers count: the next one resumes from them.
        self._keep_from, self._settled = record.keep_from, max(self._settled, record.settled)
        release = min(self._keep_from, self._settled, record.sent_until)
        self.audio.release(release, self._settled)
        i = bisect.bisect_left(self._arrivals_end, release)
        if i > 1:
            del self._arrivals_end[: i - 1], self._arrivals_at[: i - 1]
        self.stats.audio_done_s = self._settled / SAMPLE_RATE
        self._update_held()
        self._wake.set()

    # -- helpers ----------------------------------------------------------------------------

    def _captured_at(self, sample: int) -> float | None:
        i = bisect.bisect_left(self._arrivals_end, sample)
        return self._arrivals_at[i] if i < len(self._arrivals_at) else None

    def _update_held(self) -> None:
        self.stats.audio_held_s = len(self.audio) / SAMPLE_RATE
        self.stats.audio_spilled_s = self.audio.spilled / SAMPLE_RATE

    def _on_spill_failure(self, exc: OSError) -> None:
        """Audio that could not go to disk stays in memory; one warning per episode, all counted."""
        self.stats.spill_failures += 1
        if not self._spill_failing:
            self._spill_failing = True
            self._note(f"cannot spill held audio to disk ({exc}); keeping it in memory, capture goes on")

    def _note(self, text: str) -> None:
        if self.display:
            self.display.note(text)
        else:
            log.warning("%s", text)

    async def _refresh(self) -> None:
        assert self.display is not None
        while True:
            self.display.refresh()
            await asyncio.sleep(0.2)


def _abort_on_failure(task: asyncio.Task, ws: ClientConnection) -> None:
    """A sender that failed (not by the connection closing) ends the connection, so the
    receiver stops waiting and the failure surfaces."""
    if not task.cancelled() and task.exception() is not None and ws.transport is not None:
        ws.transport.abort()


def _word(w: dict) -> Word:
    return Word(float(w["start"]), float(w["end"]), str(w["text"]), float(w.get("probability", 1.0)))


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out >= 0 else None
