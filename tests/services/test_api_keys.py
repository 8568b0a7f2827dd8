"""Optional API keys on the proxy (services/proxy/api_keys.py).

First the pieces without a server: parsing the configured digests, hashing, the constant-time
comparison against every digest, the token bucket, where a key is read from, and keeping keys
out of logs. Then the real proxy as a uvicorn process (in front of a stub backend, so no model
is loaded) with keys on, called by OpenAI's own ``openai`` package, by plain HTTP and over both
WebSockets.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from fastapi import FastAPI, Request
from prometheus_client import REGISTRY
from starlette.requests import HTTPConnection

from client.api import PermanentError, RetryableError, SttApi
from services.common.openai_api import served_models
from services.common.settings import SettingsError, load_settings
from services.proxy import api_keys
from services.proxy.api_keys import (
    ApiKey,
    ApiKeyGuard,
    RedactApiKeyFilter,
    RefusedError,
    choose_subprotocol,
    hash_key,
    parse_file,
    parse_list,
    presented_key,
)
from services.proxy.settings import ProxySettings
from tests.services.proxy_harness import ThreadedServer, running_proxy

ALICE, BOB, CAROL = "sk-alice-0123456789abcdef", "sk-bob-fedcba9876543210", "sk-carol-55555"


def digest(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


# --- configuration ------------------------------------------------------------------------------


def test_a_key_is_configured_by_the_sha256_hex_of_its_text() -> None:
    # printf %s 'sk-alice-0123456789abcdef' | sha256sum
    assert hash_key(ALICE) == digest(ALICE) and len(hash_key(ALICE)) == 64
    assert hash_key("clé") == digest("clé")  # UTF-8


def test_the_key_file_format() -> None:
    text = f"""
    # API keys of the stt proxy: name:sha256hex
    alice:{digest(ALICE)}
      bob : {digest(BOB).upper()}   # upper-case hex is the same digest
    alice:{digest("sk-alice-new")}  # rotation: a second key under the same name
    """
    keys = parse_file(text, "keys")
    assert [k.name for k in keys] == ["alice", "bob", "alice"]
    assert keys[1].digest == bytes.fromhex(digest(BOB))
    assert parse_file("# nothing\n\n", "keys") == []


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("alice", "line 1: expected 'name:sha256hex'"),
        (f"\n:{digest(ALICE)}", "line 2: expected 'name:sha256hex'"),
        (f"al ice:{digest(ALICE)}", "expected 'name:sha256hex'"),
        (f"alice:{ALICE}", "not the key itself"),  # the plaintext key where its digest belongs
        (f"alice:{digest(ALICE)[:-1]}", "64 hex digits"),
        (f"alice:{digest(ALICE)}\nbob:{digest(ALICE)}", "'alice' and 'bob' have the same digest"),
    ],
)
def test_a_bad_key_file_is_refused_with_the_line_and_never_the_value(text: str, says: str) -> None:
    with pytest.raises(SettingsError) as refused:
        parse_file(text, "keys")
    assert says in str(refused.value)
    assert ALICE not in str(refused.value) and digest(ALICE) not in str(refused.value)


def test_the_env_list_format() -> None:
    keys = parse_list(f" alice:{digest(ALICE)} ,, bob:{digest(BOB)},", "STT_API_KEY_HASHES")
    assert [k.name for k in keys] == ["alice", "bob"]
    with pytest.raises(SettingsError, match="STT_API_KEY_HASHES entry 2"):
        parse_list(f"alice:{digest(ALICE)},bob", "STT_API_KEY_HASHES")


def guard_from_env() -> ApiKeyGuard:
    """The guard the proxy builds from its settings, as it does at start-up."""
    settings = load_settings(ProxySettings)
    return ApiKeyGuard.from_settings(
        settings.api_keys_file, settings.api_key_hashes, settings.api_key_rate, settings.api_key_burst
    )


def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("STT_API_KEYS_FILE", "STT_API_KEY_HASHES", "STT_API_KEY_RATE", "STT_API_KEY_BURST"):
        monkeypatch.delenv(name, raising=False)
    off = guard_from_env()
    assert not off.enabled and off.check(None) is None  # unset: today's behaviour, no key needed
    monkeypatch.setenv("STT_API_KEY_HASHES", "")
    assert not guard_from_env().enabled

    file = tmp_path / "keys"
    file.write_text(f"alice:{digest(ALICE)}\n")
    monkeypatch.setenv("STT_API_KEYS_FILE", str(file))
    monkeypatch.setenv("STT_API_KEY_HASHES", f"bob:{digest(BOB)}")
    monkeypatch.setenv("STT_API_KEY_RATE", "0")
    guard = guard_from_env()
    assert guard.enabled and sorted(k.name for k in guard.keys) == ["alice", "bob"] and guard.rate == 0
    assert guard.check(ALICE) == "alice" and guard.check(BOB) == "bob"

    # A key file that lists no key closes the service rather than opening it.
    file.write_text("# emptied by mistake\n")
    monkeypatch.delenv("STT_API_KEY_HASHES")
    empty = guard_from_env()
    assert empty.enabled
    with pytest.raises(RefusedError):
        empty.check(ALICE)

    monkeypatch.setenv("STT_API_KEYS_FILE", str(tmp_path / "absent"))
    with pytest.raises(SettingsError, match="cannot read it"):
        guard_from_env()
    monkeypatch.setenv("STT_API_KEYS_FILE", str(file))
    monkeypatch.setenv("STT_API_KEY_BURST", "0")
    with pytest.raises(SettingsError, match="STT_API_KEY_BURST"):
        guard_from_env()


def test_a_changed_key_file_is_read_again(tmp_path: Path) -> None:
    """A rotated Secret reaches the pod's file; the proxy follows without a restart, and keeps
    its keys when the new file is broken."""
    now = [0.0]
    file = tmp_path / "keys"
    file.write_text(f"alice:{digest(ALICE)}\n")
    guard = ApiKeyGuard(parse_file(file.read_text(), "keys"), path=file, rate=0, clock=lambda: now[0])
    file.write_text(f"bob:{digest(BOB)}\n")
    assert guard.check(ALICE) == "alice"  # not looked at again before RELOAD_INTERVAL_S
    now[0] += api_keys.RELOAD_INTERVAL_S
    assert guard.check(BOB) == "bob"
    with pytest.raises(RefusedError):
        guard.check(ALICE)
    file.write_text("garbage\n" + " " * 10)
    now[0] += api_keys.RELOAD_INTERVAL_S
    assert guard.check(BOB) == "bob"


# --- comparing --------------------------------------------------------------------------------------


def test_every_digest_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """hmac.compare_digest against every configured digest, also after a match: neither an
    early exit nor ``==`` lets the answer's timing tell which key was close."""
    calls: list[tuple[bytes, bytes]] = []
    real = api_keys.hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api_keys.hmac, "compare_digest", recording)
    keys = [ApiKey(name, bytes.fromhex(digest(key))) for name, key in (("alice", ALICE), ("bob", BOB), ("c", CAROL))]
    guard = ApiKeyGuard(keys, rate=0)
    for presented, expected in ((ALICE, "alice"), (CAROL, "c"), ("sk-wrong", None)):
        calls.clear()
        assert guard.identify(presented) == expected
        assert [b for _, b in calls] == [k.digest for k in keys]  # all of them, in order
        assert {a for a, _ in calls} == {bytes.fromhex(digest(presented))}  # the presented key's digest


