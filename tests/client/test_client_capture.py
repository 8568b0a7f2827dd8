"""Capture: the sound-device callback path, stdin PCM, files; overruns counted, time kept true."""

from __future__ import annotations

import asyncio
import builtins
import io
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from client import sources
from client.sources import ArraySource, CallbackCapture, SourceError, StdinSource, file_source, level_dbfs
from core.audio import to_wav_bytes


def device_block(frames: int, value: float) -> np.ndarray:
    """What sounddevice hands the callback for a mono float32 stream: shape (frames, 1)."""
    return np.full((frames, 1), value, dtype=np.float32)


async def collect(source) -> list[sources.Block]:
    return [b async for b in source.blocks()]


async def test_callback_blocks_come_out_in_order_with_offsets() -> None:
    cap = CallbackCapture(max_blocks=10)
    for i in range(3):
        cap.callback(device_block(1600, i / 10), 1600, None, None)
    cap.stop()
    blocks = await collect(cap)
    assert [b.offset for b in blocks] == [0, 1600, 3200]
    assert [float(b.samples[0]) for b in blocks] == pytest.approx([0.0, 0.1, 0.2])
    assert cap.overruns == 0


async def test_portaudio_overflow_flag_is_counted() -> None:
    cap = CallbackCapture()
    cap.callback(device_block(160, 0.0), 160, None, SimpleNamespace(input_overflow=True))
    cap.callback(device_block(160, 0.0), 160, None, SimpleNamespace(input_overflow=False))
    assert cap.overruns == 1


async def test_a_full_queue_counts_overruns_and_fills_the_gap_with_silence() -> None:
    cap = CallbackCapture(max_blocks=2)
    for _i in range(5):  # nobody reads: blocks 2, 3 and 4 find the queue full
        cap.callback(device_block(1600, 0.5), 1600, None, None)
    assert cap.overruns == 3
    blocks_before = await asyncio.wait_for(_take(cap, 2), 2)
    cap.callback(device_block(1600, 0.9), 1600, None, None)  # block 5, after the loss
    cap.stop()
    rest = await collect(cap)
    blocks = blocks_before + rest
    # The lost 3 x 1600 samples come back as silence so that block 5 still starts at 8000.
    assert [b.offset for b in blocks] == [0, 1600, 3200, 8000]
    assert blocks[2].samples.size == 4800 and not blocks[2].samples.any()
    assert float(blocks[3].samples[0]) == pytest.approx(0.9)


async def _take(cap: CallbackCapture, n: int) -> list[sources.Block]:
    out = []
    async for b in cap.blocks():
        out.append(b)
        if len(out) == n:
            break
    return out


def test_missing_portaudio_is_reported_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(SourceError, match=r"PortAudio.*--file"):
        sources.MicSource()


def test_an_unknown_device_is_reported_with_a_hint() -> None:
    try:
        import sounddevice  # noqa: F401  (raises OSError, not ImportError, when PortAudio is missing)
    except (ImportError, OSError) as exc:
        pytest.skip(f"no microphone library here ({exc}); `make audio-libs` installs PortAudio")
    with pytest.raises(SourceError, match="--list-devices"):
        sources.MicSource("no such microphone")


async def test_stdin_pcm_is_decoded_even_when_reads_split_samples() -> None:
    pcm = (np.array([0, 16384, -16384, 32767, -32768] * 700, dtype="<i2")).tobytes()

    class Trickle(io.RawIOBase):
        """Returns odd-sized reads, as a pipe can."""

        def __init__(self, data: bytes) -> None:
            self.data = data

        def read(self, n: int = -1) -> bytes:
            piece, self.data = self.data[:1001], self.data[1001:]
            return piece

    blocks = await collect(StdinSource(Trickle(pcm)))
    samples = np.concatenate([b.samples for b in blocks])
    expected = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    np.testing.assert_array_equal(samples, expected)
    assert [b.offset for b in blocks] == list(np.cumsum([0] + [b.samples.size for b in blocks[:-1]]))


async def test_file_source_decodes_with_the_services_decoder(tmp_path: Path) -> None:
    tone = (0.3 * np.sin(np.arange(16000 * 2) * 2 * np.pi * 440 / 16000)).astype(np.float32)
    path = tmp_path / "tone.wav"
    path.write_bytes(to_wav_bytes(tone))
    source = file_source(path)
    assert source.duration_s == pytest.approx(2.0)
    samples = np.concatenate([b.samples for b in await collect(source)])
    assert np.abs(samples - tone).max() < 1e-3
    assert level_dbfs(samples) == pytest.approx(20 * np.log10(0.3 / np.sqrt(2)), abs=0.1)


def test_file_source_refuses_non_audio_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_bytes(b"RIFF\x00\x00")
    with pytest.raises(SourceError, match=r"notes\.wav"):
        file_source(path)
    with pytest.raises(SourceError, match="cannot read"):
        file_source(tmp_path / "absent.wav")


async def test_realtime_pacing_takes_as_long_as_the_audio() -> None:
    audio = np.zeros(int(16000 * 0.6), np.float32)
    began = time.monotonic()
    await collect(ArraySource(audio, realtime=True))
    paced = time.monotonic() - began
    began = time.monotonic()
    await collect(ArraySource(audio, realtime=False))
    fast = time.monotonic() - began
    assert paced >= 0.45  # the last 0.1 s block is due at 0.5 s
    assert fast < 0.2
