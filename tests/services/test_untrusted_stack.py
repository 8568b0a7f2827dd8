"""Untrusted input against the real services (uvicorn processes, real models).

A second stack runs in a working directory that holds ``x.wav``, a real spoken sentence: a body
that tells FFmpeg to read ``x.wav`` (ffconcat, playlists, URLs) must be refused with 415
before anything is opened, with nothing in the answer that names the file or transcribes it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator

import httpx
import pytest

from services.local_stack import Stack, free_ports
from tests.conftest import ADMIN_TOKEN, wav_bytes
from tests.services.test_untrusted_audio import PLANTED, SDP, TRICKS

pytestmark = pytest.mark.slow
WAV = {"content-type": "audio/wav"}
FOREIGN = "http://evil.example"
ALLOWED = "https://ui.example.test"
RAW_ENDPOINTS = ["proxy:/transcribe", "proxy:/detect", "base:/transcribe-chunk", "tiny:/detect"]
FORM_ENDPOINTS = ["proxy:/v1/audio/transcriptions", "base:/v1/audio/transcriptions"]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, librivox) -> Iterator[Stack]:
    """tiny (Silero only), base and proxy, run in a directory holding x.wav (real speech), with
    one allowed web origin."""
    work = tmp_path_factory.mktemp("service-cwd")
    shutil.copy(librivox[0].path, work / PLANTED)
    ports = dict(zip(("tiny", "base", "proxy"), free_ports(3), strict=True))
    env = {"STT_DETECTORS": "silero", "STT_ALLOWED_ORIGINS": ALLOWED, "STT_LOG_FORMAT": "json"}
    env.update({k: v for k, v in os.environ.items() if k.startswith("STT_MODEL_CACHE")})
    s = Stack(ports=ports, env=env, run_dir=tmp_path_factory.mktemp("sandbox-run"), cwd=work)
    try:
        s.up()
        yield s
    finally:
        s.down()


def post(stack: Stack, endpoint: str, body: bytes, content_type: str | None) -> httpx.Response:
    """POST ``body`` raw, or as the multipart ``file`` part for the OpenAI-style endpoints."""
    service, path = endpoint.split(":")
    url = f"{stack.url(service)}{path}"
    if endpoint in FORM_ENDPOINTS:
        part = ("upload", body, content_type) if content_type else ("upload", body)
        return httpx.post(url, files={"file": part}, timeout=60)
    headers = {"content-type": content_type} if content_type else {}
    return httpx.post(url, content=body, headers=headers, timeout=60)


def test_the_planted_file_is_real_speech(sandbox: Stack, librivox) -> None:
    """Without this, a refused trick would prove nothing: sent as itself, x.wav transcribes."""
    r = post(sandbox, "proxy:/transcribe", wav_bytes(librivox[0].path), "audio/wav")
    assert r.status_code == 200 and len(r.json()["text"].split()) >= 3


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "audio/wav", "audio/mpeg"])
@pytest.mark.parametrize("endpoint", RAW_ENDPOINTS + FORM_ENDPOINTS)
def test_ffconcat_body_cannot_read_a_file_of_the_service(sandbox: Stack, endpoint: str, content_type) -> None:
    answers = []
    for name in (PLANTED, "missing.wav"):
        body = f"ffconcat version 1.0\nfile '{name}'\n".encode()
        r = post(sandbox, endpoint, body, content_type)
        assert r.status_code == 415, r.text
        error = r.json()["error"]
        assert error["code"] == "not_audio"
        assert name not in r.text and "Errno" not in r.text
        assert "text" not in r.json() and "speech" not in r.json()  # nothing was transcribed or detected
        answers.append(r.json())
    assert answers[0] == answers[1]  # whether the file exists cannot be told from the answer


@pytest.mark.parametrize("endpoint", RAW_ENDPOINTS + FORM_ENDPOINTS)
def test_sdp_body_is_refused_within_a_second(sandbox: Stack, endpoint: str) -> None:
    assert len(SDP) < 100
    start = time.perf_counter()
    r = post(sandbox, endpoint, SDP, None)
    elapsed = time.perf_counter() - start
    assert r.status_code == 415, r.text
    assert elapsed < 1.0, f"{elapsed:.1f} s: FFmpeg waited on sockets"


@pytest.mark.parametrize("trick", [t for t in TRICKS if t not in ("ffconcat", "sdp")])
def test_other_demuxer_tricks_are_refused(sandbox: Stack, trick: str) -> None:
    for endpoint in ("proxy:/transcribe", "proxy:/v1/audio/transcriptions"):
        r = post(sandbox, endpoint, TRICKS[trick], "application/octet-stream")
        assert r.status_code == 415 and r.json()["error"]["code"] == "not_audio", r.text
        assert PLANTED not in r.text


@pytest.mark.parametrize("endpoint", RAW_ENDPOINTS)
@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "image/png"])
def test_declared_non_audio_gets_415_saying_what_to_send(stack: Stack, librivox, endpoint: str, content_type) -> None:
    r = post(stack, endpoint, wav_bytes(librivox[0].path), content_type)
    assert r.status_code == 415, r.text
    error = r.json()["error"]
    assert error["code"] == "unsupported_media_type" and "audio/wav" in error["message"]


def test_text_fields_are_bounded_everywhere(stack: Stack, librivox) -> None:
    audio = wav_bytes(librivox[1].path)
    files = {"file": ("clip.wav", audio, "audio/wav")}
    for service in ("proxy", "base"):
        url = f"{stack.url(service)}/v1/audio/transcriptions"
        long_prompt = httpx.post(url, files=files, data={"prompt": "word " * 401}, timeout=60)
        assert long_prompt.status_code == 422, long_prompt.text
        assert long_prompt.json()["error"]["code"] == "field_too_long" and "2000" in long_prompt.text
        huge_prompt = httpx.post(url, files=files, data={"prompt": "p" * 20_000_000}, timeout=60)
        assert huge_prompt.status_code == 413 and huge_prompt.json()["error"]["code"] == "form_field_too_large"
        for name, value in [("language", "e" * 33), ("model", "m" * 129), ("response_format", "j" * 33)]:
            r = httpx.post(url, files=files, data={name: value}, timeout=60)
            assert r.status_code == 422 and name in r.json()["error"]["message"], r.text
        many = httpx.post(url, files=files, data={f"extra{i}": "x" for i in range(100)}, timeout=60)
        assert many.status_code == 413 and many.json()["error"]["code"] == "too_many_form_fields"
    at_limit = httpx.post(
        f"{stack.proxy_url}/v1/audio/transcriptions",
        files=files,
        data={"prompt": ("I'll tell you a story. " * 100)[:2000], "language": "en"},
        timeout=120,
    )
    assert at_limit.status_code == 200 and at_limit.json()["text"], at_limit.text
    query = httpx.post(f"{stack.proxy_url}/transcribe?prompt={'p' * 2001}", content=audio, headers=WAV)
    assert query.status_code == 422 and "prompt" in query.json()["error"]["message"]
    lang = httpx.post(f"{stack.proxy_url}/transcribe?language={'e' * 5000}", content=audio, headers=WAV)
    assert lang.status_code == 422 and "e" * 100 not in lang.text  # not echoed back


def test_raw_pcm_over_the_chunk_limit_is_413(stack: Stack) -> None:
    pcm = bytes(16_000 * 2 * 31)
    for endpoint in ("proxy:/transcribe", "tiny:/detect"):
        r = post(stack, endpoint, pcm, "audio/pcm;rate=16000")
        assert r.status_code == 413 and r.json()["error"]["code"] == "audio_too_long", r.text


def test_foreign_origin_may_not_post_anywhere(stack: Stack, librivox) -> None:
    audio = wav_bytes(librivox[2].path)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    calls = [
        ("proxy", "/transcribe", {"content": audio, "headers": WAV}),
        ("proxy", "/detect", {"content": audio, "headers": WAV}),
        ("proxy", "/v1/audio/transcriptions", {"files": {"file": ("a.wav", audio, "audio/wav")}}),
        ("proxy", "/gpu-toggle", {"json": {"mode": "gpu"}, "headers": auth}),
        ("base", "/transcribe-chunk", {"content": audio, "headers": WAV}),
        ("base", "/v1/audio/transcriptions", {"files": {"file": ("a.wav", audio, "audio/wav")}}),
        ("tiny", "/detect", {"content": audio, "headers": WAV}),
    ]
    for service, path, kwargs in calls:
        # Another site, "null" (sandboxed frames, file:// pages) and a sibling service's origin.
        for origin in (FOREIGN, "null", stack.url("tiny" if service != "tiny" else "base")):
            headers = {**kwargs.get("headers", {}), "origin": origin}
            r = httpx.post(f"{stack.url(service)}{path}", **{**kwargs, "headers": headers}, timeout=60)
            assert r.status_code == 403, f"{service}{path} from {origin}: {r.status_code} {r.text}"
            error = r.json()["error"]
            assert error["code"] == "origin_not_allowed" and "STT_ALLOWED_ORIGINS" in error["message"]
    assert httpx.get(f"{stack.proxy_url}/gpu-status", headers={"origin": FOREIGN}).json()["mode"] == "cpu"
    # The service's own pages (e.g. /docs) and clients without Origin are served.
    for service, path in (("proxy", "/transcribe"), ("base", "/transcribe-chunk"), ("tiny", "/detect")):
        own = httpx.post(
            f"{stack.url(service)}{path}", content=audio, headers={**WAV, "origin": stack.url(service)}, timeout=60
        )
        assert own.status_code == 200, own.text
        assert httpx.post(f"{stack.url(service)}{path}", content=audio, headers=WAV, timeout=60).status_code == 200


def test_allowed_origin_setting_is_honoured(sandbox: Stack, librivox) -> None:
    audio = wav_bytes(librivox[2].path)
    url = f"{sandbox.proxy_url}/transcribe"
    assert httpx.post(url, content=audio, headers={**WAV, "origin": ALLOWED}, timeout=60).status_code == 200
    assert httpx.post(url, content=audio, headers={**WAV, "origin": FOREIGN}, timeout=60).status_code == 403
    tiny = httpx.post(f"{sandbox.tiny_url}/detect", content=audio, headers={**WAV, "origin": ALLOWED}, timeout=60)
    assert tiny.status_code == 200 and tiny.json()["speech"] is True
