"""Seeds and Hypothesis strategies for fuzzing untrusted audio: real files, broken ones, and the
demuxer tricks, plus the mutations that turn each into thousands of neighbours.

Random bytes alone almost never get past the signature check in ``sniff_format``, so the
interesting inputs are built from seeds: small valid files of every accepted format (made here,
in process, with PyAV), hand-made malformed containers (sizes that lie, zero channels or rates,
missing chunks, tags pointing past the end), and the bodies that make FFmpeg open files or
sockets when it is left to guess the format (ffconcat, SDP, HLS, DASH, image2 patterns, URLs and
protocol strings). Mutations then truncate, flip, overwrite with boundary integers, insert,
delete, duplicate and splice them.

The demuxer tricks point at :data:`PLANTED` (``x.wav``), which the trick properties place in a
temporary working directory holding :data:`CANARY_WAV`: noise from a fixed seed, so that its
samples cannot turn up in any output by chance and :func:`contains_canary` finds them exactly
if FFmpeg ever read that file.
"""

from __future__ import annotations

import base64
import functools
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from core.audio import DECLARED_FORMATS, to_wav_bytes
from tests.services.test_audio import encode, tone, wav
from tests.services.test_untrusted_audio import LABELS, PLANTED, TRICKS

RATE = 16_000

# --- the canary ---------------------------------------------------------------------------

_CANARY_INTS = np.random.default_rng(20_240_501).integers(-16_000, 16_000, RATE, dtype=np.int16)
# Four 32-sample stretches of the canary: any one of them in an output means x.wav was decoded.
_SIGNATURES = [_CANARY_INTS[i : i + 32].astype("<i2").tobytes() for i in (0, 4_000, 8_000, 12_000)]


def contains_canary(samples: np.ndarray) -> bool:
    """Whether ``samples`` hold a stretch of :data:`CANARY_WAV`'s samples.

    The canary is 16 kHz mono s16, so decoding it needs no resampling and every sample comes
    back exactly (``int16 / 32768`` is exact in float32): the match is exact, not statistical.
    A test checks that it fires on the canary decoded through ``decode_audio`` and through
    FFmpeg's concat demuxer opening the planted file, so a silent detector cannot pass.
    """
    ints = np.clip(np.round(np.asarray(samples, np.float64) * 32768.0), -32768, 32767).astype("<i2").tobytes()
    return any(ints.find(signature) != -1 for signature in _SIGNATURES)


# --- valid files --------------------------------------------------------------------------


def _chunks(chunks: tuple[tuple[bytes, bytes], ...]) -> bytes:
    return b"".join(cid + struct.pack("<I", len(d)) + d + (b"\0" if len(d) & 1 else b"") for cid, d in chunks)


def _riff(*chunks: tuple[bytes, bytes]) -> bytes:
    body = _chunks(chunks)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body


def _fmt(tag: int = 1, channels: int = 1, rate: int = RATE, bits: int = 16, extra: bytes = b"") -> bytes:
    block = channels * bits // 8
    return struct.pack("<HHIIHH", tag, channels, rate, (rate * block) & 0xFFFFFFFF, block, bits) + extra


def _raw_wav(fmt: bytes, data: bytes, *, data_size: int | None = None, before: tuple = ()) -> bytes:
    """A WAV whose data chunk may declare a size other than its length (a lie, or a streaming 0)."""
    declared = len(data) if data_size is None else data_size
    body = _chunks((*before, (b"fmt ", fmt))) + b"data" + struct.pack("<I", declared) + data
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body


# 16 kHz mono s16 noise written sample for sample (to_wav_bytes scales by 32767, which is not exact).
CANARY_WAV = _raw_wav(_fmt(), _CANARY_INTS.astype("<i2").tobytes())


