"""Audio sources behind one interface: microphone, file, raw PCM on stdin.

Every source yields :class:`Block` s of 16 kHz mono float32 with the absolute sample offset
where the block begins, so that time stays true even when blocks are lost: a gap left by an
overrun is filled with silence of the right length rather than silently shifting every later
timestamp.
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import os
import queue
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np

from core.audio import AudioLimits, decode_audio
from core.vocabulary import SAMPLE_RATE

BLOCK_S = 0.1  # 100 ms blocks: fine enough for a level meter, coarse enough to be cheap


@dataclass
class Block:
    """Samples starting at absolute sample ``offset`` of the stream."""

    offset: int
    samples: np.ndarray


class Source(Protocol):
    """What the pipeline needs from any audio source."""

    duration_s: float | None  # known length (files, stdin from a file), None when unknown
    live: bool  # audio comes at real-time pace (microphone, --realtime); False: as fast as it can be read
    overruns: int  # blocks lost because the consumer fell behind

    def blocks(self) -> AsyncIterator[Block]: ...

    def stop(self) -> None: ...


class SourceError(RuntimeError):
    """The source cannot be opened; the message says what to do."""


def level_dbfs(samples: np.ndarray) -> float:
    """RMS level in dBFS (-inf for digital silence clamps to -100) for the input meter."""
    if samples.size == 0:
        return -100.0
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return max(-100.0, 20.0 * np.log10(rms + 1e-12))


class CallbackCapture:
    """The bridge between a real-time audio callback and the asyncio pipeline.

    The audio thread must never block, so :meth:`callback` puts blocks into a bounded
    queue without waiting; when the queue is full the block is counted as an overrun
    (as are PortAudio's own ``input_overflow`` flags) and its length is remembered so the
    reader can put the same amount of silence in its place.
    """

    def __init__(self, max_blocks: int = 100) -> None:
        self.queue: queue.Queue[Block | None] = queue.Queue(maxsize=max_blocks)
        self.overruns = 0
        self.duration_s: float | None = None
        self.live = True
        self._offset = 0  # absolute sample offset of the next block the device delivers
        self._expected = 0  # absolute sample offset the reader expects next
        self._stopped = False

    def callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """Signature of ``sounddevice.InputStream``'s callback; tests call it directly."""
        if status and getattr(status, "input_overflow", False):
            self.overruns += 1
        samples = np.asarray(indata, dtype=np.float32).reshape(frames, -1)[:, 0].copy()
        block = Block(self._offset, samples)
        self._offset += frames
        try:
            self.queue.put_nowait(block)
        except queue.Full:
            self.overruns += 1

    def stop(self) -> None:
        self._stopped = True
        with contextlib.suppress(queue.Full):  # the reader notices _stopped on its next poll
            self.queue.put_nowait(None)

    async def blocks(self) -> AsyncIterator[Block]:
        while True:
            try:
                block = await asyncio.to_thread(self.queue.get, True, 0.2)
            except queue.Empty:
                if self._stopped:
                    return
                continue
            if block is None:
                return
            if block.offset > self._expected:  # lost blocks: keep the clock right with silence
                yield Block(self._expected, np.zeros(block.offset - self._expected, dtype=np.float32))
            self._expected = block.offset + block.samples.size
            yield block


def _import_sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # sounddevice raises OSError when libportaudio is missing
        raise SourceError(
            f"the microphone needs PortAudio, which is not installed here ({exc}); "
            "install it (Debian/Ubuntu: apt-get install libportaudio2) or use --file PATH / --stdin"
        ) from None
    except ImportError:
        raise SourceError(
            "the microphone needs the 'sounddevice' package: pip install 'stt-platform[client]', "
            "or use --file PATH / --stdin"
        ) from None
    return sounddevice


def list_devices() -> str:
    """The input devices PortAudio sees, one a line, for ``--list-devices``."""
    sd = _import_sounddevice()
    lines = []
    for index, dev in enumerate(sd.query_devices()):
        if dev["max_input_channels"] > 0:
            lines.append(
                f"{index:3d}  {dev['name']}  ({dev['max_input_channels']} ch, {dev['default_samplerate']:.0f} Hz)"
            )
    return "\n".join(lines) if lines else "no input devices found (is a sound card or microphone connected?)"


class MicSource(CallbackCapture):
    """The default input device (or ``device``: a name or an index) at 16 kHz mono."""

    def __init__(self, device: str | int | None = None, max_blocks: int = 100) -> None:
        super().__init__(max_blocks)
        sd = _import_sounddevice()
        if isinstance(device, str) and device.isdigit():
            device = int(device)
        try:
            self._stream = sd.InputStream(
                samplerate=SAMPLE_RATE,
                channels=1,
                dtype="float32",
                blocksize=int(BLOCK_S * SAMPLE_RATE),
                device=device,
                callback=self.callback,
            )
            self._stream.start()
        except Exception as exc:  # PortAudioError, ValueError for unknown device names
            raise SourceError(
                f"could not open input device {device if device is not None else '(default)'}: {exc}; "
                "see --list-devices, or use --file PATH / --stdin"
            ) from None

    def stop(self) -> None:
        try:
            self._stream.stop()
            self._stream.close()
        finally:
            super().stop()


class ArraySource:
    """Samples already in memory, delivered in blocks as fast as possible or at real-time pace."""

    def __init__(
        self, samples: np.ndarray, realtime: bool = False, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.samples = samples.astype(np.float32, copy=False)
        self.realtime = realtime
        self.duration_s: float | None = samples.size / SAMPLE_RATE
        self.live = realtime
        self.overruns = 0
        self._clock = clock
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    async def blocks(self) -> AsyncIterator[Block]:
        step = int(BLOCK_S * SAMPLE_RATE)
        began = self._clock()
        for offset in range(0, self.samples.size, step):
            if self._stopped:
                return
            if self.realtime:
                due = began + offset / SAMPLE_RATE
                delay = due - self._clock()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # let the rest of the pipeline run between blocks
            yield Block(offset, self.samples[offset : offset + step])


def file_source(path: Path, realtime: bool = False) -> ArraySource:
    """Decode any format the services accept (same decoder as the services) into a source."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from None
    content_type = mimetypes.guess_type(path.name)[0]
    if path.suffix.lower() in {".pcm", ".raw"}:
        content_type = "audio/pcm;rate=16000"
    try:
        samples = decode_audio(data, content_type, AudioLimits(max_seconds=24 * 3600))
    except Exception as exc:  # AudioError carries a message meant for people
        raise SourceError(f"cannot use {path} as audio: {getattr(exc, 'message', exc)}") from None
    return ArraySource(samples, realtime=realtime)


def _regular_file_seconds(stream: BinaryIO) -> float | None:
    """Seconds of s16le PCM left in ``stream`` when it is a regular file (``--stdin < x.pcm``), else None."""
    try:
        info = os.fstat(stream.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None
        return max(0, info.st_size - stream.tell()) / (2 * SAMPLE_RATE)
    except (AttributeError, OSError, ValueError):  # no file descriptor (a test's stream), or not seekable
        return None


class StdinSource:
    """Raw 16 kHz mono s16le PCM read from a byte stream (stdin by default), e.g. from arecord or ffmpeg.

    A pipe counts as live (arecord; ffmpeg reading a file is indistinguishable from it); stdin
    redirected from a regular file is read as fast as a file, and its length is known.
    """

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.duration_s: float | None = _regular_file_seconds(self.stream)
        self.live = self.duration_s is None
        self.overruns = 0
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    async def blocks(self) -> AsyncIterator[Block]:
        nbytes = int(BLOCK_S * SAMPLE_RATE) * 2
        offset = 0
        carry = b""
        while not self._stopped:
            data = await asyncio.to_thread(self.stream.read, nbytes)
            if not data:
                break
            data = carry + data
            usable = len(data) - len(data) % 2  # a read may end mid-sample
            carry = data[usable:]
            samples = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
            yield Block(offset, samples)
            offset += samples.size