def test_the_plaintext_key_is_never_kept() -> None:
    guard = ApiKeyGuard(parse_list(f"alice:{digest(ALICE)}", "env"), rate=0)
    assert ALICE not in repr(vars(guard)) and ALICE.encode() not in repr(vars(guard)).encode()


# --- rate limit ---------------------------------------------------------------------------------


def test_token_bucket_per_key_with_retry_after_rounded_up() -> None:
    now = [100.0]
    keys = parse_list(f"alice:{digest(ALICE)},bob:{digest(BOB)}", "env")
    guard = ApiKeyGuard(keys, rate=0.25, burst=3, clock=lambda: now[0])
    assert [guard.check(ALICE) for _ in range(3)] == ["alice"] * 3  # the burst
    with pytest.raises(RefusedError) as refused:
        guard.check(ALICE)
    assert refused.value.code == "rate_limited" and refused.value.retry_after_s == 4  # 1 token / 0.25 per s
    error = refused.value.http_error()
    assert error.status == 429 and error.headers == {"Retry-After": "4"}
    assert guard.check(BOB) == "bob"  # another key has its own bucket
    now[0] += 1.5  # 0.375 of a token: 2.5 s still to go, said as 3
    with pytest.raises(RefusedError) as refused:
        guard.check(ALICE)
    assert refused.value.retry_after_s == 3
    now[0] += 2.5
    assert guard.check(ALICE) == "alice"
    now[0] += 3600  # refills to the burst, not beyond
    assert [guard.check(ALICE) for _ in range(3)] == ["alice"] * 3
    with pytest.raises(RefusedError):
        guard.check(ALICE)

    fast = ApiKeyGuard(keys, rate=2, burst=1, clock=lambda: now[0])
    fast.check(ALICE)
    with pytest.raises(RefusedError) as refused:
        fast.check(ALICE)
    assert refused.value.retry_after_s == 1  # 0.5 s, rounded up: never "Retry-After: 0"


