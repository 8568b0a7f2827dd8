"""G.711 (core/g711.py) against decoders we did not write: Python's audioop and FFmpeg's (fast)."""

from __future__ import annotations

import av
import numpy as np
import pytest

from core.g711 import ALAW_TO_PCM16, ULAW_TO_PCM16, ulaw_decode, ulaw_encode

EVERY_CODE = np.arange(256, dtype=np.uint8)


def _ffmpeg_decode(codec: str) -> np.ndarray:
    decoder = av.CodecContext.create(codec, "r")
    decoder.sample_rate = 8000
    decoder.layout = "mono"
    frames = decoder.decode(av.Packet(EVERY_CODE.tobytes()))
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])


def test_tables_hold_the_codecs_landmarks() -> None:
    assert (ULAW_TO_PCM16[0x00], ULAW_TO_PCM16[0x80], ULAW_TO_PCM16[0xFF], ULAW_TO_PCM16[0x7F]) == (-32124, 32124, 0, 0)
    assert (ALAW_TO_PCM16[0xD5], ALAW_TO_PCM16[0x55], ALAW_TO_PCM16[0xAA], ALAW_TO_PCM16[0x2A]) == (
        8,
        -8,
        32256,
        -32256,
    )


@pytest.mark.parametrize(("codec", "table"), [("pcm_mulaw", ULAW_TO_PCM16), ("pcm_alaw", ALAW_TO_PCM16)])
def test_tables_equal_ffmpegs_decoder(codec: str, table: np.ndarray) -> None:
    assert np.array_equal(_ffmpeg_decode(codec), table)


def test_tables_equal_audioops_decoder() -> None:
    audioop = pytest.importorskip("audioop")  # gone in Python 3.13
    everything = EVERY_CODE.tobytes()
    assert np.array_equal(np.frombuffer(audioop.ulaw2lin(everything, 2), "<i2"), ULAW_TO_PCM16)
    assert np.array_equal(np.frombuffer(audioop.alaw2lin(everything, 2), "<i2"), ALAW_TO_PCM16)


def test_ulaw_round_trip_is_exact_on_its_own_levels_and_close_on_any_signal() -> None:
    levels = ulaw_decode(EVERY_CODE)
    again = ulaw_encode(levels)
    assert np.array_equal(again[EVERY_CODE != 0x7F], EVERY_CODE[EVERY_CODE != 0x7F])  # 0x7F is -0, sent as +0
    assert np.array_equal(ulaw_decode(again), levels)
    t = np.arange(4000) / 8000
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    y = ulaw_decode(ulaw_encode(x))
    assert y.shape == x.shape and y.dtype == np.float32
    snr_db = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean((y - x).astype(np.float64) ** 2))
    assert snr_db > 35  # 8-bit log quantisation: ~38 dB on a loud tone


def test_ulaw_encoder_agrees_with_audioops_encoder() -> None:
    """Equal codes for non-negative samples; a negative one may land one step nearer zero, as
    ``audioop`` (like Sun's g711.c) codes -x as x - 1. Not changed: the dev set's telephone
    audio is made with this encoder, and its pinned figures would move."""
    audioop = pytest.importorskip("audioop")
    x = np.random.default_rng(0).uniform(-1, 1, 20_000)
    pcm = np.clip(np.round(x * 32768), -32768, 32767).astype("<i2")
    theirs = np.frombuffer(audioop.lin2ulaw(pcm.tobytes(), 2), np.uint8).astype(int)
    ours = ulaw_encode(x).astype(int)
    assert np.array_equal(ours[x >= 0], theirs[x >= 0])
    assert set(np.unique(ours[x < 0] - theirs[x < 0])) <= {0, 1}
    assert np.mean(ours != theirs) < 0.01
