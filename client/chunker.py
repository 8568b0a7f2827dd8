"""Cut a continuous 16 kHz stream into fixed-length overlapping chunks with absolute times.

Whisper needs a few seconds of context to recognise words, and the services cost about the
same per request whatever the length up to 30 s, so the client sends short windows (3 s by
default) that overlap: a word cut in half at one chunk's edge is whole in its neighbour, and
the stitcher (:mod:`client.stitcher`) picks the copy that is away from the edge.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from core.vocabulary import SAMPLE_RATE

LEAD_S = 1.0


@dataclass
class Chunk:
    """One window of audio; ``start`` is seconds from the beginning of the stream."""

    index: int
    start: float
    samples: np.ndarray
    captured_at: float = 0.0  # monotonic clock when the chunk's last sample arrived (for lag)
    final: bool = False  # the stream ended with this chunk
    meta: dict = field(default_factory=dict)
    # Audio just before ``start`` (up to max(LEAD_S, context_s)): sent as left context, and again
    # (LEAD_S of it) when the chunk alone came back empty.
    lead: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    @property
    def duration(self) -> float:
        return self.samples.size / SAMPLE_RATE

    @property
    def end(self) -> float:
        return self.start + self.duration

    def with_lead(self, seconds: float | None = None) -> tuple[np.ndarray, float]:
        """The chunk's audio with up to ``seconds`` of its lead-in before it (None: all of it),
        and the stream time where that audio begins (the offset its word times count from)."""
        lead = self.lead if seconds is None else self.lead[max(0, self.lead.size - round(seconds * SAMPLE_RATE)) :]
        return np.concatenate([lead, self.samples]), self.start - lead.size / SAMPLE_RATE


class Chunker:
    """Accumulate samples and emit ``chunk_s``-long windows every ``chunk_s - overlap_s`` seconds.

    Positions are kept in samples (integers) so that start times never drift, however long
    the stream runs.
    """

    def __init__(
        self, chunk_s: float = 3.0, overlap_s: float = 1.0, min_tail_s: float = 0.3, context_s: float = 0.0
    ) -> None:
        if chunk_s <= 0:
            raise ValueError("chunk length must be positive")
        if not 0 <= overlap_s < chunk_s:
            raise ValueError(f"overlap must be at least 0 and shorter than the chunk ({chunk_s} s), got {overlap_s}")
        if not 0 <= context_s <= chunk_s:
            raise ValueError(f"context must be at least 0 and at most the chunk length ({chunk_s} s), got {context_s}")
        self.chunk_len = round(chunk_s * SAMPLE_RATE)
        self.lead_len = round(max(LEAD_S, context_s) * SAMPLE_RATE)
        self.step = self.chunk_len - round(overlap_s * SAMPLE_RATE)
        self.min_tail = round(min_tail_s * SAMPLE_RATE)
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0  # absolute sample index of _buffer[0]
        self._next_start = 0  # absolute sample index where the next chunk begins
        self._emitted_end = 0  # absolute sample index of the end of the last chunk emitted
        self._index = 0

    @property
    def samples_seen(self) -> int:
        return self._buffer_start + self._buffer.size

    def feed(self, samples: np.ndarray, now: float = 0.0) -> Iterator[Chunk]:
        """Add samples; yield every chunk that is now complete."""
        if samples.size:
            self._buffer = np.concatenate([self._buffer, samples.astype(np.float32, copy=False)])
        while self.samples_seen - self._next_start >= self.chunk_len:
            yield self._emit(self._next_start, self._next_start + self.chunk_len, now, final=False)
            self._next_start += self.step
            self._trim()

    def flush(self, now: float = 0.0) -> Iterator[Chunk]:
        """At the end of the stream, emit one last chunk covering whatever no chunk has covered.

        The last chunk is extended backwards to full length when the stream allows it: a
        0.4 s scrap alone transcribes badly, while 3 s ending at the same place carries
        context, and the stitcher handles any amount of overlap.
        """
        end = self.samples_seen
        if end - self._emitted_end < self.min_tail and self._index > 0:
            return
        if end <= self._emitted_end:
            return
        start = max(self._buffer_start, end - self.chunk_len, 0)
        start = min(start, self._next_start)
        yield self._emit(start, end, now, final=True)

    def _emit(self, start: int, end: int, now: float, final: bool) -> Chunk:
        lo, hi = start - self._buffer_start, end - self._buffer_start
        lead = self._buffer[max(0, lo - self.lead_len) : lo].copy()
        chunk = Chunk(
            self._index, start / SAMPLE_RATE, self._buffer[lo:hi].copy(), captured_at=now, final=final, lead=lead
        )
        self._index += 1
        self._emitted_end = end
        return chunk

    def _trim(self) -> None:
        # Keep one chunk length of history so that flush() can extend the last chunk backwards
        # (and its lead-in, for the context sent before it).
        keep_from = max(self._buffer_start, self._next_start - self.chunk_len - self.lead_len)
        drop = keep_from - self._buffer_start
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._buffer_start = keep_from