def test_rate_zero_is_unlimited() -> None:
    guard = ApiKeyGuard(parse_list(f"alice:{digest(ALICE)}", "env"), rate=0, burst=1, clock=lambda: 0.0)
    assert all(guard.check(ALICE) == "alice" for _ in range(1000))


def test_refusals_are_counted_by_reason_and_key_name() -> None:
    def value(name: str, labels: dict) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    guard = ApiKeyGuard(parse_list(f"counted:{digest(ALICE)}", "env"), rate=1, burst=1, clock=lambda: 0.0)
    before = [
        value("stt_proxy_auth_refusals_total", {"reason": "missing"}),
        value("stt_proxy_auth_refusals_total", {"reason": "invalid"}),
        value("stt_proxy_rate_limited_total", {"key": "counted"}),
        value("stt_proxy_api_key_requests_total", {"key": "counted"}),
    ]
    for presented in (None, "", "sk-wrong", ALICE, ALICE):
        with contextlib.suppress(RefusedError):
            guard.check(presented)
    after = [
        value("stt_proxy_auth_refusals_total", {"reason": "missing"}),
        value("stt_proxy_auth_refusals_total", {"reason": "invalid"}),
        value("stt_proxy_rate_limited_total", {"key": "counted"}),
        value("stt_proxy_api_key_requests_total", {"key": "counted"}),
    ]
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 1, 1]


def test_a_missing_key_says_how_to_send_one() -> None:
    guard = ApiKeyGuard(parse_list(f"alice:{digest(ALICE)}", "env"))
    with pytest.raises(RefusedError) as refused:
        guard.check(None)
    error = refused.value.http_error()
    assert error.status == 401 and error.code == "missing_api_key"
    assert error.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer <key>" in error.message
    with pytest.raises(RefusedError) as refused:
        guard.check("sk-wrong")
    error = refused.value.http_error()
    assert (
        error.status == 401
        and error.code == "invalid_api_key"
        and 'error="invalid_token"' in error.headers["WWW-Authenticate"]
    )


# --- where a key comes from ---------------------------------------------------------------------


