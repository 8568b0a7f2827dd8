"""Decode any accepted audio into 16 kHz mono float32, or say precisely why not.

Shared by the services (uploads) and the client (``--file``). PyAV (FFmpeg) does the
decoding and resampling; everything here exists to turn FFmpeg's many failure modes into
one :class:`AudioError` with a status code and a message that tells the sender what to do.

The bytes come from strangers, and FFmpeg left to guess the format will pick any of its
hundreds of demuxers, some of which read *instructions* rather than audio: ``ffconcat``
(open other files by name), SDP (open UDP sockets), HLS/DASH playlists (fetch URLs),
``image2`` (read a file pattern). So FFmpeg never guesses here: the demuxer is chosen from
the bytes' own signature (or the declared Content-Type), only the accepted formats'
demuxers exist as far as FFmpeg is concerned (``format_whitelist``), and no protocol may be
opened at all (``protocol_whitelist`` empty), so even a demuxer that tried to open a nested
file or socket would be refused before touching it.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np

from core.errors import ApiError
from core.vocabulary import SAMPLE_RATE

log = logging.getLogger("stt.audio")

RAW_PCM_TYPES = {"audio/pcm", "audio/l16", "audio/x-raw", "audio/s16le", "audio/raw"}
ACCEPTED = (
    "WAV (16/24-bit int or 32-bit float, up to 768 kHz, mono/stereo), FLAC, MP3, OGG/Opus, WebM, "
    "or raw 16 kHz s16le mono PCM sent with Content-Type audio/pcm;rate=16000"
)

# The only FFmpeg demuxers that ever see uploaded bytes, with the names used in messages.
DEMUXERS: dict[str, str] = {
    "wav": "WAV",
    "flac": "FLAC",
    "mp3": "MP3",
    "ogg": "Ogg (Opus/Vorbis/FLAC)",
    "matroska": "WebM/Matroska",
}
# Passed to avformat_open_input. ``format_whitelist`` makes FFmpeg itself refuse any other
# demuxer, including ones a demuxer would open for a nested file; an empty
# ``protocol_whitelist`` refuses every protocol (file, udp, http, ...): the upload arrives
# through our own in-memory I/O, which is no protocol, so only nested opens are affected.
FFMPEG_GUARD: dict[str, str] = {"format_whitelist": ",".join(DEMUXERS), "protocol_whitelist": ""}

# Declared Content-Types that name one accepted format. They admit the upload past
# check_declared_type; the bytes' signature still picks the demuxer.
DECLARED_FORMATS: dict[str, str] = {
    **dict.fromkeys(("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave", "audio/x-pn-wav"), "wav"),
    **dict.fromkeys(("audio/flac", "audio/x-flac"), "flac"),
    **dict.fromkeys(("audio/mpeg", "audio/mp3", "audio/x-mp3", "audio/mpeg3", "audio/x-mpeg", "audio/mpga"), "mp3"),
    **dict.fromkeys(("audio/ogg", "audio/opus", "audio/vorbis", "audio/x-ogg", "application/ogg", "video/ogg"), "ogg"),
    **dict.fromkeys(("audio/webm", "video/webm", "audio/x-matroska", "video/x-matroska", "audio/matroska"), "matroska"),
}
# Declared types that say nothing about the format, so the bytes' signature decides.
# ``application/x-www-form-urlencoded`` is here because it is what ``curl --data-binary``
# sends when no -H is given; refusing it would break the plainest curl call for no safety gain.
UNDECLARED_TYPES = {"", "application/octet-stream", "binary/octet-stream", "application/x-www-form-urlencoded"}
EBML_MAGIC = b"\x1a\x45\xdf\xa3"
# Demuxers that look for their first frame past leading junk, so a file with no signature at
# byte 0 (an MP3 after padding or a stray tag) may still be theirs: tried when the declared
# type names them. The others' signature is mandatory; without it their demuxers would only
# misread the bytes.
RESYNCING = {"mp3"}
# The highest sample rate decoded: real audio stops at 384 kHz (DXD 352.8 kHz). Resampling cost
# grows with the input rate: an 8 KB WAV declaring 453 MHz took FFmpeg's resampler 4.6 s and
# 536 MB to set up (found by tests/fuzz); just under this limit it takes 0.04 s and a few MB.
MAX_SAMPLE_RATE = 768_000
# Channels kept apart and averaged by us (see _decode_container); more are mixed down to mono by
# FFmpeg's resampler before they reach numpy: PyAV's to_ndarray() of a planar frame with 8 or
# more channels reads past the frame's data pointers and crashes the process (SIGSEGV, PyAV
# 18.1; an 8-channel PCM WAV was enough, found by tests/fuzz on a fresh machine).
MAX_AVERAGED_CHANNELS = 2
# More channels than any real recording (7.1.4 immersive audio has 12): refused.
MAX_CHANNELS = 16


# Bytes of one decoded sample (float32).
SAMPLE_BYTES = 4
# Samples cleaned of NaN and clipped per step (1 MB of mask at a time).
CLEAN_BLOCK = 1 << 20
# What a decode may be told to hold (grown as it goes): a callable that raises (429) when the
# process cannot hold that many bytes of samples (services.common.memory.Reservation.grow_to).
Reserve = Callable[[int], None]


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


def check_declared_type(content_type: str | None) -> None:
    """Refuse, before any decoding, a body whose Content-Type says it is something else.

    ``text/plain`` or ``application/json`` is never audio; answering 415 with what to send
    beats handing it to a decoder. Any ``audio/*``, the WebM/Matroska/Ogg container types,
    ``application/octet-stream`` and no type at all go on to be recognised by their bytes.
    """
    media_type, _ = parse_content_type(content_type)
    if media_type.startswith("audio/") or media_type in DECLARED_FORMATS or media_type in UNDECLARED_TYPES:
        return
    shown = media_type if len(media_type) <= 80 else media_type[:80] + "..."
    raise AudioError(
        415,
        "unsupported_media_type",
        f"Content-Type {shown!r} is not audio; send {ACCEPTED}, with a Content-Type that names it "
        "(audio/wav, audio/flac, audio/mpeg, audio/ogg, audio/webm) or application/octet-stream "
        "to have the format recognised from the bytes",
    )


def sniff_format(data: bytes | bytearray) -> str | None:
    """The accepted demuxer the bytes' own signature names, or None.

    Only magic numbers at fixed offsets are read: RIFF/RF64/BW64 + WAVE, ``fLaC``, ``OggS``,
    the EBML header of WebM/Matroska, an ID3v2 tag (MP3, or rarely FLAC, behind it) or an
    MPEG audio frame header.
    """
    head = data[:12]
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == EBML_MAGIC:
        return "matroska"
    if head[:3] == b"ID3" and len(data) >= 10:
        size = 0
        for byte in data[6:10]:  # ID3v2 sizes are "syncsafe": 7 bits per byte
            size = (size << 7) | (byte & 0x7F)
        end = 10 + size + (10 if data[5] & 0x10 else 0)  # flag 0x10: a footer follows
        return "flac" if data[end : end + 4] == b"fLaC" else "mp3"
    if _is_mpeg_audio_frame(head):
        return "mp3"
    return None


def _is_mpeg_audio_frame(head: bytes | bytearray) -> bool:
    """An MPEG-1/2/2.5 Layer I-III frame header: 11 sync bits, then no reserved field values.

    The checks on the reserved values keep AAC ADTS (layer bits 00) and random 0xFFFx bytes out.
    """
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3
    bitrate, rate = head[2] >> 4, (head[2] >> 2) & 3
    return version != 1 and layer != 0 and bitrate != 15 and rate != 3


def decode_audio(
    data: bytes | bytearray, content_type: str | None, limits: AudioLimits, reserve: Reserve | None = None
) -> np.ndarray:
    """Return 16 kHz mono float32 samples in [-1, 1], or raise :class:`AudioError`.

    The declared type is checked first (cheap, and the clearest message); then the demuxer is
    chosen here from the bytes' signature, never by FFmpeg's own probing, which would pick
    playlist and network formats as readily as audio ones.

    ``reserve``, when given, is told how many bytes of samples the decode is about to hold,
    before it holds them (first what the file's header says, then more if it runs longer), and
    may raise to stop it: the base service's decode budget.
    """
    check_declared_type(content_type)
    if not data:
        raise AudioError(400, "empty_audio", f"the request carried no audio bytes; send {ACCEPTED}")
    media_type, params = parse_content_type(content_type)
    if media_type in RAW_PCM_TYPES:
        samples = _decode_raw_pcm(data, params, limits, reserve)
    else:
        _check_wav_complete(data)
        demuxer = sniff_format(data)
        if demuxer is None and DECLARED_FORMATS.get(media_type) in RESYNCING:
            demuxer = DECLARED_FORMATS[media_type]
        if demuxer is None:
            raise AudioError(
                415,
                "not_audio",
                "the bytes are not in an accepted audio format (no WAV, FLAC, MP3, Ogg or WebM/Matroska "
                f"signature at the start); send {ACCEPTED}",
            )
        samples = _decode_container(data, demuxer, limits, reserve)
    if samples.size == 0:
        raise AudioError(400, "empty_audio", f"the file decodes to zero audio samples; send {ACCEPTED}")
    limits.check_duration(samples.size / SAMPLE_RATE)
    return samples


def _decode_raw_pcm(
    data: bytes | bytearray, params: dict[str, str], limits: AudioLimits, reserve: Reserve | None
) -> np.ndarray:
    rate = params.get("rate", str(SAMPLE_RATE))
    channels = params.get("channels", "1")
    if rate != str(SAMPLE_RATE) or channels != "1":
        raise AudioError(
            400,
            "wrong_sample_rate",
            f"raw PCM must be 16 kHz mono s16le (got rate={rate[:16]}, channels={channels[:16]}); "
            "resample it, or send a WAV/FLAC file, which may have any rate",
        )
    # The length alone gives the duration: refuse too-long audio before the float32 copy,
    # which would cost twice the upload's size in memory for audio that is then refused.
    limits.check_duration(len(data) / 2 / SAMPLE_RATE)
    if len(data) % 2:
        raise AudioError(
            400, "truncated_audio", "raw s16le PCM has an odd number of bytes: the upload was cut mid-sample"
        )
    if reserve is not None:
        reserve(len(data) // 2 * SAMPLE_BYTES)
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32)
    samples *= 1 / 32768.0  # in place: ``/`` would make a second float32 copy
    return samples


def _check_wav_complete(data: bytes | bytearray) -> None:
    """FFmpeg happily decodes half a WAV; a cut-off upload must be reported, not transcribed."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        if data[:4] == b"RIFF" and len(data) < 12:
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


def _resampler_for(channels: int, name: str) -> av.AudioResampler:
    """To 16 kHz planar float. Mono and stereo keep their channels, which we average: FFmpeg's
    stereo-to-mono downmix adds them at 1/sqrt(2) each, which makes loud stereo clip. Wider
    audio is mixed down to mono by FFmpeg (see MAX_AVERAGED_CHANNELS)."""
    if not 0 < channels <= MAX_CHANNELS:
        raise AudioError(
            400,
            "too_many_channels",
            f"the {name} audio has {channels} channels; 1 to {MAX_CHANNELS} are accepted: "
            f"mix it down to mono or stereo, or send {ACCEPTED}",
        )
    layout = None if channels <= MAX_AVERAGED_CHANNELS else "mono"
    return av.AudioResampler(format="fltp", layout=layout, rate=SAMPLE_RATE)


class _BufferReader:
    """A read-only file over the upload's buffer, for FFmpeg. ``io.BytesIO`` would copy any
    buffer but ``bytes`` (uploads arrive in a ``bytearray``), holding a 50 MB upload twice."""

    def __init__(self, data: bytes | bytearray):
        self._view = memoryview(data)
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size < 0 else min(len(self._view), self._pos + size)
        piece = self._view[self._pos : end].tobytes()
        self._pos = max(self._pos, end)
        return piece

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._view)}.get(whence)
        if base is None or base + offset < 0:
            raise OSError(f"bad seek ({offset}, {whence})")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


class _Samples:
    """Mono float32 samples appended frame by frame into one array that grows in place.

    A list of frames joined at the end held the audio twice, and the clip after it a third
    time: an hour (230 MB of float32) peaked near 700 MB. This array grows with
    ``ndarray.resize`` (``realloc``, which moves no bytes for large blocks on Linux: ``mremap``),
    so the peak is the samples once plus the growth step; every growth is reserved first."""

    def __init__(self, expected: int, most: int, reserve: Reserve | None):
        self.most, self.reserve = most, reserve
        self.size = 0
        self.array = np.empty(0, np.float32)
        self._grow(max(min(expected, most), SAMPLE_RATE))

    def _grow(self, capacity: int) -> None:
        if self.reserve is not None:
            self.reserve(capacity * SAMPLE_BYTES)
        self.array.resize(capacity, refcheck=False)

    def append(self, piece: np.ndarray) -> None:
        end = self.size + piece.size
        if end > self.array.size:
            self._grow(max(end, min(self.array.size * 3 // 2, self.most)))
        self.array[self.size : end] = piece
        self.size = end

    def finish(self) -> np.ndarray:
        self.array.resize(self.size, refcheck=False)  # gives back the unused tail
        if self.reserve is not None:
            self.reserve(self.size * SAMPLE_BYTES)
        return self.array


def _expected_samples(container: av.container.InputContainer, stream: av.AudioStream) -> int:
    """The samples at 16 kHz the header says the stream holds (0 when it does not say)."""
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / av.time_base
    else:
        return 0
    return max(0, int(seconds * SAMPLE_RATE)) + SAMPLE_RATE // 10


def _decode_container(
    data: bytes | bytearray, demuxer: str, limits: AudioLimits, reserve: Reserve | None = None
) -> np.ndarray:
    """Decode with exactly one accepted demuxer, FFmpeg barred from any file, socket or URL.

    FFmpeg's own error text is logged, never returned: it can name files and addresses
    (``No such file or directory: 'x.wav'``) and so tell a stranger what exists here.
    """
    name = DEMUXERS[demuxer]
    try:
        container = av.open(
            _BufferReader(data), mode="r", format=demuxer, container_options=FFMPEG_GUARD, metadata_errors="ignore"
        )
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        log.debug("refused upload as %s: %s", demuxer, exc)
        raise AudioError(415, "not_audio", f"the bytes could not be read as {name}; send {ACCEPTED}") from None
    try:
        if not container.streams.audio:
            raise AudioError(415, "not_audio", f"the {name} file has no audio stream; send {ACCEPTED}")
        stream = container.streams.audio[0]
        # Set up at the first frame, which says how many channels there really are.
        resampler: av.AudioResampler | None = None
        channels = 0
        # Stop decoding past the limit: a tiny compressed file can expand to hours of samples.
        budget = int(limits.max_seconds * SAMPLE_RATE) + SAMPLE_RATE
        samples = _Samples(_expected_samples(container, stream), budget + SAMPLE_RATE, reserve)
        try:
            for frame in container.decode(stream):
                if not 0 < frame.sample_rate <= MAX_SAMPLE_RATE:
                    raise AudioError(
                        400,
                        "wrong_sample_rate",
                        f"the {name} audio declares a sample rate of {frame.sample_rate} Hz; at most "
                        f"{MAX_SAMPLE_RATE} Hz is accepted: resample it, or send {ACCEPTED}",
                    )
                if resampler is None:
                    channels = len(frame.layout.channels)
                    resampler = _resampler_for(channels, name)
                elif channels <= MAX_AVERAGED_CHANNELS < len(frame.layout.channels):
                    # The stream began mono or stereo and this frame is wider: the resampler
                    # would pass its channels on to to_ndarray() (see MAX_AVERAGED_CHANNELS).
                    raise AudioError(
                        400,
                        "inconsistent_channels",
                        f"the {name} stream began with {channels} channels and holds a frame with "
                        f"{len(frame.layout.channels)}; send {ACCEPTED}",
                    )
                for out in resampler.resample(frame):
                    samples.append(out.to_ndarray().mean(axis=0))
                if samples.size > budget:
                    limits.check_duration(samples.size / SAMPLE_RATE)
            for out in resampler.resample(None) if resampler is not None else ():
                samples.append(out.to_ndarray().mean(axis=0))
        except (av.FFmpegError, OSError, ValueError) as exc:
            log.debug("decoding %s stopped: %s", demuxer, exc)
            if not samples.size:
                raise AudioError(
                    400, "undecodable_audio", f"the {name} audio stream could not be decoded; send {ACCEPTED}"
                ) from None
            raise AudioError(
                400, "truncated_audio", "decoding stopped part-way; the file looks cut off, send it whole"
            ) from None
    finally:
        container.close()
    decoded = samples.finish()
    # A float WAV can carry NaN and infinities, which FFmpeg passes on (its resampler smears a
    # NaN over its neighbours) and clipping keeps: replace them, so the samples are in [-1, 1].
    # In place and a block at a time: np.nan_to_num makes three masks of the whole array (and
    # a plain np.clip a copy), together more than the samples themselves.
    for start in range(0, decoded.size, CLEAN_BLOCK):
        block = decoded[start : start + CLEAN_BLOCK]
        np.clip(block, -1.0, 1.0, out=block)  # infinities become +-1; NaN stays NaN
        block[np.isnan(block)] = 0.0
    return decoded


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
