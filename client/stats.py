"""Counters every stage updates and the display and ``--metrics-port`` read.

One plain object rather than prometheus metrics objects threaded through every stage: the
stages stay testable without a registry, and :mod:`client.metrics` exposes the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Why a chunk was given up on (Stats.drop_reasons keys; docs/client.md, "Spilled chunks").
REFUSED = "refused"  # a 4xx other than 429: the service will never accept these bytes
MALFORMED_ANSWER = "malformed_answer"  # a 200 whose body could not be read as a transcription
DAMAGED_SPILL = "damaged_spill"  # its spill file was truncated or unreadable
ABORTED = "aborted"  # second Ctrl-C while it was held in memory or in flight
ERROR = "error"  # any other exception while processing it (a bug: the log has the traceback)


@dataclass
class Stats:
    chunks_captured: int = 0
    chunks_sent: int = 0  # transcription requests that got an answer
    chunks_retried: int = 0  # failed attempts that were tried again
    chunks_dropped: int = 0  # chunks given up on, for the reasons in drop_reasons; must stay 0
    drop_reasons: dict[str, int] = field(default_factory=dict)  # reason -> chunks (see REFUSED etc.)
    chunks_nonspeech: int = 0  # skipped because the detector heard no speech
    detector_unavailable: int = 0  # chunks sent on unchecked because /detect failed
    chunks_resent_with_lead: int = 0  # speech chunks that came back empty and were sent again with 1 s before them
    chunks_held: int = 0  # waiting to be sent (memory + disk)
    chunks_spilled: int = 0  # currently held on disk
    spill_failures: int = 0  # chunks kept in memory because writing them to disk failed (disk full)
    chunks_left_on_disk: int = 0  # unanswered at exit, still on disk: the next run replays them
    chunks_recovered: int = 0  # chunks of an earlier, interrupted run replayed by this one
    chunks_done: int = 0  # answered (or skipped) and handed to the stitcher
    overruns: int = 0  # audio blocks lost by capture
    audio_captured_s: float = 0.0  # end time of the newest captured chunk
    audio_done_s: float = 0.0  # end time of the newest chunk the stitcher has
    audio_sent_s: float = 0.0  # audio seconds sent to /transcribe (decode cost: overlap, context, windows)
    lag_s: float = 0.0  # wall-clock seconds from capturing a chunk to having its words
    backend_down: bool = False  # the last attempt failed; chunks are being held
    last_error: str = ""
    # --transport ws (client/ws_transport.py): audio, not chunks, is held until acknowledged.
    sessions: int = 0  # /v1/stream sessions the proxy started
    reconnects: int = 0  # sessions lost (or never opened) and tried again
    audio_held_s: float = 0.0  # audio kept because the server may ask for it again
    audio_spilled_s: float = 0.0  # ... of it on disk
    seam_duplicates: int = 0  # words a resumed session committed again at the seam (dropped)

    def drop(self, reason: str) -> None:
        """Count one chunk as given up on, and why (never silently: the summary and exit status say)."""
        self.chunks_dropped += 1
        self.drop_reasons[reason] = self.drop_reasons.get(reason, 0) + 1

    def drop_summary(self) -> str:
        """``refused 2, damaged_spill 1`` (most frequent first), or empty when nothing was dropped."""
        return ", ".join(f"{k} {v}" for k, v in sorted(self.drop_reasons.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def behind_s(self) -> float:
        """Seconds of audio captured but not yet transcribed: what 'catching up' means."""
        return max(0.0, self.audio_captured_s - self.audio_done_s)
