"""Fuzzing the demuxer tricks: mutated, they must stay as refused as the originals.

FFmpeg left to guess a format reads some bodies as instructions: an ``ffconcat`` list opens the
files it names, an SDP opens UDP sockets and waits for RTP, HLS and DASH fetch their segments,
``image2`` reads a file pattern, and protocol strings (``file:``, ``concat:``, ``subfile,,...``,
``data:``) name what to open. test_untrusted_audio.py shows the originals refused; here each is
mutated (junk and byte-order marks in front, case, line endings, spacing, UTF-16, embedded
behind, in front of or inside real audio) and sent under every label.

How "FFmpeg opened no file or socket" is checked. FFmpeg opens files in C, where Python's audit
hooks see nothing, and a Python thread sampling ``/proc/self/fd`` only runs when FFmpeg lets go
of the GIL, so neither can prove an open never happened. What is checked instead:

* the cause: every ``av.open`` that ``decode_audio`` makes names an accepted demuxer and carries
  :data:`FFMPEG_GUARD` (no other demuxer, no protocol at all), the guard that
  test_untrusted_audio.py shows refusing exactly these nested opens on the installed FFmpeg;
* the effects an open would have: the planted ``x.wav`` in the working directory is a canary
  (seeded noise, found sample for sample by :func:`contains_canary`), so audio read from it, by
  any path or protocol or inline as ``data:``, would show in the output; a descriptor or socket
  left open shows in ``/proc/self/fd``; and an opened RTP socket waits ~20 s for packets, far
  over the per-call bound of :data:`TRICK_BOUND_S`.

The canary check is itself tested: it fires on the canary decoded, and on what the same decode
path returns when the guard is removed and FFmpeg's concat demuxer opens the planted file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import audio
from core.audio import RAW_PCM_TYPES, AudioError, AudioLimits, decode_audio, parse_content_type
from tests.fuzz.harness import FuzzRun, OpenLog, check_decode, fuzz_settings, new_fds, open_fds
from tests.fuzz.seeds import CANARY_WAV, PLANTED, TRICK_LABELS, Trick, contains_canary, tricks

LIMITS = AudioLimits(max_seconds=30)
# Refusing a trick takes milliseconds; an RTP socket opened for an SDP waits ~20 s.
TRICK_BOUND_S = 3.0


@pytest.fixture
def canary_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding the canary as ``x.wav``, what every trick points at."""
    (tmp_path / PLANTED).write_bytes(CANARY_WAV)
    monkeypatch.chdir(tmp_path)
    return tmp_path / PLANTED


def test_the_canary_shows_when_ffmpeg_reads_the_planted_file(canary_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The positive control: without it a canary check that never fires would pass everything."""
    assert contains_canary(decode_audio(CANARY_WAV, "audio/wav", LIMITS))
    assert not contains_canary(decode_audio(CANARY_WAV[:44] + bytes(len(CANARY_WAV) - 44), "audio/wav", LIMITS))
    # The same decode path, unguarded and allowed the concat demuxer: FFmpeg opens x.wav by name.
    monkeypatch.setattr(audio, "FFMPEG_GUARD", {})
    monkeypatch.setitem(audio.DEMUXERS, "concat", "ffconcat")
    samples = audio._decode_container(f"ffconcat version 1.0\nfile '{PLANTED}'\n".encode(), "concat", LIMITS)
    assert contains_canary(samples)


def test_mutated_tricks_are_never_followed(fuzz: FuzzRun, ffmpeg_opens: OpenLog, canary_cwd: Path) -> None:
    @fuzz_settings(ci_examples=500)
    @given(trick=tricks(), label=st.sampled_from(TRICK_LABELS))
    def prop(trick: Trick, label: str | None) -> None:
        if not fuzz.live():
            return
        body = trick.render(canary_cwd)
        before = open_fds()
        answer = check_decode(fuzz, ffmpeg_opens, body, label, LIMITS, TRICK_BOUND_S)
        raw_pcm = parse_content_type(label)[0] in RAW_PCM_TYPES
        if isinstance(answer, AudioError):
            assert str(canary_cwd.parent) not in answer.message and PLANTED not in answer.message
        else:
            assert not contains_canary(answer), "the planted file was decoded"
            # Text is never audio to a demuxer: only raw PCM (which takes any even-length bytes
            # as samples) or real audio the trick was embedded in decodes.
            assert raw_pcm or not trick.plain_text, "a plain-text trick was decoded"
        sockets = [t for t in new_fds(before, open_fds()).values() if t.startswith("socket:")]
        assert not sockets

    fuzz.run(prop)
