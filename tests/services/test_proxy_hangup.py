"""A caller that hangs up on the proxy has its backend call closed (services/proxy/upstream.py).

First the watch itself, without a server. Then the real proxy (a uvicorn process, as the image
runs it) in front of a slow backend: a real uvicorn server on a loopback port that holds every
POST and records whether its caller, the proxy, closed the connection while it was held. A
caller that sends a request to the proxy and closes its socket must make the backend see the
close within a few seconds, not once the backend has computed an answer nobody reads.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from core.errors import ApiError
from services.proxy import metrics
from services.proxy.upstream import unless_caller_leaves
from tests.services.proxy_harness import ThreadedServer, running_proxy

# How long the slow backend holds a request: far longer than a test waits for the hang-up to
# reach it, so a proxy that waits the backend out fails the test instead of passing late.
HOLD_S = 30.0
# How long the backend may take to see the caller leave: the proxy notices at once (the
# connection's close wakes its watch), so this is only scheduling slack on a busy machine.
NOTICE_S = 5.0
WAV = b"RIFF" + b"\x00" * 40  # the backend does not decode it


# --- the watch alone ----------------------------------------------------------------------------


def _receive_after(gone: asyncio.Event):
    async def receive() -> dict:
        await gone.wait()
        return {"type": "http.disconnect"}

    return receive


async def test_a_hang_up_cancels_the_backend_call_and_is_counted() -> None:
    gone = asyncio.Event()
    cancelled = asyncio.Event()

    async def backend_call() -> str:
        try:
            await asyncio.sleep(HOLD_S)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "answer"

    counter = metrics.CALLER_HANGUPS.labels("/transcribe")
    before = counter._value.get()
    asyncio.get_running_loop().call_later(0.05, gone.set)
    with pytest.raises(ApiError) as refused:
        await asyncio.wait_for(unless_caller_leaves(_receive_after(gone), backend_call(), "/transcribe"), NOTICE_S)
    assert refused.value.status == 499 and refused.value.code == "client_closed_request"
    assert cancelled.is_set(), "the backend call was left running"
    assert counter._value.get() == before + 1


async def test_an_answer_that_comes_first_is_returned_and_the_watch_stops() -> None:
    gone = asyncio.Event()
    receive = _receive_after(gone)

    async def backend_call() -> str:
        return "answer"

    assert await unless_caller_leaves(receive, backend_call(), "/transcribe") == "answer"
    await asyncio.sleep(0)  # the cancelled watch unwinds
    # nothing is left waiting on the connection for the rest of the request
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_an_error_of_the_backend_call_is_passed_on() -> None:
    async def backend_call() -> str:
        raise ApiError(504, "backend_timeout", "too slow")

    with pytest.raises(ApiError) as refused:
        await unless_caller_leaves(_receive_after(asyncio.Event()), backend_call(), "/transcribe")
    assert refused.value.status == 504


# --- the real proxy in front of a slow backend --------------------------------------------------


class SlowBackend(ThreadedServer):
    """Stands in for base and tiny: ready, and holds every POST for ``?hold=`` seconds (default
    :data:`HOLD_S`) before answering. Records per request ``started`` once its body is in, then
    ``abandoned`` if the proxy closed the connection while it was held, else ``answered``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        # a held request must not hold up the test's end
        super().__init__(self.app, lifespan="off", interface="asgi3", timeout_graceful_shutdown=1)

    async def app(self, scope: dict, receive, send) -> None:
        path = scope["path"]
        if scope["method"] == "GET":
            await self._answer(send, {"status": "ready"})
            return
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            more = message.get("more_body", False)
        query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
        self.events.append((path, "started"))
        try:
            # The body is in: the server's next message is http.disconnect, when the proxy closes.
            await asyncio.wait_for(receive(), float(query.get("hold", HOLD_S)))
        except TimeoutError:
            self.events.append((path, "answered"))
            await self._answer(send, {"text": "held", "language": "en", "segments": []})
            return
        self.events.append((path, "abandoned"))

    @staticmethod
    async def _answer(send, payload: dict) -> None:
        body = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def wait_for(self, event: tuple[str, str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while event not in self.events:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True


@pytest.fixture(scope="module")
def slow_backend() -> Iterator[SlowBackend]:
    with SlowBackend() as backend:
        yield backend


@pytest.fixture(scope="module")
def proxy(slow_backend: SlowBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_proxy(slow_backend.url, tmp_path_factory.mktemp("hangup")) as url:
        yield url


def hangups(proxy_url: str, route: str) -> float:
    """``stt_proxy_caller_hangups_total`` for ``route``, read from the proxy's /metrics."""
    text = httpx.get(f"{proxy_url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("stt_proxy_caller_hangups_total{") and f'route="{route}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no stt_proxy_caller_hangups_total for {route} on /metrics")


def multipart(stream: bool) -> tuple[bytes, str]:
    boundary = "hangupboundary"
    fields = [("model", "whisper-1"), ("stream", "true" if stream else "false")]
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"\r\n\r\n{v}\r\n'.encode() for n, v in fields]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n".encode()
        + WAV
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# (route on the proxy, path the backend is sent, body kind)
CASES = [
    ("/transcribe", "/transcribe-chunk", "wav"),
    ("/v1/audio/transcriptions", "/v1/audio/transcriptions", "form"),
    ("/v1/audio/transcriptions", "/v1/audio/transcriptions", "form-stream"),
    ("/v1/audio/translations", "/v1/audio/translations", "form"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("route", "backend_path", "kind"), CASES)
def test_a_caller_that_hangs_up_has_its_backend_call_closed(
    proxy: str, slow_backend: SlowBackend, route: str, backend_path: str, kind: str
) -> None:
    body, content_type = (WAV, "audio/wav") if kind == "wav" else multipart(stream=kind == "form-stream")
    before = hangups(proxy, route)
    slow_backend.events.clear()
    port = int(proxy.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as caller:
        head = (
            f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        caller.sendall(head.encode() + body)
        assert slow_backend.wait_for((backend_path, "started"), 20), f"the backend never got it: {slow_backend.events}"
    # the caller has closed its connection while the backend holds the request
    assert slow_backend.wait_for((backend_path, "abandoned"), NOTICE_S), (
        f"the backend was not told the caller left (events {slow_backend.events}): "
        "the proxy kept waiting for an answer nobody reads"
    )
    deadline = time.monotonic() + NOTICE_S
    while hangups(proxy, route) < before + 1:
        assert time.monotonic() < deadline, "the hang-up was not counted in stt_proxy_caller_hangups_total"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_caller_that_waits_gets_its_answer(proxy: str, slow_backend: SlowBackend) -> None:
    """The watch does not cut short a caller that stays (on a kept-alive connection, twice)."""
    slow_backend.events.clear()
    with httpx.Client(timeout=20) as client:
        for _ in range(2):
            r = client.post(f"{proxy}/transcribe?hold=0.3", content=WAV, headers={"Content-Type": "audio/wav"})
            assert r.status_code == 200 and r.json()["text"] == "held" and r.json()["backend"] == "cpu"
    assert slow_backend.events.count(("/transcribe-chunk", "answered")) == 2
    assert ("/transcribe-chunk", "abandoned") not in slow_backend.events


def session_outcomes(proxy_url: str) -> dict[str, float]:
    """``stt_proxy_sessions_total`` of the native protocol by outcome, and the sessions active."""
    found: dict[str, float] = {}
    for line in httpx.get(f"{proxy_url}/metrics", timeout=10).text.splitlines():
        if line.startswith("stt_proxy_sessions_total{") and 'protocol="native"' in line:
            found[line.split('outcome="', 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith('stt_proxy_sessions_active{protocol="native"}'):
            found["active"] = float(line.rsplit(" ", 1)[1])
    return found


@pytest.mark.slow
def test_a_stream_client_that_leaves_while_its_session_finishes_ends_the_session(
    proxy: str, slow_backend: SlowBackend
) -> None:
    """``stop``, then a hang-up while the session still works off its audio: the session ends
    and its backend call is closed. Finishing for nobody is what a client that resumes
    elsewhere would pay twice for (found by the chaos test in ``make e2e``)."""
    from websockets.sync.client import connect

    slow_backend.events.clear()
    before = session_outcomes(proxy)
    url = proxy.replace("http://", "ws://") + "/v1/stream?detector=false&step_s=3"
    with connect(url, open_timeout=10) as ws:
        assert json.loads(ws.recv())["type"] == "session.started"
        ws.send(bytes(4 * 16_000 * 2))  # 4 s of PCM: one 3 s step decodes
        ws.send(json.dumps({"type": "stop"}))
        assert slow_backend.wait_for(("/transcribe-chunk", "started"), 20), slow_backend.events
    # the client has gone while the backend holds the session's decode
    assert slow_backend.wait_for(("/transcribe-chunk", "abandoned"), NOTICE_S), (
        f"the session went on finishing for a client that left (events {slow_backend.events})"
    )
    deadline = time.monotonic() + NOTICE_S
    while (after := session_outcomes(proxy)).get("disconnected", 0) < before.get("disconnected", 0) + 1:
        assert time.monotonic() < deadline, f"the session did not end as disconnected: {after}"
        time.sleep(0.05)
    assert after["active"] == 0 and after.get("finished", 0) == before.get("finished", 0)
