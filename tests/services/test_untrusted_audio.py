"""Untrusted uploads, in process and fast (no models): FFmpeg must never be talked into opening
a file, socket or URL; declared non-audio is refused early; text fields and raw PCM are bounded
before they cost memory; foreign web origins may not POST.

The stack-level proofs (real processes, a planted file in the services' working directory)
are in test_untrusted_stack.py.
"""

from __future__ import annotations

import io
import shutil
import time
import tracemalloc
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request

from client.sources import SourceError, file_source
from core.audio import (
    FFMPEG_GUARD,
    AudioError,
    AudioLimits,
    decode_audio,
    sniff_format,
    to_wav_bytes,
)
from services.common.app import create_app
from services.common.errors import install_error_handlers
from services.common.settings import ServiceSettings, SettingsError, load_settings, normalize_origin, parse_origins
from services.common.upload import MAX_FORM_FIELD_BYTES, form_text, read_upload
from tests.services.test_audio import encode, tone

LIMITS = AudioLimits(max_seconds=30)
RATE = 16_000
PLANTED = "x.wav"

# 84 bytes of SDP: unguarded, FFmpeg opens UDP sockets for it and waits ~20 s for RTP.
SDP = b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"
TRICKS: dict[str, bytes] = {
    "ffconcat": f"ffconcat version 1.0\nfile '{PLANTED}'\n".encode(),
    "sdp": SDP,
    "hls": f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:1.0,\n{PLANTED}\n#EXT-X-ENDLIST\n".encode(),
    "dash": (
        '<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
        'mediaPresentationDuration="PT1S"><Period><AdaptationSet mimeType="audio/wav">'
        f'<Representation id="a" bandwidth="256000"><BaseURL>{PLANTED}</BaseURL></Representation>'
        "</AdaptationSet></Period></MPD>\n"
    ).encode(),
    "image2 pattern": b"x%03d.wav",
    "image2 png": b"\x89PNG\r\n\x1a\n" + bytes(64),
    "file: url": f"file:{PLANTED}".encode(),
    "http url": f"http://127.0.0.1:9/{PLANTED}".encode(),
}
# Every way a sender may label a body that is then sniffed or handed to a declared demuxer.
LABELS = [None, "application/octet-stream", "audio/wav", "audio/flac", "audio/mpeg", "audio/ogg", "video/webm"]