def connection(kind: str = "http", headers: dict | None = None, query: str = "", subprotocols=()) -> HTTPConnection:
    scope = {
        "type": kind,
        "path": "/v1/stream",
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    if kind == "websocket":
        scope["subprotocols"] = list(subprotocols)
    return HTTPConnection(scope)


def test_where_a_key_is_read_from() -> None:
    assert presented_key(connection(headers={"Authorization": f"Bearer {ALICE}"})) == ALICE
    assert presented_key(connection(headers={"Authorization": f"bearer   {ALICE} "})) == ALICE
    assert presented_key(connection(headers={"x-api-key": ALICE})) == ALICE
    assert presented_key(connection(headers={"Authorization": "Basic YTpi"})) is None
    assert presented_key(connection(headers={"Authorization": "Bearer "})) is None
    assert presented_key(connection()) is None
    offered = ["realtime", f"openai-insecure-api-key.{ALICE}", "openai-beta.realtime-v1"]
    assert presented_key(connection("websocket", subprotocols=offered)) == ALICE
    assert presented_key(connection(subprotocols=offered)) is None  # only a WebSocket offers subprotocols
    ws_query = connection("websocket", query=f"language=en&api_key={ALICE}")
    assert presented_key(ws_query, allow_query=True) == ALICE
    assert presented_key(ws_query) is None  # only where the endpoint allows it (/v1/stream)


def test_the_subprotocol_a_websocket_is_accepted_with() -> None:
    key = f"openai-insecure-api-key.{ALICE}"
    assert choose_subprotocol(["realtime", key, "openai-beta.realtime-v1"]) == "realtime"
    assert choose_subprotocol([key, "stt"]) == "stt"
    assert choose_subprotocol([key]) == key  # a browser fails the connection if none is picked
    assert choose_subprotocol([]) is None


def test_a_key_in_a_websocket_query_is_redacted_from_uvicorn_logs() -> None:
    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1:5555", f"/v1/stream?language=en&api_key={ALICE}&step_s=3"),
        None,
    )
    assert RedactApiKeyFilter().filter(record)
    line = record.getMessage()
    assert ALICE not in line and "api_key=[redacted]&step_s=3" in line and "language=en" in line


def test_stt_client_sends_the_key_from_stt_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        if request.headers.get("authorization") != f"Bearer {ALICE}":
            return httpx.Response(401, json={"error": {"code": "invalid_api_key", "message": "no"}})
        return httpx.Response(
            429, json={"error": {"code": "rate_limited", "message": "slow"}}, headers={"Retry-After": "3"}
        )

    async def run(api: SttApi) -> Exception:
        try:
            await api.detect(np.zeros(1600, np.int16))
        except (PermanentError, RetryableError) as exc:
            return exc
        finally:
            await api.aclose()
        raise AssertionError("no error")

    import asyncio

    monkeypatch.setenv("STT_API_KEY", ALICE)
    limited = asyncio.run(run(SttApi("http://proxy", transport=httpx.MockTransport(answer))))
    assert isinstance(limited, RetryableError) and limited.retry_after == 3.0 and "rate_limited" in str(limited)
    wrong = asyncio.run(run(SttApi("http://proxy", transport=httpx.MockTransport(answer), api_key="sk-other")))
    assert isinstance(wrong, PermanentError) and "invalid_api_key" in str(wrong)
    monkeypatch.delenv("STT_API_KEY")
    asyncio.run(run(SttApi("http://proxy", transport=httpx.MockTransport(answer))))
    assert seen == [f"Bearer {ALICE}", "Bearer sk-other", None]


# --- the real proxy -----------------------------------------------------------------------------


