"""The peer's run is compared only when it returned a whole transcript (issue 11: on one machine
its run scored 78 % WER, on this one 69.87 % with 5 completed segments: runs that broke off)."""

from __future__ import annotations

from bench.metrics import normalize
from bench.peer import verdict


def test_a_whole_transcript_is_measured_and_one_that_broke_off_is_not() -> None:
    reference = "press one to mute or unmute yourself four or six to change the volume"
    words = len(normalize(reference).split())
    assert verdict(words, words) == ("measured", None)
    assert verdict(words, words - 2)[0] == "measured"  # a few words missed is a transcript
    status, reason = verdict(words, 3)
    assert status == "incomplete" and f"3 words against {words}" in reason
    assert verdict(0, 0)[0] == "incomplete"  # nothing to compare with either way
