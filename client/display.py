"""The live view on stderr: committed text, partial text, input level, lag, progress.

A live source (microphone, ``--file --realtime``, a pipe on stdin) shows the input level, the
lag and whether the service is catching up. A file read as fast as possible has nothing to lag
behind: it shows how much of it is done and how fast, in audio seconds per wall second.

On a terminal the bottom two lines are redrawn in place (committed text that fills a line
scrolls up above them); anywhere else (a pipe, a log file, CI) it writes plain lines: each
committed line once, and a status line when something changes or every few seconds. The
final transcript never goes here: it goes to stdout.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

from client.api import Word
from client.stats import Stats
from client.stitcher import join_words

DIM, RESET, CLEAR_LINE, UP = "\x1b[2m", "\x1b[0m", "\x1b[2K", "\x1b[1A"
# --transport ws: how far the settled point normally trails the audio (the agreement window of
# up to 15 s plus a step waits for a second decode); only beyond that is the session behind.
WS_SETTLING_S = 20.0


def meter(dbfs: float, width: int = 10) -> str:
    """A level bar from -60 dBFS (empty) to 0 dBFS (full)."""
    filled = max(0, min(width, round((dbfs + 60) / 60 * width)))
    return "█" * filled + "·" * (width - filled)


def _clock(seconds: float) -> str:
    m, s = divmod(max(0, int(seconds)), 60)
    return f"{m:d}:{s:02d}"


def speed(done_s: float, elapsed_s: float) -> float:
    """Audio seconds done per wall-clock second (0 before any time has passed)."""
    return done_s / elapsed_s if elapsed_s > 0 else 0.0


def progress(done_s: float, total_s: float | None, elapsed_s: float, width: int = 20) -> str:
    """A file read at full speed: ``[########------------]  42% of 2:25 · 7.9x real time · ETA 0:11``.

    Without a known length (``total_s`` None or 0): ``1:01 done · 7.9x real time``.
    """
    rate = f"{speed(done_s, elapsed_s):.1f}x real time"
    if not total_s or total_s <= 0:
        return f"{_clock(done_s)} done · {rate}"
    frac = max(0.0, min(1.0, done_s / total_s))
    filled = round(frac * width)
    eta = "?" if frac <= 0 else _clock(elapsed_s * (1 - frac) / frac)
    return f"[{'#' * filled}{'-' * (width - filled)}] {frac * 100:3.0f}% of {_clock(total_s)} · {rate} · ETA {eta}"


class Display:
    def __init__(
        self,
        stats: Stats,
        stream: TextIO | None = None,
        tty: bool | None = None,
        total_s: float | None = None,
        quiet: bool = False,
        clock: Callable[[], float] = time.monotonic,
        live: bool | None = None,
    ) -> None:
        """``live``: the source comes at real-time pace (show level, lag, catching up); False: a
        file read as fast as possible (show progress and speed; ``total_s`` its length, if known).
        Not given: live unless ``total_s`` is."""
        self.stats = stats
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.total_s = total_s
        self.live = not total_s if live is None else live
        self.quiet = quiet
        self.clock = clock
        self.level = -100.0
        self.partial = ""
        self._line: list[Word] = []  # committed words not yet printed as a full line
        self._line_start: float | None = None
        self._drawn = 0  # status lines currently on screen (tty)
        self._began = clock()
        self._done_s = 0.0  # audio seconds done; ws alternates processed and settled: keep the most
        self._last_plain_status = ""
        self._last_plain_at = 0.0

    def begin(self, total_s: float | None, live: bool) -> None:
        """The source is open (after a replay of an interrupted run's chunks): show it from now on."""
        self.total_s, self.live = total_s, live
        self._began = self.clock()

    def width(self) -> int:
        return max(40, shutil.get_terminal_size((100, 20)).columns - 1)

    def done_s(self) -> float:
        """Audio seconds transcribed so far (never going back)."""
        self._done_s = max(self._done_s, self.stats.audio_done_s)
        return self._done_s

    def elapsed_s(self) -> float:
        return self.clock() - self._began

    def status_line(self) -> str:
        s = self.stats
        parts = []
        if not self.live:  # nothing to lag behind: how far and how fast
            parts.append(progress(self.done_s(), self.total_s, self.elapsed_s()))
        else:
            parts.append(f"in {meter(self.level)} {self.level:5.0f} dB")
            parts.append(f"lag {s.lag_s:4.1f}s")
        if s.sessions or s.reconnects:  # --transport ws: audio is held, not chunks
            if s.backend_down:
                parts.append(f"service unreachable, holding {s.audio_held_s:.0f}s of audio")
            elif self.live and s.behind_s > WS_SETTLING_S:
                parts.append(f"catching up: {s.behind_s:.0f}s behind")
            if s.audio_spilled_s:
                parts.append(f"{s.audio_spilled_s:.0f}s on disk")
        elif s.backend_down:
            parts.append(f"service unreachable, holding {s.chunks_held} chunks ({s.behind_s:.0f}s of audio)")
        elif self.live and (s.behind_s > 6 or s.chunks_held > 2):
            parts.append(f"catching up: {s.behind_s:.0f}s behind, {s.chunks_held} chunks queued")
        if s.chunks_spilled:
            parts.append(f"{s.chunks_spilled} on disk")
        if s.overruns:
            parts.append(f"OVERRUNS {s.overruns}")
        if s.spill_failures:
            parts.append(f"not spilled (disk) {s.spill_failures}")
        if s.chunks_dropped:
            parts.append(
                f"DROPPED {s.chunks_dropped} ({s.drop_summary()})" if s.drop_reasons else f"DROPPED {s.chunks_dropped}"
            )
        return " | ".join(parts)

    def summary(self) -> str:
        """The line printed at the end; for a file it says how fast the run was."""
        s = self.stats
        rate = ""
        if not self.live:
            done, elapsed = self.done_s(), self.elapsed_s()
            rate = f"{done:.1f} s of audio in {elapsed:.1f} s ({speed(done, elapsed):.1f}x real time), "
        extra = ""
        if s.chunks_recovered:
            extra += f", {s.chunks_recovered} recovered from an interrupted run"
        if s.chunks_left_on_disk:
            extra += f", {s.chunks_left_on_disk} left on disk"
        if s.spill_failures:
            extra += f", {s.spill_failures} not spilled (disk)"
        if s.sessions or s.reconnects:
            audio = rate or f"{s.audio_captured_s:.1f} s of audio, "
            dropped = f", {s.chunks_dropped} chunks dropped ({s.drop_summary()})" if s.chunks_dropped else ""
            return (
                f"-- done: {audio}{s.sessions} sessions, {s.reconnects} reconnects, "
                f"{s.audio_sent_s:.1f} s sent, {s.overruns} overruns{dropped}{extra}"
            )
        dropped = (
            f"{s.chunks_dropped} dropped ({s.drop_summary()})" if s.drop_reasons else f"{s.chunks_dropped} dropped"
        )
        return (
            f"-- done: {rate}{s.chunks_captured} chunks, {s.chunks_sent} transcribed, "
            f"{s.chunks_nonspeech} without speech, {s.chunks_retried} retries, "
            f"{dropped}, {s.overruns} overruns{extra}"
        )

    def commit(self, words: list[Word]) -> None:
        for word in words:
            if self._line_start is None:
                self._line_start = word.start
            self._line.append(word)
            if len(join_words(self._line)) > self.width() - 12 or word.text.strip().endswith((".", "?", "!")):
                self._emit_line()

    def note(self, text: str) -> None:
        """A one-off message (a lost connection, a reconnect) between the committed lines."""
        if self.quiet:
            return
        self._clear()
        self.stream.write(f"-- {text}\n")
        self._draw()
        self.stream.flush()

    def _emit_line(self) -> None:
        if not self._line:
            return
        text = f"[{_clock(self._line_start or 0)}] {join_words(self._line)}"
        self._line, self._line_start = [], None
        if self.quiet:
            return
        self._clear()
        self.stream.write(text + "\n")
        self._draw()

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.stream.write(("\r" + CLEAR_LINE + UP) * (self._drawn - 1) + "\r" + CLEAR_LINE)
            self._drawn = 0

    def _draw(self) -> None:
        if not self.tty:
            return
        width = self.width()
        text = join_words(self._line)
        tail = (text + " " if text else "") + self.partial
        if len(tail) > width - 2:
            cut = len(tail) - (width - 3)
            text, partial = ("…" + text[cut:] if cut < len(text) else ""), self.partial[max(0, cut - len(text)) :]
        else:
            partial = self.partial
        self.stream.write(f"{text} {DIM}{partial}{RESET}\n{self.status_line()[:width]}")
        self._drawn = 2
        self.stream.flush()

    def refresh(self) -> None:
        """Redraw (tty) or, on a plain stream, print the status when it changed or every 5 s."""
        if self.quiet:
            return
        if self.tty:
            self._clear()
            self._draw()
            return
        line = self.status_line()
        now = self.clock()
        important = ("unreachable" in line) != ("unreachable" in self._last_plain_status)
        if important or now - self._last_plain_at >= 5.0:
            self.stream.write(f"-- {line}\n")
            self.stream.flush()
            self._last_plain_status, self._last_plain_at = line, now

    def close(self) -> None:
        self._emit_line()
        if not self.quiet:
            self._clear()
            self.stream.write(self.summary() + "\n")
            self.stream.flush()
