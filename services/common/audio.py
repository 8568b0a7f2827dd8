"""Decode any accepted audio into 16 kHz mono float32, or say precisely why not.

Shared by the services (uploads) and the client (``--file``). PyAV (FFmpeg) does the
decoding and resampling; everything here exists to turn FFmpeg's many failure modes into
one :class:`AudioError` with a status code and a message that tells the sender what to do.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import av
import numpy as np

from services.common.errors import ApiError

SAMPLE_RATE = 16_000
RAW_PCM_TYPES = {"audio/pcm", "audio/l16", "audio/x-raw", "audio/s16le", "audio/raw"}
ACCEPTED = (
    "WAV (16/24-bit int or 32-bit float, any rate, mono/stereo), FLAC, MP3, OGG/Opus, WebM, "
    "or raw 16 kHz s16le mono PCM sent with Content-Type audio/pcm;rate=16000"
)


class AudioError(ApiError):
    """The bytes are not audio this service can use."""


@dataclass(frozen=True)
class AudioLimits:
    max_seconds: float

    def check_duration(self, seconds: float) -> None:
        if seconds > self.max_seconds:
            raise AudioError(
                413,
                "audio_too_long",
                f"audio lasts {seconds:.1f} s, over this endpoint's limit of {self.max_seconds:.0f} s; "
                "split it into shorter pieces or use /v1/audio/transcriptions for whole files",
            )


def parse_content_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """Split ``audio/pcm; rate=16000`` into ``("audio/pcm", {"rate": "16000"})``."""
    if not content_type:
        return "", {}
    main, *params = [p.strip() for p in content_type.split(";")]
    parsed = {}
    for param in params:
        if "=" in param:
            key, value = param.split("=", 1)
            parsed[key.strip().lower()] = value.strip().strip('"')
    return main.lower(), parsed


def decode_audio(data: bytes, content_type: str | None, limits: AudioLimits) -> np.ndarray:
    """Return 16 kHz mono float32 samples in [-1, 1]."""
    if not data:
        raise AudioError(400, "empty_audio", f"the request carried no audio bytes; send {ACCEPTED}")
    media_type, params = parse_content_type(content_type)
    if media_type in RAW_PCM_TYPES:
        samples = _decode_raw_pcm(data, params)
    else:
        _check_wav_complete(data)
        samples = _decode_container(data, limits)
    if samples.size == 0:
        raise AudioError(400, "empty_audio", f"the file decodes to zero audio samples; send {ACCEPTED}")
    limits.check_duration(samples.size / SAMPLE_RATE)
    return samples


def _decode_raw_pcm(data: bytes, params: dict[str, str]) -> np.ndarray:
    rate = params.get("rate", str(SAMPLE_RATE))
    channels = params.get("channels", "1")
    if rate != str(SAMPLE_RATE) or channels != "1":
        raise AudioError(
            400,
            "wrong_sample_rate",
            f"raw PCM must be 16 kHz mono s16le (got rate={rate}, channels={channels}); "
            "resample it, or send a WAV/FLAC file, which may have any rate",
        )
    if len(data) % 2:
        raise AudioError(
            400, "truncated_audio", "raw s16le PCM has an odd number of bytes: the upload was cut mid-sample"
        )
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def _check_wav_complete(data: bytes) -> None:
    """FFmpeg happily decodes half a WAV; a cut-off upload must be reported, not transcribed."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        if data[:4] == b"RIFF":
            raise AudioError(400, "truncated_audio", "the WAV header is cut off; send the whole file")
        return
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        if chunk_id == b"data":
            available = len(data) - offset - 8
            # 0 and 0xFFFFFFFF mark a streaming writer that never went back to fill in the size.
            if size not in (0, 0xFFFFFFFF) and available < size:
                raise AudioError(
                    400,
                    "truncated_audio",
                    f"the WAV declares {size} bytes of audio but only {available} arrived; "
                    "the upload was cut off, send the whole file",
                )
            return
        offset += 8 + size + (size & 1)
    raise AudioError(400, "truncated_audio", "the WAV file has no complete 'data' chunk; send the whole file")


def _decode_container(data: bytes, limits: AudioLimits) -> np.ndarray:
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, ValueError, IndexError) as exc:
        raise AudioError(415, "not_audio", f"could not read the bytes as audio ({exc}); send {ACCEPTED}") from None
    try:
        if not container.streams.audio:
            raise AudioError(415, "not_audio", f"the file has no audio stream; send {ACCEPTED}")
        stream = container.streams.audio[0]
        # Keep the channels and average them ourselves: FFmpeg's stereo->mono downmix adds the
        # channels at 1/sqrt(2) each, which makes loud stereo clip.
        resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE)
        # Stop decoding past the limit: a tiny compressed file can expand to hours of samples.
        budget = int(limits.max_seconds * SAMPLE_RATE) + SAMPLE_RATE
        pieces: list[np.ndarray] = []
        total = 0
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    piece = out.to_ndarray().mean(axis=0)
                    pieces.append(piece)
                    total += piece.size
                if total > budget:
                    limits.check_duration(total / SAMPLE_RATE)
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().mean(axis=0))
        except av.FFmpegError as exc:
            if not pieces:
                raise AudioError(
                    400, "undecodable_audio", f"the audio stream could not be decoded ({exc}); send {ACCEPTED}"
                ) from None
            raise AudioError(
                400, "truncated_audio", f"decoding stopped part-way ({exc}); the file looks cut off, send it whole"
            ) from None
    finally:
        container.close()
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    samples = np.concatenate(pieces).astype(np.float32, copy=False)
    return np.clip(samples, -1.0, 1.0)


def to_wav_bytes(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Encode float32 mono samples as 16-bit PCM WAV (what the client posts per chunk)."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(pcm),
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        sample_rate,
        sample_rate * 2,
        2,
        16,
        b"data",
        len(pcm),
    )
    return header + pcm
