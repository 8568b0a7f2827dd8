"""Decoding every accepted format, and a clear 4xx for everything else (fast, no models)."""

from __future__ import annotations

import io
import struct
import subprocess
import sys

import av
import numpy as np
import pytest

from core.audio import AudioError, AudioLimits, decode_audio, to_wav_bytes

LIMITS = AudioLimits(max_seconds=30)
RATE = 16_000


def tone(seconds: float = 1.0, rate: int = RATE, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav(samples: np.ndarray, rate: int, channels: int = 1, bits: int = 16) -> bytes:
    interleaved = np.repeat(samples[:, None], channels, axis=1).reshape(-1)
    if bits == 16:
        data, fmt = (interleaved * 32767).astype("<i2").tobytes(), 1
    elif bits == 24:
        ints = (interleaved * (2**23 - 1)).astype("<i4")
        data, fmt = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints), 1
    else:
        data, fmt = interleaved.astype("<f4").tobytes(), 3
    block = channels * bits // 8
    fmt_chunk = struct.pack("<4sIHHIIHH", b"fmt ", 16, fmt, channels, rate, rate * block, block, bits)
    riff = struct.pack("<4sI4s", b"RIFF", 36 + len(data), b"WAVE")
    return riff + fmt_chunk + struct.pack("<4sI", b"data", len(data)) + data


def encode(samples: np.ndarray, container: str, codec: str, rate: int = 48_000) -> bytes:
    buffer = io.BytesIO()
    resampled = np.interp(np.arange(int(samples.size * rate / RATE)) * RATE / rate, np.arange(samples.size), samples)
    with av.open(buffer, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame_size = 960 if codec == "libopus" else 1152
        for start in range(0, resampled.size, frame_size):
            piece = resampled[start : start + frame_size].astype(np.float32)[None, :]
            fmt = "flt" if codec in ("libopus", "libmp3lame") else "s16"
            data = piece if fmt == "flt" else (piece * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("rate", "channels", "bits"),
    [(16_000, 1, 16), (44_100, 2, 16), (48_000, 1, 24), (22_050, 2, 32), (8_000, 1, 16)],
)
def test_wav_variants_decode_to_16k_mono(rate: int, channels: int, bits: int) -> None:
    samples = decode_audio(wav(tone(1.0, rate), rate, channels, bits), "audio/wav", LIMITS)
    assert abs(samples.size - RATE) <= 200  # one second, resampled
    assert samples.dtype == np.float32
    assert 0.25 < np.abs(samples).max() <= 0.35


@pytest.mark.parametrize(("container", "codec"), [("flac", "flac"), ("mp3", "libmp3lame"), ("ogg", "libopus")])
def test_compressed_formats_decode(container: str, codec: str) -> None:
    samples = decode_audio(encode(tone(1.0), container, codec), None, LIMITS)
    assert 0.8 * RATE < samples.size < 1.2 * RATE
    assert np.abs(samples).max() > 0.2


def test_raw_pcm_needs_16k() -> None:
    pcm = (tone(0.5) * 32767).astype("<i2").tobytes()
    assert decode_audio(pcm, "audio/pcm;rate=16000", LIMITS).size == RATE // 2
    with pytest.raises(AudioError) as err:
        decode_audio(pcm, "audio/pcm; rate=44100", LIMITS)
    assert err.value.status == 400 and err.value.code == "wrong_sample_rate"
    with pytest.raises(AudioError) as err:
        decode_audio(pcm[:-1], "audio/l16", LIMITS)
    assert err.value.code == "truncated_audio"


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"", 400, "empty_audio"),
        (b"this is a text file, not audio at all\n" * 20, 415, "not_audio"),
        (b'{"json": true}', 415, "not_audio"),
        (wav(tone(1.0), RATE)[:3000], 400, "truncated_audio"),
        (wav(tone(1.0), RATE)[:20], 400, "truncated_audio"),
        (wav(np.zeros(0, np.float32), RATE), 400, "empty_audio"),
        (wav(tone(31.0), RATE), 413, "audio_too_long"),
    ],
)
def test_bad_input_is_a_clear_4xx(data: bytes, status: int, code: str) -> None:
    with pytest.raises(AudioError) as err:
        decode_audio(data, "audio/wav", LIMITS)
    assert err.value.status == status
    assert err.value.code == code
    assert len(err.value.message) > 20  # says what to do, not just a code


def test_compressed_bomb_stops_at_the_limit() -> None:
    long_flac = encode(np.zeros(RATE * 40, np.float32), "flac", "flac", rate=16_000)
    assert len(long_flac) < 200_000  # tiny on the wire
    with pytest.raises(AudioError) as err:
        decode_audio(long_flac, "audio/flac", LIMITS)
    assert err.value.status == 413


def test_to_wav_bytes_round_trips() -> None:
    samples = tone(0.25)
    back = decode_audio(to_wav_bytes(samples), "audio/wav", LIMITS)
    assert np.allclose(back, samples, atol=1e-3)


def decode_in_child(data: bytes) -> str:
    """``decode_audio`` in a child process: what it printed (``ok <size> <peak>`` or ``refused
    <status> <code>``), or the test fails with how the child died. A crash in FFmpeg or PyAV
    then fails one test instead of ending the test run."""
    code = (
        "import sys, numpy as np\n"
        "from core.audio import AudioError, AudioLimits, decode_audio\n"
        "try:\n"
        "    s = decode_audio(sys.stdin.buffer.read(), 'audio/wav', AudioLimits(30))\n"
        "    print('ok', s.size, float(np.abs(s).max()))\n"
        "except AudioError as e:\n"
        "    print('refused', e.status, e.code)\n"
    )
    child = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, timeout=60)
    assert child.returncode == 0, f"the decoder died (exit {child.returncode}): {child.stderr.decode()[-500:]}"
    return child.stdout.decode().strip()


@pytest.mark.parametrize("channels", [3, 6, 8, 12, 16])
def test_many_channels_decode_to_mono_without_crashing_the_process(channels: int) -> None:
    """PyAV's to_ndarray() of a planar frame with 8 or more channels read past the frame and
    killed the process (SIGSEGV; found by tests/fuzz on a fresh machine)."""
    outcome, size, peak = decode_in_child(wav(tone(1.0, 48_000), 48_000, channels)).split()
    assert outcome == "ok"
    assert abs(int(size) - RATE) <= 200
    assert 0.1 < float(peak) <= 1.0  # the tone comes through, mixed down


def test_more_channels_than_any_recording_are_refused() -> None:
    assert decode_in_child(wav(tone(0.1), RATE, 17)) == "refused 400 too_many_channels"