class StubBackend(ThreadedServer):
    """Stands in for base and tiny (no model): ready, one model, fixed answers; records the
    headers it is sent, so a test can show the key never travels on to a backend."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        app = FastAPI()

        @app.get("/readyz")
        async def readyz() -> dict:
            return {"status": "ready"}

        @app.get("/v1/models")
        async def models(request: Request) -> dict:
            self.headers.append(dict(request.headers))
            return {"object": "list", "data": served_models("base", 0)}

        @app.post("/v1/audio/transcriptions")
        async def transcriptions(request: Request) -> dict:
            self.headers.append(dict(request.headers))
            await request.body()
            return {"text": "stub transcript"}

        @app.post("/v1/audio/translations")
        async def translations(request: Request) -> dict:
            self.headers.append(dict(request.headers))
            return {"text": "stub transcript"}

        @app.post("/transcribe-chunk")
        async def chunk(request: Request) -> dict:
            self.headers.append(dict(request.headers))
            return {"text": "stub", "language": "en", "segments": []}

        @app.post("/detect")
        async def detect(request: Request) -> dict:
            self.headers.append(dict(request.headers))
            return {"speech": False, "probability": 0.0, "regions": []}

        super().__init__(app)


@pytest.fixture(scope="module")
def stub() -> Iterator[StubBackend]:
    with StubBackend() as backend:
        yield backend


@contextlib.contextmanager
def proxy(stub: StubBackend, tmp_path: Path, **env: str) -> Iterator[tuple[str, Path]]:
    """The real proxy (uvicorn, as the image runs it) with ``env``; yields its URL and log file."""
    with running_proxy(stub.url, tmp_path, **env) as url:
        yield url, tmp_path / "proxy.log"


@pytest.fixture(scope="module")
def keyed(stub: StubBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Keys alice and bob from a key file (as the chart mounts it), carol from the env list; no rate limit."""
    tmp = tmp_path_factory.mktemp("keyed")
    (tmp / "keys").write_text(f"# name:sha256\nalice:{hash_key(ALICE)}\nbob:{hash_key(BOB)}\n")
    with proxy(
        stub,
        tmp,
        STT_API_KEYS_FILE=str(tmp / "keys"),
        STT_API_KEY_HASHES=f"carol:{hash_key(CAROL)}",
        STT_API_KEY_RATE="0",
    ) as running:
        yield running


