"""A one-line progress bar on stderr: the run takes minutes, and silence looks like a hang."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Work is counted in units (a file, a chunk, a load step); phases add their units as they
    learn them, so the bar is honest about what is left rather than smooth."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.total = max(1, total)
        self.done = 0
        self.phase = ""
        self.detail = ""
        self.stream = stream
        self.width = width
        self.began = time.monotonic()
        self.tty = stream.isatty()
        self._last_line = 0.0
        self.phase_seconds: dict[str, float] = {}  # wall time of each finished phase
        self._phase_began = self.began

    def start(self, phase: str) -> None:
        self._end_phase()
        self.phase, self.detail = phase, ""
        self._draw(force=True)

    def _end_phase(self) -> None:
        now = time.monotonic()
        if self.phase:
            self.phase_seconds[self.phase] = round(now - self._phase_began, 1)
        self._phase_began = now

    def tick(self, detail: str = "", units: int = 1) -> None:
        self.done = min(self.total, self.done + units)
        self.detail = detail or self.detail
        self._draw()

    def note(self, message: str) -> None:
        self._clear()
        self.stream.write(message + "\n")
        self._draw(force=True)

    def close(self) -> None:
        self._end_phase()
        self.done = self.total
        self._draw(force=True)
        self.stream.write("\n")

    def _clear(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.tty and not force and now - self._last_line < 10:
            return  # in a log file, one line every 10 s at most
        self._last_line = now
        filled = int(self.width * self.done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = now - self.began
        line = f"[{bar}] {100 * self.done // self.total:3d}% {elapsed:5.0f}s {self.phase}"
        if self.detail:
            line += f": {self.detail}"
        if self.tty:
            self.stream.write("\r\033[K" + line[:160])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
