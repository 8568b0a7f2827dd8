"""The proxy's calls to its backends (services/proxy/upstream.py) against real HTTP servers.

Each backend is a small aiohttp server on a loopback port that answers the way a real one does
when it is busy (429 with Retry-After), unready (503) or stuck (never answers), so the
timeouts, the fallback to the other side and the headers passed on are exercised on real
sockets, in well under a second each.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web

from core.errors import ApiError
from core.vocabulary import RoutingMode
from services.common.limits import DEADLINE_HEADER
from services.proxy.backends import Backend
from services.proxy.upstream import Upstreams

OK = b'{"text":"hello"}'


def answer(status: int = 200, delay: float = 0.0, headers: dict[str, str] | None = None) -> Callable:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        if delay:
            await asyncio.sleep(delay)
        return web.Response(body=OK, status=status, headers=headers, content_type="application/json")

    return handler


@asynccontextmanager
async def backend(name: str, handler: Callable, ready: bool = True) -> AsyncIterator[tuple[Backend, list[str]]]:
    """A real HTTP server on a free loopback port; yields its Backend and the paths it was sent."""
    seen: list[str] = []

    async def recorded(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        return await handler(request)

    app = web.Application()
    app.router.add_post("/{path:.*}", recorded)
    runner = web.AppRunner(app, shutdown_timeout=0.5)  # a stuck handler must not hold up the test
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    b = Backend(name, f"http://127.0.0.1:{port}")
    b.ready = ready
    try:
        yield b, seen
    finally:
        await runner.cleanup()


@asynccontextmanager
async def pair(
    cpu_handler: Callable, gpu_handler: Callable | None = None, gpu_ready: bool = True, chunk_timeout_s: float = 0.5
) -> AsyncIterator[tuple[Upstreams, list[str]]]:
    """Upstreams over a real CPU and GPU backend (mode cpu); yields it and the GPU's requests."""
    timeout = aiohttp.ClientTimeout(total=None, connect=2, sock_read=30)
    async with (
        backend("cpu", cpu_handler) as (cpu, _),
        backend("gpu", gpu_handler or answer(), ready=gpu_ready) as (gpu, gpu_seen),
        aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as client,
    ):
        detector = Backend("detector", None)
        yield (
            Upstreams(client, cpu, gpu, detector, lambda: RoutingMode.CPU, chunk_timeout_s, detect_timeout_s=0.5),
            gpu_seen,
        )


async def chunk(up: Upstreams):
    return await up.routed("/transcribe-chunk", b"RIFF", "audio/wav", "", "/transcribe")


async def test_a_stuck_backend_is_given_up_on_after_the_chunk_timeout_and_the_other_side_answers() -> None:
    async with pair(answer(delay=30)) as (up, gpu_seen):
        started = asyncio.get_running_loop().time()
        response, served, reason = await chunk(up)
        elapsed = asyncio.get_running_loop().time() - started
    assert response.status == 200 and served.name == "gpu" and reason == "cpu backend timed out"
    assert gpu_seen == ["/transcribe-chunk"]
    assert elapsed < 5, "the chunk waited for the session's 30 s read timeout, not the chunk timeout"


async def test_a_stuck_backend_with_no_other_side_is_a_fast_504() -> None:
    async with pair(answer(delay=30), gpu_ready=False) as (up, seen):
        with pytest.raises(ApiError) as refused:
            await asyncio.wait_for(chunk(up), 5)
    assert refused.value.status == 504 and refused.value.code == "backend_timeout"
    assert refused.value.headers == {"Retry-After": "2"}
    assert seen == [], "an unready side must not be sent the chunk"


@pytest.mark.parametrize("status", [429, 503])
async def test_a_busy_backend_hands_the_chunk_to_the_ready_other_side(status: int) -> None:
    busy = answer(status, headers={"Retry-After": "7"})
    async with pair(busy) as (up, _):
        response, served, reason = await chunk(up)
    assert response.status == 200 and served.name == "gpu" and reason == f"cpu backend busy ({status})"


async def test_a_busy_answer_is_passed_on_with_its_retry_after_when_the_other_side_is_not_ready() -> None:
    busy = answer(429, headers={"Retry-After": "7"})
    async with pair(busy, gpu_ready=False) as (up, seen):
        response, served, reason = await chunk(up)
    assert (response.status, served.name, reason) == (429, "cpu", None)
    assert response.headers == {"retry-after": "7"}
    assert seen == []


