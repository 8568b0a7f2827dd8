"""Limits that keep a worker answering under abuse: request heads (431) and requests in flight (429).

The fast tests drive ``BoundedHttpToolsProtocol`` with a fake transport and
``ConcurrencyLimitMiddleware`` with a fake ASGI app; the slow ones start tiny as a real uvicorn
process through ``services.local_stack`` (the command line ``make up`` uses) and talk raw HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from uvicorn.config import Config
from uvicorn.server import ServerState

from services.common import http_protocol
from services.common.http_protocol import BoundedHttpToolsProtocol
from services.common.limits import DEFAULT_MAX_CONCURRENCY, ConcurrencyLimitMiddleware
from services.common.metrics import HTTP_OVERLOAD_REJECTIONS
from services.common.settings import ServiceSettings, SettingsError, load_settings
from services.local_stack import HTTP_PROTOCOL, Stack, free_ports

ROOT = Path(__file__).resolve().parents[2]


# --- request heads: the protocol, fed by hand ----------------------------------------------


class FakeTransport:
    """Enough of an asyncio transport for uvicorn's protocol: records writes, EOF and close."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False
        self.eof = False
        self.protocol: object = None

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 5004)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += data

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: object) -> None:
        self.protocol = protocol

    def get_protocol(self) -> object:
        return self.protocol