def sdk(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


WAV = b"RIFF" + b"\x00" * 40  # the stub does not decode it


def test_openai_sdk_with_the_right_key(keyed: tuple[str, Path], stub: StubBackend) -> None:
    url, _ = keyed
    models = sdk(url, ALICE).models.list()
    assert {m.id for m in models.data} == {"base", "whisper-1"}
    assert sdk(url, CAROL).models.retrieve("whisper-1").id == "whisper-1"  # a key from STT_API_KEY_HASHES
    text = sdk(url, BOB).audio.transcriptions.create(model="whisper-1", file=("a.wav", WAV), response_format="text")
    assert "stub transcript" in str(text)
    translated = sdk(url, ALICE).audio.translations.create(model="whisper-1", file=("a.wav", WAV))
    assert translated.text == "stub transcript"
    assert stub.headers and not any("authorization" in h or "x-api-key" in h for h in stub.headers)


def test_openai_sdk_with_a_wrong_key_is_an_authentication_error(keyed: tuple[str, Path]) -> None:
    url, _ = keyed
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk(url, "sk-not-a-key").models.list()
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        sdk(url, hash_key(ALICE)).audio.transcriptions.create(
            model="whisper-1", file=("a.wav", WAV)
        )  # the digest is no key


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/transcribe"),
        ("POST", "/detect"),
        ("POST", "/v1/audio/transcriptions"),
        ("POST", "/v1/audio/translations"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/whisper-1"),
    ],
)
def test_every_transcription_endpoint_wants_a_key(keyed: tuple[str, Path], method: str, path: str) -> None:
    url, _ = keyed
    body = WAV if method == "POST" else None
    headers = {"Content-Type": "audio/wav"}
    missing = httpx.request(method, url + path, content=body, headers=headers)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer <key>" in missing.json()["error"]["message"]
    wrong = httpx.request(method, url + path, content=body, headers={**headers, "Authorization": "Bearer sk-nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    for auth in ({"Authorization": f"Bearer {ALICE}"}, {"x-api-key": BOB}):
        assert httpx.request(method, url + path, content=body, headers={**headers, **auth}).status_code == 200


def test_health_page_and_status_stay_open(keyed: tuple[str, Path]) -> None:
    url, _ = keyed
    for path in ("/healthz", "/readyz", "/", "/static/app.js", "/gpu-status", "/metrics", "/docs", "/openapi.json"):
        assert httpx.get(url + path).status_code == 200, path
    metrics = httpx.get(url + "/metrics").text
    assert 'stt_proxy_auth_refusals_total{reason="invalid"}' in metrics
    assert ALICE not in metrics and BOB not in metrics


def ws(url: str, path: str) -> str:
    return "ws" + url[len("http") :] + path


def test_websockets_take_the_key_as_a_subprotocol_and_refuse_a_wrong_one(keyed: tuple[str, Path]) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    url, _ = keyed
    # What OpenAI's browser Realtime clients send: the key as a subprotocol beside "realtime".
    offered = ["realtime", f"openai-insecure-api-key.{ALICE}", "openai-beta.realtime-v1"]
    with connect(ws(url, "/v1/realtime?intent=transcription"), subprotocols=offered, open_timeout=10) as conn:
        assert conn.subprotocol == "realtime"
        assert json.loads(conn.recv(timeout=10))["type"] == "transcription_session.created"  # the beta flag
    with connect(ws(url, "/v1/stream"), subprotocols=["stt", f"openai-insecure-api-key.{BOB}"], open_timeout=10) as c:
        assert c.subprotocol == "stt" and json.loads(c.recv(timeout=10))["type"] == "session.started"
    with connect(ws(url, "/v1/stream"), additional_headers={"Authorization": f"Bearer {CAROL}"}) as conn:
        assert json.loads(conn.recv(timeout=10))["type"] == "session.started"

    for path, subprotocols, code in (
        ("/v1/stream", ["stt", "openai-insecure-api-key.sk-wrong"], "invalid_api_key"),
        ("/v1/stream", None, "missing_api_key"),
        ("/v1/realtime?intent=transcription", ["realtime", "openai-insecure-api-key.sk-wrong"], "invalid_api_key"),
        ("/v1/realtime?intent=transcription", ["realtime"], "missing_api_key"),
    ):
        with connect(ws(url, path), subprotocols=subprotocols, open_timeout=10) as conn:
            event = json.loads(conn.recv(timeout=10))
            assert (event.get("code") or event["error"]["code"]) == code, event
            with pytest.raises(ConnectionClosed):
                conn.recv(timeout=10)  # closed before any audio: nothing else is sent
            assert conn.close_code == 1008 and "API key" in conn.close_reason


async def test_openai_sdk_realtime_client_sends_its_key(keyed: tuple[str, Path]) -> None:
    """OpenAI's own Realtime client (``Authorization: Bearer`` on the upgrade): in with the
    right key; with a wrong one an OpenAI ``error`` event and the end of the connection."""
    url, _ = keyed
    right = openai.AsyncOpenAI(base_url=url + "/v1", api_key=CAROL, max_retries=0)
    async with right.realtime.connect(extra_query={"intent": "transcription"}) as connection:
        assert (await connection.recv()).type == "session.created"
    wrong = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0)
    async with wrong.realtime.connect(extra_query={"intent": "transcription"}) as connection:
        event = await connection.recv()
        assert event.type == "error" and event.error.code == "invalid_api_key"
        with pytest.raises(Exception, match="1008"):
            await connection.recv()


def test_the_native_stream_takes_the_key_in_the_query_and_never_logs_it(keyed: tuple[str, Path]) -> None:
    from websockets.sync.client import connect

    url, log = keyed
    with connect(ws(url, f"/v1/stream?language=en&api_key={ALICE}"), open_timeout=10) as conn:
        assert json.loads(conn.recv(timeout=10))["type"] == "session.started"
    with connect(ws(url, "/v1/realtime?intent=transcription&api_key=" + ALICE), open_timeout=10) as conn:
        assert json.loads(conn.recv(timeout=10))["error"]["code"] == "missing_api_key"  # the query is /v1/stream's only
    time.sleep(0.3)
    text = log.read_text()
    assert "api_key=[redacted]" in text  # uvicorn's "WebSocket /v1/stream?..." line, redacted
    for key in (ALICE, BOB, CAROL):
        assert key not in text


def test_rate_limit_per_key_with_the_openai_sdk(stub: StubBackend, tmp_path: Path) -> None:
    """Two requests a key at once, then one per 20 s: the third is a 429 the SDK raises as
    RateLimitError; another key is not affected. Docs are off here, as in the chart."""
    from websockets.sync.client import connect

    keys = tmp_path / "keys"
    keys.write_text(f"alice:{hash_key(ALICE)}\nbob:{hash_key(BOB)}\n")
    env = {"STT_API_KEYS_FILE": str(keys), "STT_API_KEY_RATE": "0.05", "STT_API_KEY_BURST": "2"}
    with proxy(stub, tmp_path, **env, STT_PUBLIC_DOCS="false") as (url, _):
        client = sdk(url, ALICE)
        client.models.list()
        client.models.list()
        with pytest.raises(openai.RateLimitError) as limited:
            client.models.list()
        assert limited.value.status_code == 429 and limited.value.code == "rate_limited"
        assert 1 <= int(limited.value.response.headers["retry-after"]) <= 20
        assert sdk(url, BOB).models.list().data  # its own bucket
        with connect(ws(url, "/v1/stream"), subprotocols=["stt", f"openai-insecure-api-key.{ALICE}"]) as conn:
            event = json.loads(conn.recv(timeout=10))
            assert event["code"] == "rate_limited" and event["retryable"] and event["retry_after_s"] >= 1
            with contextlib.suppress(Exception):
                conn.recv(timeout=10)
            assert conn.close_code == 1013
        metrics = httpx.get(url + "/metrics").text
        assert 'stt_proxy_rate_limited_total{key="alice"} 2.0' in metrics
        assert 'stt_proxy_sessions_refused_total{reason="rate_limited"} 1.0' in metrics
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
            assert httpx.get(url + path).status_code == 404, path
        assert httpx.get(url + "/readyz").status_code == 200


def test_without_keys_nothing_changes(stub: StubBackend, tmp_path: Path) -> None:
    with proxy(stub, tmp_path) as (url, _):
        assert sdk(url, "anything").models.list().data
        assert httpx.get(url + "/v1/models").status_code == 200
        assert httpx.post(url + "/detect", content=WAV).status_code == 200


@pytest.mark.parametrize("transport", ["ws", "http"])
def test_stt_client_cli_streams_with_the_key_from_stt_api_key(
    keyed: tuple[str, Path], tmp_path: Path, transport: str
) -> None:
    """The microphone client as a user runs it: the key from STT_API_KEY goes on every request
    (http) and on the WebSocket upgrade (ws); without it the client stops and says why."""
    from core.audio import to_wav_bytes

    url, _ = keyed
    audio = tmp_path / "two-seconds.wav"
    audio.write_bytes(to_wav_bytes(np.zeros(32000, np.float32)))
    env = {k: v for k, v in os.environ.items() if k != "STT_API_KEY"}
    cmd = [sys.executable, "-m", "client", "--transport", transport, "--url", url, "--file", str(audio), "--quiet"]
    cmd += ["--spill-dir", str(tmp_path / "spill")]
    ok = subprocess.run(cmd, env={**env, "STT_API_KEY": ALICE}, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    refused = subprocess.run(cmd, env={**env, "STT_API_KEY": "sk-wrong"}, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert "invalid_api_key" in refused.stderr or "API key" in refused.stderr, refused.stderr[-2000:]
