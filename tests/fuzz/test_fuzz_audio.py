"""Fuzzing ``decode_audio`` and the checks in front of it (no models, no processes).

The invariant for any bytes under any declared type: ``decode_audio`` returns 16 kHz mono
float32 samples within the limits, or raises :class:`AudioError` with a 4xx status and a message
that says what to send — never another exception (a 500), never past the per-call bound (a
hang), never with a file descriptor left open (a leak), and never with FFmpeg opened on any
demuxer but the accepted ones, or without :data:`FFMPEG_GUARD` (the guard is what stops nested
file and socket opens; test_untrusted_audio.py proves that it does, here every open is checked
to carry it).

Budget and profiles: tests/fuzz/harness.py. Seeds and mutations: tests/fuzz/seeds.py.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from core.audio import (
    DECLARED_FORMATS,
    DEMUXERS,
    SAMPLE_RATE,
    UNDECLARED_TYPES,
    AudioError,
    AudioLimits,
    _check_wav_complete,
    check_declared_type,
    decode_audio,
    parse_content_type,
    sniff_format,
)
from tests.fuzz.harness import FuzzRun, OpenLog, check_decode, fuzz_settings
from tests.fuzz.seeds import CONTENT_TYPES, audio_bytes, content_types, malformed_files, mutated, valid_files
from tests.services.test_audio import wav

# Averaging the channels of a float WAV holding +inf and -inf makes NaN (then replaced) and
# numpy warns about it: expected for such input, not a finding.
INF_MEAN = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
LIMITS = [AudioLimits(max_seconds=0.1), AudioLimits(max_seconds=1.0), AudioLimits(max_seconds=30.0)]
# Streaming writers leave the data size at 0 or 0xFFFFFFFF: such a WAV cut short is still whole.
SIZED_WAVS = sorted(name for name in valid_files() if name.startswith("wav") and "streaming" not in name)


@INF_MEAN
@pytest.mark.parametrize("label", [None, "declared", "audio/mpeg", "audio/pcm;rate=16000"])
def test_every_seed_keeps_the_invariant(fuzz: FuzzRun, ffmpeg_opens: OpenLog, label: str | None) -> None:
    """The corpus itself, unmutated, under the labels that steer decoding differently."""
    declared = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg"}
    for name, data in {**valid_files(), **malformed_files()}.items():
        if fuzz.live():
            content_type = declared.get(name.split()[0], "video/webm") if label == "declared" else label
            check_decode(fuzz, ffmpeg_opens, data, content_type, LIMITS[2])


@INF_MEAN
def test_decode_audio_answers_audio_or_a_4xx(fuzz: FuzzRun, ffmpeg_opens: OpenLog) -> None:
    @fuzz_settings(ci_examples=500)
    @given(data=audio_bytes(), content_type=content_types(), limits=st.sampled_from(LIMITS))
    @example(data=malformed_files()["wav float nan inf"], content_type="audio/wav", limits=LIMITS[2])
    def prop(data: bytes, content_type: str | None, limits: AudioLimits) -> None:
        if fuzz.live():
            check_decode(fuzz, ffmpeg_opens, data, content_type, limits)

    fuzz.run(prop)


def test_a_cut_off_wav_is_reported_not_transcribed(fuzz: FuzzRun, ffmpeg_opens: OpenLog) -> None:
    """Any strict prefix of a WAV that declares its size is refused, and says why."""

    @fuzz_settings(ci_examples=100)
    @given(
        name=st.sampled_from(SIZED_WAVS),
        cut=st.floats(0, 1, exclude_max=True),
        label=st.sampled_from([None, "audio/wav"]),
    )
    def prop(name: str, cut: float, label: str | None) -> None:
        if not fuzz.live():
            return
        whole = valid_files()[name]
        data = whole[: int(cut * len(whole))]
        answer = check_decode(fuzz, ffmpeg_opens, data, label, LIMITS[2])
        expected = "empty_audio" if not data else "not_audio" if len(data) < 4 else "truncated_audio"
        assert isinstance(answer, AudioError), f"{len(data)} of {len(whole)} bytes decoded"
        assert answer.code == expected, (len(data), answer.code)

    fuzz.run(prop)


def test_wav_completeness_check_is_total_and_linear(fuzz: FuzzRun) -> None:
    """``_check_wav_complete`` walks chunk sizes taken from the bytes: it must end quickly on
    any of them (each step moves at least 8 bytes) and only ever refuse with 400."""
    wavs = {name: data for name, data in {**valid_files(), **malformed_files()}.items() if b"WAVE" in data[:12]}

    @fuzz_settings(ci_examples=300, batch=1_000)
    @given(data=st.one_of(mutated(wavs, max_ops=8), st.binary(max_size=256).map(lambda b: b"RIFF\0\0\0\0WAVE" + b)))
    def prop(data: bytes) -> None:
        if not fuzz.live():
            return
        with fuzz.bounded(0.5):
            try:
                _check_wav_complete(data)
            except AudioError as err:
                assert (err.status, err.code) == (400, "truncated_audio")

    fuzz.run(prop)


def test_sniff_format_reads_only_the_signature(fuzz: FuzzRun) -> None:
    """Any bytes name one accepted demuxer or none, from the first 12 bytes (plus an ID3 tag's
    length): what follows cannot change the choice."""
    pool = {**valid_files(), **malformed_files()}

    @fuzz_settings(ci_examples=300, batch=1_000)
    @given(data=st.one_of(mutated(pool), st.binary(max_size=64)), tail=st.binary(max_size=64))
    def prop(data: bytes, tail: bytes) -> None:
        if not fuzz.live():
            return
        with fuzz.bounded(0.5):
            found = sniff_format(data)
        assert found is None or found in DEMUXERS
        if len(data) >= 12 and data[:3] != b"ID3":
            assert sniff_format(data[:12] + tail) == found

    fuzz.run(prop)


def test_declared_types_are_sorted_before_any_decoding(fuzz: FuzzRun) -> None:
    """Any Content-Type string parses; ``text/*``, ``image/*``, JSON, ... are refused with 415
    and a bounded message (a 10 kB type is not echoed back), any ``audio/*`` passes on."""
    junk = st.text(max_size=200)

    @fuzz_settings(ci_examples=300, batch=2_000)
    @given(
        content_type=st.one_of(
            st.none(),
            junk,
            st.sampled_from(CONTENT_TYPES),
            st.builds(
                lambda major, rest: f"{major}/{rest}", st.sampled_from(["audio", "AUDIO", "text", "image"]), junk
            ),
        )
    )
    def prop(content_type: str | None) -> None:
        if not fuzz.live():
            return
        with fuzz.bounded(0.5):
            media_type, params = parse_content_type(content_type)
        assert media_type == media_type.lower() and all(isinstance(v, str) for v in params.values())
        try:
            with fuzz.bounded(0.5):
                check_declared_type(content_type)
        except AudioError as err:
            assert (err.status, err.code) == (415, "unsupported_media_type") and len(err.message) < 1_000
            assert not media_type.startswith("audio/") and media_type not in DECLARED_FORMATS
            assert media_type not in UNDECLARED_TYPES
        else:
            assert not media_type.startswith(("text/", "image/"))

    fuzz.run(prop)


def test_raw_pcm_is_taken_sample_for_sample(fuzz: FuzzRun, ffmpeg_opens: OpenLog) -> None:
    """Raw s16le at 16 kHz never meets FFmpeg; its samples come back exactly, or a 4xx says why."""

    @fuzz_settings(ci_examples=100)
    @given(pcm=st.binary(max_size=4_000), limits=st.sampled_from(LIMITS))
    def prop(pcm: bytes, limits: AudioLimits) -> None:
        if not fuzz.live():
            return
        answer = check_decode(fuzz, ffmpeg_opens, pcm, "audio/pcm;rate=16000", limits)
        if len(pcm) / 2 > limits.max_seconds * SAMPLE_RATE:
            assert isinstance(answer, AudioError) and answer.code == "audio_too_long"
        elif not pcm or len(pcm) % 2:
            assert isinstance(answer, AudioError) and answer.code == ("truncated_audio" if pcm else "empty_audio")
        else:
            assert isinstance(answer, np.ndarray), answer
            np.testing.assert_array_equal(answer, np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0)

    fuzz.run(prop)


def test_nan_and_infinity_in_a_float_wav_become_numbers() -> None:
    """Regression, found by this harness: a 32-bit float WAV carrying NaN or infinities decoded
    to samples holding NaN (clipping keeps NaN; resampling smeared each one over its
    neighbours), breaking the documented [-1, 1] for whatever reads the samples next."""
    values = np.array([np.nan, np.inf, -np.inf, 0.5] * 400, "<f4")
    for rate in (16_000, 44_100):
        samples = decode_audio(wav(values, rate, bits=32), "audio/wav", LIMITS[2])
        assert np.isfinite(samples).all() and np.abs(samples).max() <= 1.0
        assert samples.size == pytest.approx(values.size * SAMPLE_RATE / rate, abs=2)


def test_an_absurd_sample_rate_is_refused_before_resampling() -> None:
    """Regression, found by this harness: an 8 KB WAV declaring 453 MHz made FFmpeg's resampler
    spend 4.6 s and 536 MB setting up (the cost grows with the input rate), so a few such
    uploads at once could take a service's memory. Rates above 768 kHz are now refused."""
    start = time.monotonic()
    with pytest.raises(AudioError) as err:
        decode_audio(malformed_files()["wav 453 MHz"], "audio/wav", LIMITS[2])
    assert time.monotonic() - start < 1.0
    assert (err.value.status, err.value.code) == (400, "wrong_sample_rate") and "768000 Hz" in err.value.message
    assert decode_audio(malformed_files()["wav 768 kHz"], "audio/wav", LIMITS[2]).size > 0