async def ok_app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def status_of(written: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", bytes(written))
    return int(match.group(1)) if match else None


async def feed(pieces: list[bytes], max_bytes: int = 16384, max_fields: int = 100) -> tuple[FakeTransport, object]:
    """Feed ``pieces`` (one ``data_received`` each) to a fresh protocol; let the app run."""
    config = Config(app=ok_app, lifespan="off", log_level="critical")
    protocol = BoundedHttpToolsProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    protocol.max_header_bytes = max_bytes
    protocol.max_header_fields = max_fields
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    for piece in pieces:
        protocol.data_received(piece)
        await asyncio.sleep(0)
    for _ in range(5):
        await asyncio.sleep(0)
    return transport, protocol


def head(extra: bytes = b"", path: bytes = b"/healthz") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nhost: t\r\n" + extra + b"\r\n"


async def test_a_head_within_the_limit_reaches_the_app() -> None:
    transport, _ = await feed([head(b"x-a: " + b"a" * 15000 + b"\r\n")])
    assert status_of(transport.written) == 200 and not transport.closing


async def test_a_head_over_the_limit_is_answered_431_with_the_json_error() -> None:
    transport, _ = await feed([head(b"x-a: " + b"a" * 20000 + b"\r\n")])
    assert status_of(transport.written) == 431
    response = bytes(transport.written)
    assert b"connection: close" in response and b"content-type: application/json" in response
    body = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "headers_too_large" and "16384" in body["error"]["message"]
    assert transport.eof  # FIN sent; the socket closes after the linger


async def test_an_endless_header_is_refused_once_the_limit_is_crossed_not_buffered() -> None:
    """The parser is never handed more than the limit: 1000 pieces of 64 KiB (62 MiB) that never
    end the head get one 431, and everything after is dropped unparsed."""
    start = b"GET / HTTP/1.1\r\nhost: t\r\nx-big: "
    pieces = [start] + [b"a" * 65536] * 1000
    began = time.perf_counter()
    transport, protocol = await feed(pieces)
    assert time.perf_counter() - began < 2
    assert status_of(transport.written) == 431 and bytes(transport.written).count(b"HTTP/1.1") == 1
    assert protocol._head_bytes <= 16384


async def test_a_limit_crossed_inside_one_read_is_refused() -> None:
    """One read holding more than the limit of head: refused without parsing past the limit."""
    transport, _ = await feed([head(b"x-a: " + b"a" * 100_000 + b"\r\n")])
    assert status_of(transport.written) == 431


async def test_too_many_header_fields_are_431() -> None:
    many = b"".join(b"x-h%d: 1\r\n" % i for i in range(101))
    transport, _ = await feed([head(many)])
    assert status_of(transport.written) == 431
    assert b"more than 100 header fields" in bytes(transport.written)
    transport, _ = await feed([head(b"".join(b"x-h%d: 1\r\n" % i for i in range(90)))])
    assert status_of(transport.written) == 200


async def test_bodies_do_not_count_against_the_head_limit() -> None:
    """A small head with a large body in the same read (a POST) is not mistaken for a big head."""
    body = b"a" * 200_000
    request = b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    transport, _ = await feed([request])
    assert status_of(transport.written) == 200


async def test_the_limit_is_per_request_on_a_kept_alive_connection() -> None:
    """Ten requests of 10 KiB heads on one connection (100 KiB in all) are all answered."""
    one = head(b"x-a: " + b"a" * 10000 + b"\r\n")
    transport, _ = await feed([one] * 10)
    assert bytes(transport.written).count(b"HTTP/1.1 200") == 10


async def test_a_malformed_head_is_still_400() -> None:
    transport, _ = await feed([b"NOT HTTP AT ALL\r\n\r\n"])
    assert status_of(transport.written) == 400


def test_the_header_limits_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's settings set the bounds the protocol applies (uvicorn builds the protocol with
    no arguments, so create_app sets them on the class)."""
    from services.common.app import create_app

    monkeypatch.setenv("STT_MAX_HEADER_BYTES", "4096")
    monkeypatch.setenv("STT_MAX_HEADER_FIELDS", "20")
    try:
        create_app("limits-test", "test app", _no_lifespan, settings=load_settings(ServiceSettings))
        assert http_protocol.BoundedHttpToolsProtocol.max_header_bytes == 4096
        assert http_protocol.BoundedHttpToolsProtocol.max_header_fields == 20
        monkeypatch.setenv("STT_MAX_HEADER_FIELDS", "7")
        with pytest.raises(SettingsError, match="STT_MAX_HEADER_FIELDS='7'"):
            load_settings(ServiceSettings)
    finally:
        http_protocol.configure_head_limits(
            http_protocol.DEFAULT_MAX_HEADER_BYTES, http_protocol.DEFAULT_MAX_HEADER_FIELDS
        )


@asynccontextmanager
async def _no_lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield


def test_every_way_of_running_a_service_uses_the_bounded_protocol() -> None:
    """``make up`` (local_stack), every image's CMD (Dockerfiles and the Docker-free builder);
    the chart runs the images' CMD and overrides no service command."""
    assert HTTP_PROTOCOL == "services.common.http_protocol:BoundedHttpToolsProtocol"
    cmds = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith('CMD ["uvicorn"')]
    for app in ("services.tiny.app:app", "services.base.app:app", "services.proxy.app:app"):
        assert any(f'"{app}"' in line for line in cmds), f"no target of the Dockerfile runs {app}"
    assert all(f'"--http", "{HTTP_PROTOCOL}"' in line for line in cmds), cmds
    assert f'"--http","{HTTP_PROTOCOL}"' in (ROOT / "hack" / "images" / "build.sh").read_text()
    for template in (ROOT / "charts" / "stt" / "templates").glob("*.yaml"):
        text = template.read_text()
        assert "uvicorn" not in text, f"{template.name} starts uvicorn itself; give it --http {HTTP_PROTOCOL}"


# --- requests in flight: the middleware, around a fake app -----------------------------------


