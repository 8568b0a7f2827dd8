"""One language per stream: the first confident detection is kept for the rest of it.

A stream whose language the client did not give used to have it detected again on every
window: Whisper guesses from the few seconds it is handed, and a short, noisy or
telephone-band window is sometimes heard as another language; that window then comes back
transliterated or translated, and its words are committed. Plain faster-whisper on a whole file
detects once, from its first 30 s, and so does this project's whole-file endpoint. A stream
cannot wait 30 s, so :class:`LanguageLock` keeps the first detection that is sure enough (a
probability of at least ``min_probability`` on a window that gave at least ``min_words``
words) and asks for that language from then on; until then every window is detected on its
own, as before. The thresholds and what the lock changes are measured in docs/client.md
("One language per stream").

Pure (no I/O), like :mod:`core.commit_policy`: the proxy's streaming sessions and the
client's HTTP transport both use it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LanguageLock:
    """The language to ask Whisper for on a stream's next window (None: let it detect)."""

    min_probability: float = 0.8
    min_words: int = 4
    language: str | None = None  # kept once a detection was sure enough

    def observe(self, language: str | None, probability: float | None, words: int) -> None:
        """Take one window's detection (Whisper's language code and its probability) and the
        number of words that window gave; the first sure one is kept for good."""
        if self.language is not None or not language or probability is None:
            return
        if probability >= self.min_probability and words >= self.min_words:
            self.language = language