@functools.cache
def valid_files() -> dict[str, bytes]:
    """Small (a quarter of a second) valid files of every accepted format and a few variants."""
    samples = tone(0.25)
    pcm = (samples * 32767).astype("<i2").tobytes()
    extensible = _fmt(
        0xFFFE, extra=struct.pack("<HHIH14s", 22, 16, 4, 1, b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71")
    )
    files = {
        "wav": to_wav_bytes(samples),
        "wav 44.1k stereo": wav(tone(0.25, 44_100), 44_100, channels=2),
        "wav 24-bit": wav(tone(0.25, 48_000), 48_000, bits=24),
        "wav float": wav(tone(0.25, 22_050), 22_050, bits=32),
        "wav 8-bit 8k": _raw_wav(_fmt(bits=8, rate=8_000), bytes((np.arange(2_000) % 256).astype(np.uint8))),
        "wav extensible": _raw_wav(extensible, pcm),
        "wav list chunk first": _raw_wav(_fmt(), pcm, before=((b"LIST", b"INFOISFT\x05\x00\x00\x00fuzz\x00\x00"),)),
        "wav streaming size 0": _raw_wav(_fmt(), pcm, data_size=0),
        "wav streaming size ffffffff": _raw_wav(_fmt(), pcm, data_size=0xFFFFFFFF),
        "flac": encode(samples, "flac", "flac", rate=RATE),
        "mp3": encode(samples, "mp3", "libmp3lame"),
        "ogg opus": encode(samples, "ogg", "libopus"),
        "webm": encode(samples, "webm", "libopus"),
        "mkv": encode(samples, "matroska", "libopus"),
    }
    files["mp3 behind junk"] = b"\0" * 64 + files["mp3"]
    files["flac behind id3"] = b"ID3\x04\x00\x00\x00\x00\x00\x0a" + bytes(10) + files["flac"]
    return files


# --- malformed containers -----------------------------------------------------------------


@functools.cache
def malformed_files() -> dict[str, bytes]:
    """Containers that lie about themselves: each aims at one parser's assumption."""
    pcm = (tone(0.1) * 32767).astype("<i2").tobytes()
    good = valid_files()
    flac, ogg, webm, mp3 = good["flac"], good["ogg opus"], good["webm"], good["mp3"]
    return {
        "riff only": b"RIFF",
        "riff wave no chunks": b"RIFF\x04\x00\x00\x00WAVE",
        "wav header cut": good["wav"][:40],
        "wav data cut": good["wav"][: len(good["wav"]) // 2],
        "wav no fmt": _riff((b"data", pcm)),
        "wav data before fmt": _riff((b"data", pcm), (b"fmt ", _fmt())),
        "wav fmt too short": _raw_wav(b"\x01\x00", pcm),
        "wav fmt huge size": b"RIFF\x00\x01\x00\x00WAVEfmt \xf0\xff\xff\xff"
        + _fmt()
        + b"data\x10\x00\x00\x00"
        + bytes(16),
        "wav zero channels": _raw_wav(_fmt(channels=0), pcm),
        "wav 65535 channels": _raw_wav(struct.pack("<HHIIHH", 1, 0xFFFF, RATE, 0, 0, 16), pcm),
        "wav zero rate": _raw_wav(_fmt(rate=0), pcm),
        "wav 1 Hz": _raw_wav(_fmt(rate=1, bits=8), bytes(4_096)),
        "wav 4 GHz": _raw_wav(_fmt(rate=0xFFFFFFFF), pcm),
        "wav 453 MHz": _raw_wav(_fmt(rate=453_000_832), pcm),  # found by the fuzzer: 4.6 s, 536 MB
        "wav 768 kHz": _raw_wav(_fmt(rate=768_000), pcm),
        "wav zero bits": _raw_wav(struct.pack("<HHIIHH", 1, 1, RATE, 0, 0, 0), pcm),
        "wav unknown codec": _raw_wav(_fmt(tag=0x1234), pcm),
        "wav adpcm garbage": _raw_wav(_fmt(tag=2, bits=4), pcm),
        "wav float nan inf": _raw_wav(
            _fmt(tag=3, bits=32), np.array([np.nan, np.inf, -np.inf, 0.5] * 64, "<f4").tobytes()
        ),
        "wav two data chunks": _riff((b"fmt ", _fmt()), (b"data", pcm), (b"data", pcm)),
        "wav odd chunk": _riff((b"junk", b"abc"), (b"fmt ", _fmt()), (b"data", pcm)),
        "rf64 no ds64": b"RF64\xff\xff\xff\xffWAVE" + b"fmt \x10\x00\x00\x00" + _fmt() + b"data\xff\xff\xff\xff" + pcm,
        "bw64 ds64": b"BW64\xff\xff\xff\xffWAVEds64\x1c\x00\x00\x00"
        + bytes(28)
        + b"fmt \x10\x00\x00\x00"
        + _fmt()
        + b"data\xff\xff\xff\xff"
        + pcm,
        "flac header only": flac[:42],
        "flac streaminfo zeroed": flac[:8] + bytes(34) + flac[42:],
        "flac cut": flac[: len(flac) // 3],
        "ogg page only": ogg[:27],
        "ogg cut": ogg[: len(ogg) // 2],
        "ogg opus head 255 channels": ogg.replace(b"OpusHead\x01\x01", b"OpusHead\x01\xff", 1),
        "ebml magic only": bytes.fromhex("1a45dfa3"),
        "ebml huge size": bytes.fromhex("1a45dfa3 01ffffffffffffff 4286810142f7810142f2810442f381084282847765626d"),
        "webm cut": webm[: len(webm) // 2],
        "id3 past the end": b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f" + bytes(16),
        "id3 footer flag": b"ID3\x04\x00\x10\x00\x00\x00\x00" + bytes(10) + mp3,
        "id3 then flac magic cut": b"ID3\x04\x00\x00\x00\x00\x00\x00fLaC",
        "mpeg frame header then junk": b"\xff\xfb\x90\x64" + bytes(range(256)) * 4,
        "mpeg free format": b"\xff\xfb\x00\x00" * 300,
        "mp3 cut": mp3[: len(mp3) // 2],
    }


# --- mutations ----------------------------------------------------------------------------

_INTS_32 = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]
_INTS_16 = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF]


@st.composite
def mutated(draw: st.DrawFn, pool: dict[str, bytes], max_ops: int = 4) -> bytes:
    """One seed from ``pool``, changed by up to ``max_ops`` mutations. Offsets favour the first
    64 bytes, where the headers a parser trusts are."""
    name = draw(st.sampled_from(sorted(pool)), label="seed")
    data = bytearray(pool[name])
    others = sorted(pool)
    for _ in range(draw(st.integers(0, max_ops), label="mutations")):
        size = len(data)
        where = draw(st.one_of(st.integers(0, min(size, 64)), st.integers(0, size)), label="offset")
        op = draw(st.sampled_from(["truncate", "byte", "int32", "int16", "insert", "delete", "duplicate", "splice"]))
        if op == "truncate":
            del data[where:]
        elif op == "byte" and where < size:
            data[where] = draw(st.integers(0, 255))
        elif op == "int32" and where + 4 <= size:
            value = draw(st.one_of(st.sampled_from([*_INTS_32, size, size - where]), st.integers(0, 2**32 - 1)))
            data[where : where + 4] = struct.pack("<I", value % 2**32)
        elif op == "int16" and where + 2 <= size:
            data[where : where + 2] = struct.pack("<H", draw(st.sampled_from(_INTS_16)))
        elif op == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del data[where : where + draw(st.integers(1, 256))]
        elif op == "duplicate":
            piece = data[where : where + draw(st.integers(1, 512))]
            data[where:where] = piece * draw(st.integers(1, 4))
        elif op == "splice":
            other = pool[draw(st.sampled_from(others))]
            data[where:] = other[draw(st.integers(0, len(other))) :]
    return bytes(data)


_MAGICS = [b"RIFF\x00\x00\x00\x00WAVE", b"RIFF\xff\xff\xff\xffWAVEfmt ", b"RF64", b"fLaC", b"OggS", b"\x1a\x45\xdf\xa3"]
_MAGICS += [b"ID3\x04\x00\x00\x00\x00\x00\x00", b"\xff\xfb\x90\x64", b"\xff\xf3", b"\xff\xe2"]


def audio_bytes() -> st.SearchStrategy[bytes]:
    """Anything a client could send as audio: mutated seeds most often, then a signature in
    front of random bytes (which reaches a demuxer), then plain random bytes."""
    pool = {**valid_files(), **malformed_files()}
    return st.one_of(
        mutated(pool),
        st.builds(lambda magic, tail: magic + tail, st.sampled_from(_MAGICS), st.binary(max_size=1_024)),
        st.binary(max_size=512),
    )


# --- content types ------------------------------------------------------------------------

_PCM_TYPES = [
    "audio/pcm;rate=16000",
    "audio/L16; rate=16000; channels=1",
    'audio/s16le; rate="16000"',
    "audio/x-raw",
    "audio/raw; rate=8000",
    "audio/pcm; channels=2",
    "audio/pcm;rate",
    "audio/pcm; rate=16000; rate=44100",
]
_WRONG_TYPES = ["text/plain", "application/json", "multipart/form-data", "video/mp4", "image/png", "application/sdp"]
_WRONG_TYPES += [
    "application/vnd.apple.mpegurl",
    "application/dash+xml",
    "audio/x-mpegurl",
    "audio/mpegurl",
    ";;;",
    " ",
]
CONTENT_TYPES = sorted({*[t for t in LABELS if t], *DECLARED_FORMATS, *_PCM_TYPES, *_WRONG_TYPES, "AUDIO/WAV; x=y"})


def content_types() -> st.SearchStrategy[str | None]:
    """Declared types a sender may use: none, the accepted ones, raw PCM with good and bad
    parameters, plainly wrong ones, and arbitrary text."""
    return st.one_of(st.none(), st.sampled_from(CONTENT_TYPES), st.text(max_size=40))


# --- demuxer tricks -----------------------------------------------------------------------

# Where a trick points: the planted file by every name FFmpeg would accept, protocol strings
# that wrap it, and the network. ``{abs}`` is the planted file's absolute path, ``{b64}`` the
# canary WAV itself, inline (the data: protocol reads no file, so only the canary check sees it).
TARGETS = [
    PLANTED,
    f"./{PLANTED}",
    f"file:{PLANTED}",
    "{abs}",
    "file:{abs}",
    "file://{abs}",
    f"concat:{PLANTED}|{PLANTED}",
    f"subfile,,start,0,end,0,,:{PLANTED}",
    f"async:file:{PLANTED}",
    f"cache:file:{PLANTED}",
    "data:audio/wav;base64,{b64}",
    "pipe:0",
    f"http://127.0.0.1:9/{PLANTED}",
    "tcp://127.0.0.1:9",
    "udp://127.0.0.1:5004",
    "rtp://127.0.0.1:5004",
    "x%03d.wav",
    "x*.wav",
]
_SDP = (
    "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
    "m=audio 5004 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
TEMPLATES: dict[str, str] = {
    "ffconcat": "ffconcat version 1.0\nfile '{t}'\n",
    "ffconcat directives": "ffconcat version 1.0\nfile {t}\nduration 1.0\ninpoint 0\noption safe 0\nfile '{t}'\n",
    "sdp": _SDP.replace("{host}", "127.0.0.1"),
    "sdp multicast": _SDP.replace("{host}", "239.255.0.1/16"),
    "hls": "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-VERSION:3\n#EXTINF:1.0,\n{t}\n#EXT-X-ENDLIST\n",
    "hls master": '#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=64000,CODECS="mp4a.40.2"\n{t}\n',
    "dash": '<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
    'mediaPresentationDuration="PT1S"><Period><AdaptationSet mimeType="audio/wav"><Representation '
    'id="a" bandwidth="256000"><BaseURL>{t}</BaseURL></Representation></AdaptationSet></Period></MPD>\n',
    "dash template": '<MPD type="static" mediaPresentationDuration="PT1S"><Period><AdaptationSet>'
    '<SegmentTemplate media="{t}" initialization="{t}" duration="1"/><Representation id="a" '
    'bandwidth="1"/></AdaptationSet></Period></MPD>',
    "bare target": "{t}",
    "bare target newline": "{t}\n",
}
# Prefixes that change nothing for a lenient reader: whitespace, byte-order marks, NULs. Junk is
# lowercase ASCII, which can never spell an accepted signature (RIFF, fLaC, OggS, ID3) nor an
# MPEG sync byte, so a plain-text trick behind it must always be refused.
_PREFIXES = [b"", b" ", b"\n", b"\r\n", b"\t \n", b"\xef\xbb\xbf", b"\x00", b"\x00\x00\x00\x00", b"\xef\xbb\xbf\n"]
_JUNK = st.text(alphabet=" \t\r\n#;,.-_=/0123456789abcdefghijklmnopqrstuvwxyz", max_size=12).map(str.encode)
# How a trick is wrapped: not at all, or behind / inside something with an accepted signature.
EMBEDDINGS = [
    "none",
    "after valid file",
    "after signature",
    "in wav list chunk",
    "as wav data",
    "in id3 tag",
    "before valid file",
]


@dataclass(frozen=True)
class Trick:
    """One mutated demuxer trick; :meth:`render` makes its bytes once the planted path is known."""

    template: str
    target: str
    case: str
    eol: str
    spaces: str
    encoding: str
    prefix: bytes
    embedding: str
    host: str  # the valid file or signature it is embedded in, when it is

    def text(self, planted: Path) -> str:
        target = self.target.replace("{abs}", str(planted)).replace("{b64}", base64.b64encode(CANARY_WAV).decode())
        text = TRICKS[self.template].decode("latin-1") if self.template in TRICKS else TEMPLATES[self.template]
        text = text.replace("{t}", target)
        text = {"keep": text, "upper": text.upper(), "lower": text.lower(), "swap": text.swapcase()}[self.case]
        if self.eol != "keep":
            text = text.replace("\r\n", "\n").replace("\n", self.eol)
        return text.replace(" ", self.spaces)

    @property
    def plain_text(self) -> bool:
        """Text behind harmless prefixes, in nothing with a signature: must always be refused."""
        return self.embedding == "none" and self.encoding == "utf-8"

    def render(self, planted: Path) -> bytes:
        body = self.prefix + self.text(planted).encode(self.encoding)
        files = valid_files()
        if self.embedding == "after valid file":
            return files[self.host] + body
        if self.embedding == "before valid file":
            return body + files[self.host]
        if self.embedding == "after signature":
            return _MAGICS[int(self.host)] + body
        if self.embedding == "in wav list chunk":
            return _raw_wav(_fmt(), bytes(3_200), before=((b"LIST", body),))
        if self.embedding == "as wav data":
            return _raw_wav(_fmt(), body)
        if self.embedding == "in id3 tag":
            size = len(body)
            syncsafe = bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0))
            return b"ID3\x04\x00\x00" + syncsafe + body + files[self.host]
        return body


@st.composite
def tricks(draw: st.DrawFn) -> Trick:
    """The demuxer tricks, mutated: prefixes, case, line endings, spacing, UTF-16, and embedding
    behind, in front of or inside real audio."""
    embedding = draw(st.sampled_from(EMBEDDINGS))
    if embedding == "after signature":
        host = str(draw(st.integers(0, len(_MAGICS) - 1)))
    elif embedding in ("after valid file", "before valid file", "in id3 tag"):
        host = draw(st.sampled_from(sorted(valid_files())))
    else:
        host = ""
    return Trick(
        template=draw(st.sampled_from(sorted({*TRICKS, *TEMPLATES}))),
        target=draw(st.sampled_from(TARGETS)),
        case=draw(st.sampled_from(["keep", "keep", "upper", "lower", "swap"])),
        eol=draw(st.sampled_from(["keep", "\n", "\r\n", "\r"])),
        spaces=draw(st.sampled_from([" ", " ", "\t", "  "])),
        encoding=draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16"])),
        prefix=draw(st.one_of(st.sampled_from(_PREFIXES), _JUNK)),
        embedding=embedding,
        host=host,
    )


TRICK_LABELS = [*LABELS, "audio/pcm;rate=16000", "audio/x-mpegurl", "application/vnd.apple.mpegurl", "application/sdp"]