class Gate:
    """A fake app whose requests wait until released, so tests can hold slots."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope, receive, send) -> None:
        self.entered += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})


async def call(app, path: str = "/transcribe", kind: str = "http") -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app({"type": kind, "path": path, "method": "POST", "headers": []}, receive, send)
    return sent


async def test_requests_past_the_limit_get_429_at_once_and_slots_come_back() -> None:
    gate = Gate()
    limiter = ConcurrencyLimitMiddleware(gate, service="unit", limit=2)
    rejected = HTTP_OVERLOAD_REJECTIONS.labels("unit")
    before = rejected._value.get()
    held = [asyncio.create_task(call(limiter)) for _ in range(2)]
    await asyncio.sleep(0)
    assert limiter.in_flight == 2

    sent = await asyncio.wait_for(call(limiter), timeout=0.1)  # answered without waiting
    assert sent[0]["status"] == 429
    assert (b"retry-after", b"1") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"]["code"] == "overloaded"
    assert gate.entered == 2  # the refused request never reached the app
    assert rejected._value.get() == before + 1

    gate.release.set()
    await asyncio.gather(*held)
    assert limiter.in_flight == 0
    assert (await call(limiter))[0]["status"] == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_probes_and_metrics_are_never_refused_nor_counted(path: str) -> None:
    gate = Gate()
    limiter = ConcurrencyLimitMiddleware(gate, service="unit", limit=1)
    held = asyncio.create_task(call(limiter))
    await asyncio.sleep(0)
    probe = asyncio.create_task(call(limiter, path))
    await asyncio.sleep(0)
    assert gate.entered == 2 and limiter.in_flight == 1
    gate.release.set()
    assert (await probe)[0]["status"] == 200
    await held


async def test_websockets_are_not_counted() -> None:
    gate = Gate()
    limiter = ConcurrencyLimitMiddleware(gate, service="unit", limit=1)
    held = [asyncio.create_task(call(limiter, "/v1/stream", kind="websocket")) for _ in range(3)]
    await asyncio.sleep(0)
    assert gate.entered == 3 and limiter.in_flight == 0
    gate.release.set()
    await asyncio.gather(*held)


async def test_a_failing_request_gives_its_slot_back() -> None:
    async def boom(scope, receive, send) -> None:
        raise RuntimeError("boom")

    limiter = ConcurrencyLimitMiddleware(boom, service="unit", limit=1)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            await call(limiter)
    assert limiter.in_flight == 0


def test_the_concurrency_limit_defaults_per_service_and_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.base.settings import TranscriberSettings
    from services.proxy.settings import ProxySettings
    from services.tiny.settings import DetectorSettings

    models = (TranscriberSettings, DetectorSettings, ProxySettings)
    monkeypatch.delenv("STT_MAX_CONCURRENCY", raising=False)
    assert [load_settings(m).max_concurrency for m in models] == [64, 64, 256]
    assert DEFAULT_MAX_CONCURRENCY["proxy"] == 256
    monkeypatch.setenv("STT_MAX_CONCURRENCY", "7")
    assert load_settings(ProxySettings).max_concurrency == 7
    monkeypatch.setenv("STT_MAX_CONCURRENCY", "0")
    with pytest.raises(SettingsError, match="STT_MAX_CONCURRENCY='0'"):
        load_settings(ProxySettings)


def test_every_service_app_installs_the_limiter() -> None:
    from services.base.app import app as base
    from services.proxy.app import app as proxy
    from services.tiny.app import app as tiny

    for app in (base, proxy, tiny):
        assert any(m.cls is ConcurrencyLimitMiddleware for m in app.user_middleware)


# --- real uvicorn processes -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """tiny (Silero only), started the way ``make up`` starts it, with 2 requests in flight
    at most and the default head limits."""
    env = {"STT_DETECTORS": "silero", "STT_MAX_CONCURRENCY": "2", "STT_LOG_FORMAT": "json"}
    env.update({k: v for k, v in os.environ.items() if k.startswith("STT_MODEL_CACHE")})
    s = Stack(ports={"tiny": free_ports(1)[0]}, env=env, run_dir=tmp_path_factory.mktemp("limits-run"))
    try:
        s.start("tiny")
        yield s
    finally:
        s.down()


def open_upload(stack: Stack) -> socket.socket:
    """A POST /detect whose 1 MB body is promised but only begun: it holds a slot until closed."""
    sock = socket.create_connection((stack.host, stack.ports["tiny"]), timeout=5)
    sock.sendall(b"POST /detect HTTP/1.1\r\nhost: t\r\ncontent-type: audio/wav\r\ncontent-length: 1000000\r\n\r\nRIFF")
    return sock


def raw_head(stack: Stack, pieces: list[bytes], timeout: float = 10) -> tuple[bytes, float]:
    """Send ``pieces`` of a request head (stopping when the server stops reading), then read the
    answer; returns it and the seconds from the first byte sent."""
    began = time.perf_counter()
    with socket.create_connection((stack.host, stack.ports["tiny"]), timeout=timeout) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
        except OSError:  # the server closed its side after answering; the answer is buffered
            pass
        answer = b""
        while chunk := sock.recv(65536):  # until the server closes the connection
            answer += chunk
        return answer, time.perf_counter() - began


@pytest.mark.slow
def test_an_oversized_head_gets_431_from_a_real_service(tiny: Stack) -> None:
    url = f"{tiny.url('tiny')}/healthz"
    assert httpx.get(url, headers={"x-a": "a" * 15000}).status_code == 200

    r = httpx.get(url, headers={"x-big": "a" * 8_000_000}, timeout=20)  # was answered 200
    assert r.status_code == 431 and r.json()["error"]["code"] == "headers_too_large"
    assert r.headers["connection"] == "close"

    # 62 MB of one header value, sent in 64 KiB writes (was never answered): 431 well before the
    # client has sent it all, and the connection is closed.
    pieces = [b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-big: "] + [b"a" * 65536] * 950 + [b"\r\n\r\n"]
    answer, seconds = raw_head(tiny, pieces)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "headers_too_large"
    assert seconds < 5, seconds

    many = b"".join(b"x-h%d: 1\r\n" % i for i in range(150))
    answer, _ = raw_head(tiny, [b"GET /healthz HTTP/1.1\r\nhost: t\r\n" + many + b"\r\n"])
    assert answer.startswith(b"HTTP/1.1 431 ") and b"header fields" in answer

    metrics = httpx.get(f"{tiny.url('tiny')}/metrics").text
    assert 'stt_http_header_rejections_total{reason="bytes",service="tiny"}' in metrics
    assert httpx.get(url).status_code == 200  # the worker is fine


@pytest.mark.slow
def test_requests_past_the_limit_get_a_fast_429_while_probes_answer(tiny: Stack) -> None:
    base = tiny.url("tiny")
    held = [open_upload(tiny) for _ in range(2)]
    try:
        time.sleep(0.3)  # both heads reached the app and hold their slots
        with httpx.Client() as client:
            began = time.perf_counter()
            r = client.post(f"{base}/detect", content=b"RIFF" + b"\0" * 1000, headers={"content-type": "audio/wav"})
            elapsed = time.perf_counter() - began
            assert r.status_code == 429, r.text
            assert elapsed < 0.1, elapsed
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "overloaded"
            for probe in ("/readyz", "/healthz", "/metrics"):
                assert client.get(f"{base}{probe}").status_code == 200
            assert 'stt_http_overload_rejections_total{service="tiny"}' in client.get(f"{base}/metrics").text
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)  # the held requests end (client gone) and give their slots back
    r = httpx.post(f"{base}/detect", content=b"RIFF" + b"\0" * 1000, headers={"content-type": "audio/wav"})
    assert r.status_code != 429 and r.json()["error"]["code"] != "overloaded"


@pytest.mark.slow
def test_websocket_upgrades_still_reach_the_websocket_protocol(tiny: Stack) -> None:
    """The bounded protocol hands an upgrade over as uvicorn does: tiny has no WebSocket route,
    so the handshake is refused by the WebSocket side (403), not answered as HTTP (404 JSON)."""
    handshake = (
        b"GET /no-such-socket HTTP/1.1\r\nhost: t\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    )
    with socket.create_connection((tiny.host, tiny.ports["tiny"]), timeout=5) as sock:
        sock.sendall(handshake)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