@pytest.fixture
def planted_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding x.wav: one second of tone that the tricks point at."""
    (tmp_path / PLANTED).write_bytes(to_wav_bytes(tone(1.0)))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("trick", list(TRICKS))
def test_demuxer_tricks_are_refused_at_once(planted_cwd: Path, trick: str, label: str | None) -> None:
    start = time.perf_counter()
    with pytest.raises(AudioError) as err:
        decode_audio(TRICKS[trick], label, LIMITS)
    assert time.perf_counter() - start < 1.0  # no socket was opened and waited on
    assert err.value.status == 415 and err.value.code == "not_audio"
    assert PLANTED not in err.value.message and "Errno" not in err.value.message
    assert "WAV" in err.value.message  # says what to send instead


def test_a_reference_to_a_file_that_exists_answers_like_one_that_does_not(planted_cwd: Path) -> None:
    """Nothing in the answer may tell a stranger which files exist on the server."""
    answers = []
    for name in (PLANTED, "missing.wav"):
        with pytest.raises(AudioError) as err:
            decode_audio(f"ffconcat version 1.0\nfile '{name}'\n".encode(), "audio/wav", LIMITS)
        answers.append((err.value.status, err.value.code, err.value.message))
    assert answers[0] == answers[1]


@pytest.mark.parametrize("trick", ["ffconcat", "hls"])
def test_ffmpeg_itself_refuses_other_demuxers_and_every_protocol(planted_cwd: Path, trick: str) -> None:
    """Defence in depth, checked on the installed PyAV/FFmpeg: even if a forbidden demuxer were
    named, FFMPEG_GUARD makes FFmpeg refuse it, and refuse the nested open of the file."""
    demuxer = "concat" if trick == "ffconcat" else "hls"
    unguarded_opens = True
    try:
        with av.open(io.BytesIO(TRICKS["ffconcat"]), format="concat") as c:
            assert sum(f.samples for f in c.decode(c.streams.audio[0])) > 0
    except av.FFmpegError:
        unguarded_opens = False
    assert unguarded_opens, "the ffconcat trick should work without the guard, or this test proves nothing"
    with pytest.raises(av.FFmpegError):
        av.open(io.BytesIO(TRICKS[trick]), format=demuxer, container_options=FFMPEG_GUARD)
    # Only the protocol guard: the demuxer is allowed, the nested open of x.wav is not.
    only_protocols = {**FFMPEG_GUARD, "format_whitelist": f"{demuxer},wav"}
    with (
        pytest.raises(av.FFmpegError),
        av.open(io.BytesIO(TRICKS[trick]), format=demuxer, container_options=only_protocols) as c,
    ):
        for _ in c.decode(c.streams.audio[0]):
            pass


def sine_files() -> dict[str, bytes]:
    samples = tone(1.0)
    return {
        "wav": to_wav_bytes(samples),
        "flac": encode(samples, "flac", "flac"),
        "mp3": encode(samples, "mp3", "libmp3lame"),
        "ogg": encode(samples, "ogg", "libopus"),
        "webm": encode(samples, "webm", "libopus"),
        "mkv": encode(samples, "matroska", "libopus"),
    }


FILES = sine_files()
TYPES = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "webm": "video/webm",
    "mkv": "video/x-matroska",
}


@pytest.mark.parametrize("label", ["declared", None, "application/octet-stream"])
@pytest.mark.parametrize("kind", list(FILES))
def test_every_accepted_format_still_decodes(kind: str, label: str | None) -> None:
    content_type = TYPES[kind] if label == "declared" else label
    samples = decode_audio(FILES[kind], content_type, LIMITS)
    assert 0.8 * RATE < samples.size < 1.2 * RATE
    assert np.abs(samples).max() > 0.2


def test_mp3_without_id3_tag_and_flac_behind_one() -> None:
    samples = tone(1.0)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp3", container_options={"id3v2_version": "0"}) as out:
        stream = out.add_stream("libmp3lame", rate=RATE)
        stream.layout = "mono"
        for start in range(0, samples.size, 1152):
            frame = av.AudioFrame.from_ndarray(samples[None, start : start + 1152], format="flt", layout="mono")
            frame.sample_rate = RATE
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    bare = buffer.getvalue()
    assert bare[:3] != b"ID3" and sniff_format(bare) == "mp3"
    assert decode_audio(bare, None, LIMITS).size > 0.8 * RATE
    tagged_flac = b"ID3\x04\x00\x00\x00\x00\x00\x0a" + bytes(10) + FILES["flac"]
    assert sniff_format(tagged_flac) == "flac"
    assert decode_audio(tagged_flac, None, LIMITS).size > 0.8 * RATE


@pytest.mark.parametrize("kind", list(FILES))
def test_client_file_source_reads_every_accepted_format(tmp_path: Path, kind: str) -> None:
    """``stt-client --file`` labels files by extension (mimetypes) and uses the same decoder."""
    path = tmp_path / f"talk.{kind}"
    path.write_bytes(FILES[kind])
    assert 0.8 * RATE < file_source(path).samples.size < 1.2 * RATE
    if kind == "ogg":
        opus = tmp_path / "talk.opus"
        shutil.copy(path, opus)
        assert file_source(opus).samples.size > 0.8 * RATE


def test_client_file_source_refuses_a_playlist(planted_cwd: Path) -> None:
    playlist = planted_cwd / "list.txt"
    playlist.write_bytes(TRICKS["ffconcat"])
    with pytest.raises(SourceError, match="not audio"):
        file_source(playlist)  # .txt: declared text/plain
    unlabelled = planted_cwd / "list.ffconcat"
    unlabelled.write_bytes(TRICKS["ffconcat"])
    with pytest.raises(SourceError, match="not in an accepted audio format") as err:
        file_source(unlabelled)
    assert f"'{PLANTED}'" not in str(err.value)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/json", "text/html; charset=utf-8", "image/png", "video/mp4"]
)
def test_declared_non_audio_is_refused_before_decoding(content_type: str) -> None:
    with pytest.raises(AudioError) as err:
        decode_audio(FILES["wav"], content_type, LIMITS)  # even valid audio: the label is the problem
    assert err.value.status == 415 and err.value.code == "unsupported_media_type"
    assert "audio/wav" in err.value.message and "application/octet-stream" in err.value.message


def test_raw_pcm_over_the_limit_is_refused_before_conversion() -> None:
    """Ten minutes of PCM (19 MB) for a 30 s endpoint: refused from its length alone, without
    the float32 copy (38 MB, twice) that used to be made first."""
    pcm = bytes(RATE * 2 * 600)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with pytest.raises(AudioError) as err:
            decode_audio(pcm, "audio/pcm;rate=16000", LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.status == 413 and err.value.code == "audio_too_long"
    assert peak < 1024 * 1024, f"{peak} bytes allocated to refuse it"


# --- multipart text fields -------------------------------------------------------------


def form_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/form")
    async def form(request: Request) -> dict:
        upload = await read_upload(request, 50 * 1024 * 1024)
        return {"prompt": form_text(upload.fields or {}, "prompt", 2000), "bytes": len(upload.data)}

    return app


async def post_form(data: dict, files: dict | None = None) -> httpx.Response:
    files = files or {"file": ("a.wav", FILES["wav"], "audio/wav")}
    transport = httpx.ASGITransport(app=form_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.post("/form", data=data, files=files)


async def test_multipart_text_fields_are_bounded() -> None:
    ok = await post_form({"prompt": "p" * 2000})
    assert ok.status_code == 200 and len(ok.json()["prompt"]) == 2000
    long = await post_form({"prompt": "p" * 2001})
    assert long.status_code == 422 and long.json()["error"]["code"] == "field_too_long"
    assert "prompt" in long.json()["error"]["message"] and "2000" in long.json()["error"]["message"]
    huge = await post_form({"prompt": "p" * (MAX_FORM_FIELD_BYTES + 1)})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "form_field_too_large"
    many = await post_form({f"f{i}": "x" for i in range(100)})
    assert many.status_code == 413 and many.json()["error"]["code"] == "too_many_form_fields"
    # Audio sent as a text field (no filename) is told how to send it.
    as_text = await post_form({"file": "x" * (MAX_FORM_FIELD_BYTES + 1)}, files={"other": ("b", b"", "audio/wav")})
    assert as_text.status_code == 413 and "file=@" in as_text.json()["error"]["message"]


async def test_raw_body_declared_as_text_is_refused_before_it_is_read() -> None:
    transport = httpx.ASGITransport(app=form_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        r = await client.post("/form", content=FILES["wav"], headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


# --- Origin ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "normalized"),
    [
        ("http://127.0.0.1:5001", "http://127.0.0.1:5001"),
        ("HTTPS://UI.Example.com:443", "https://ui.example.com"),
        ("http://example.com:80", "http://example.com"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("null", None),
        ("*", None),
        ("https://ui.example.com/app", None),
        ("ftp://example.com", None),
        ("http://user@example.com", None),
        ("http://example.com:99999", None),
    ],
)
def test_normalize_origin(value: str, normalized: str | None) -> None:
    assert normalize_origin(value) == normalized


def test_allowed_origins_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STT_ALLOWED_ORIGINS", raising=False)
    assert load_settings(ServiceSettings).allowed_origins == ()  # documented default: none
    monkeypatch.setenv("STT_ALLOWED_ORIGINS", " https://ui.example.com , http://localhost:3000,")
    expected = ("https://ui.example.com", "http://localhost:3000")
    assert load_settings(ServiceSettings).allowed_origins == expected
    assert parse_origins(" https://ui.example.com , http://localhost:3000,") == expected
    for bad in ("*", "https://ui.example.com/path", "ui.example.com"):
        monkeypatch.setenv("STT_ALLOWED_ORIGINS", bad)
        with pytest.raises(SettingsError, match=r"STT_ALLOWED_ORIGINS=.*is not an origin"):
            load_settings(ServiceSettings)
        with pytest.raises(SettingsError, match="STT_ALLOWED_ORIGINS"):
            parse_origins(bad)


async def test_origin_check_on_every_post() -> None:
    from contextlib import asynccontextmanager
    from types import SimpleNamespace

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield

    app = create_app("origin-test", "test app", lifespan)
    app.state.settings = SimpleNamespace(allowed_origins=("https://ui.example.com",))

    @app.post("/work")
    async def work() -> dict:
        return {"done": True}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc.local:5001") as client:

        async def post(origin: str | None) -> httpx.Response:
            return await client.post("/work", headers={"origin": origin} if origin else {})

        assert (await post(None)).status_code == 200  # curl, stt-client, service to service
        assert (await post("http://svc.local:5001")).status_code == 200  # its own pages (/docs)
        assert (await post("https://ui.example.com")).status_code == 200  # allowlisted
        for foreign in ("http://evil.example", "http://svc.local:5002", "https://svc.local:5001", "null"):
            r = await post(foreign)
            assert r.status_code == 403, foreign
            assert r.json()["error"]["code"] == "origin_not_allowed"
            assert "STT_ALLOWED_ORIGINS" in r.json()["error"]["message"]
        gets = await client.get("/healthz", headers={"origin": "http://evil.example"})
        assert gets.status_code == 200  # reading is harmless; only state-changing methods are checked