async def test_a_streamed_call_releases_the_busy_answer_and_streams_from_the_other_side() -> None:
    async with pair(answer(429)) as (up, _):
        path = "/v1/audio/transcriptions"
        response, served, reason = await up.open_stream(path, b"RIFF", "audio/wav", "", path)
        body = await response.read()
        response.release()
    assert (served.name, reason, body) == ("gpu", "cpu backend busy (429)", OK)


async def test_whole_files_keep_the_long_timeout() -> None:
    """A whole file legitimately takes longer than a chunk: the chunk timeout is not applied."""
    async with pair(answer(delay=1.0), chunk_timeout_s=0.3) as (up, gpu_seen):
        path = "/v1/audio/transcriptions"
        response, served, _ = await up.routed(path, b"RIFF", "audio/wav", "", path)
    assert response.status == 200 and served.name == "cpu" and gpu_seen == []


async def test_a_connect_timeout_is_a_connection_failure_not_a_read_timeout() -> None:
    """aiohttp raises ConnectionTimeoutError, a TimeoutError, when a connection is not made in
    time: nothing was sent, so the other side is tried and the backend is marked down, instead
    of a 504 that says the backend "did not answer in time"."""
    cpu, gpu = Backend("cpu", "http://cpu"), Backend("gpu", "http://gpu")
    cpu.ready = gpu.ready = True
    async with aiohttp.ClientSession() as client:
        up = Upstreams(client, cpu, gpu, Backend("detector", None), lambda: RoutingMode.CPU)

        async def send(b: Backend) -> str:
            if b.name == "cpu":
                raise aiohttp.ConnectionTimeoutError("Connection timeout to host http://cpu")
            return "answer"

        answered, served, reason = await up._with_fallback(send, lambda _: None)
    assert (answered, served.name, reason) == ("answer", "gpu", "cpu backend unreachable")
    assert not cpu.ready


def test_the_proxy_answers_a_chunk_before_the_client_gives_up_on_it() -> None:
    """If the client's wait ran out first it would send the chunk again while the first copy
    is still being computed: the proxy's waits (both sides tried) must be shorter."""
    from client.api import SttApi
    from services.proxy.settings import CHUNK_TIMEOUT_S, DETECT_TIMEOUT_S

    defaults = inspect.signature(SttApi.__init__).parameters
    assert defaults["timeout_s"].default > 2 * CHUNK_TIMEOUT_S
    assert defaults["detect_timeout_s"].default > DETECT_TIMEOUT_S


async def test_a_request_on_a_connection_the_backend_just_closed_is_sent_again_to_the_same_side() -> None:
    """A draining pod closes its idle kept-alive connections; a request the pool put on one
    never reached it. Sent once more, it gets a fresh connection to a pod that is staying."""
    cpu, gpu = Backend("cpu", "http://cpu"), Backend("gpu", "http://gpu")
    cpu.ready = gpu.ready = True
    sent: list[str] = []
    async with aiohttp.ClientSession() as client:
        up = Upstreams(client, cpu, gpu, Backend("detector", None), lambda: RoutingMode.CPU)

        async def send(b: Backend) -> str:
            sent.append(b.name)
            if len(sent) == 1:
                raise aiohttp.ServerDisconnectedError()
            return "answer"

        answered, served, reason = await up._with_fallback(send, lambda _: None)
    assert (answered, served.name, reason, sent) == ("answer", "cpu", None, ["cpu", "cpu"])
    assert cpu.ready


async def test_chunks_carry_the_proxys_deadline_and_files_do_not() -> None:
    """The backend drops a chunk still queued when the proxy stops waiting (so a resent chunk
    is not computed twice); a whole file has no such bound."""
    seen: dict[str, str | None] = {}

    async def record(request: web.Request) -> web.Response:
        seen[request.path] = request.headers.get(DEADLINE_HEADER)
        return await answer()(request)

    async with pair(record, chunk_timeout_s=42) as (up, _):
        await chunk(up)
        path = "/v1/audio/transcriptions"
        await up.routed(path, b"RIFF", "audio/wav", "", path)
    assert seen == {"/transcribe-chunk": "42000", "/v1/audio/transcriptions": None}
