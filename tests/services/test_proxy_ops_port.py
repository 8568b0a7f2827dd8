"""The proxy's internal ops port (``STT_OPS_PORT``, services/proxy/ops.py).

The real proxy (a uvicorn process, as the image runs it) in front of a stub backend on a
loopback port: with the ops port set, ``/metrics``, the detailed ``/gpu-status`` and ``/docs``
are there and not on the public port, which keeps a ``/gpu-status`` summary; without it,
everything stays on the one port. Also: a taken ops port stops the start-up with a message
naming the variable, and SIGTERM still ends the process cleanly (the ops listener must not take
the signal away from the public one).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request

from services.common.settings import SettingsError, load_settings
from services.local_stack import Stack, free_port, free_ports
from services.proxy.settings import ProxySettings
from tests.services.proxy_harness import ThreadedServer, running_proxy, start_proxy

WAV = b"RIFF" + b"\x00" * 40  # the stub does not decode it
PUBLIC_STATUS_KEYS = {"mode", "source", "active_backend", "available"}


def ops_port_from_env() -> int | None:
    return load_settings(ProxySettings).ops_listen_port


def test_the_ops_port_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STT_OPS_PORT", raising=False)
    assert ops_port_from_env() is None
    for unset in ("", "0"):
        monkeypatch.setenv("STT_OPS_PORT", unset)
        assert ops_port_from_env() is None
    monkeypatch.setenv("STT_OPS_PORT", "9090")
    assert ops_port_from_env() == 9090
    for bad in ("70000", "-1", "metrics"):
        monkeypatch.setenv("STT_OPS_PORT", bad)
        with pytest.raises(SettingsError, match="STT_OPS_PORT"):
            ops_port_from_env()


class StubBackend(ThreadedServer):
    """Stands in for base and tiny (no model): ready, and a fixed answer to every POST, after
    ``?hold=`` seconds."""

    def __init__(self) -> None:
        app = FastAPI()

        @app.get("/readyz")
        async def readyz() -> dict:
            return {"status": "ready"}

        @app.post("/{path:path}")
        async def anything(request: Request, hold: float = 0.0) -> dict:
            await request.body()
            await asyncio.sleep(hold)
            return {"text": "stub", "language": "en", "segments": []}

        super().__init__(app)


@pytest.fixture(scope="module")
def stub() -> Iterator[StubBackend]:
    with StubBackend() as backend:
        yield backend


@pytest.fixture(scope="module")
def split(stub: StubBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A proxy as the chart runs it: ops port set, docs off the public port. Yields both URLs."""
    ops_port = free_port()
    env = {"STT_OPS_PORT": str(ops_port), "STT_OPS_HOST": "127.0.0.1", "STT_PUBLIC_DOCS": "false"}
    with running_proxy(stub.url, tmp_path_factory.mktemp("ops"), **env) as public:
        yield public, f"http://127.0.0.1:{ops_port}"


@pytest.mark.slow
def test_metrics_are_on_the_ops_port_only(split: tuple[str, str]) -> None:
    public, ops = split
    r = httpx.post(f"{public}/transcribe", content=WAV, headers={"Content-Type": "audio/wav"}, timeout=20)
    assert r.status_code == 200 and r.json()["backend"] == "cpu"
    refused = httpx.get(f"{public}/metrics", timeout=10)
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "not_found" and "STT_OPS_PORT" in refused.json()["error"]["message"]
    scraped = httpx.get(f"{ops}/metrics", timeout=10)
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    # the same process' registry: the request on the public port is counted there
    routed = [
        line
        for line in scraped.text.splitlines()
        if line.startswith('stt_proxy_routed_total{backend="cpu",mode="cpu"}')
    ]
    assert routed and float(routed[0].rsplit(" ", 1)[1]) >= 1
    assert 'stt_http_requests_total{code="200",method="POST",route="/transcribe",service="proxy"}' in scraped.text
    # scrapes are not traffic: not counted in the request metrics (the public 404 above is)
    assert 'stt_http_requests_total{code="404",method="GET",route="/metrics",service="proxy"}' in scraped.text
    assert 'stt_http_requests_total{code="200",method="GET",route="/metrics"' not in scraped.text


@pytest.mark.slow
def test_the_public_status_is_a_summary_and_the_ops_status_is_in_full(
    split: tuple[str, str], stub: StubBackend
) -> None:
    public, ops = split
    summary = httpx.get(f"{public}/gpu-status", timeout=10)
    assert summary.status_code == 200
    assert set(summary.json()) == PUBLIC_STATUS_KEYS
    assert summary.json() == {"mode": "cpu", "source": "local", "active_backend": "cpu", "available": True}
    assert stub.url not in summary.text and str(stub.port) not in summary.text
    detail = httpx.get(f"{ops}/gpu-status", timeout=10).json()
    assert detail["backends"]["cpu"]["url"] == stub.url and detail["backends"]["cpu"]["ready"] is True
    assert detail["detector"]["url"] == stub.url
    assert {k: detail[k] for k in ("mode", "source", "active_backend")} == {
        k: summary.json()[k] for k in ("mode", "source", "active_backend")
    }


@pytest.mark.slow
def test_the_api_description_is_on_the_ops_port_only(split: tuple[str, str]) -> None:
    public, ops = split
    for path in ("/docs", "/openapi.json"):
        assert httpx.get(f"{public}{path}", timeout=10).status_code == 404
    assert "swagger-ui" in httpx.get(f"{ops}/docs", timeout=10).text
    spec = httpx.get(f"{ops}/openapi.json", timeout=10).json()
    assert "/transcribe" in spec["paths"] and "/v1/audio/transcriptions" in spec["paths"]
    # the ops port describes the public API but serves none of it
    r = httpx.post(f"{ops}/transcribe", content=WAV, headers={"Content-Type": "audio/wav"}, timeout=10)
    assert r.status_code in (404, 405) and r.json()["error"]["code"] in ("not_found", "method_not_allowed")


@pytest.mark.slow
def test_without_an_ops_port_everything_stays_on_the_one_port(stub: StubBackend, tmp_path: Path) -> None:
    with running_proxy(stub.url, tmp_path) as public:
        assert "stt_proxy_routed_total" in httpx.get(f"{public}/metrics", timeout=10).text
        detail = httpx.get(f"{public}/gpu-status", timeout=10).json()
        assert detail["backends"]["cpu"]["url"] == stub.url and "detector" in detail
        assert httpx.get(f"{public}/docs", timeout=10).status_code == 200


@pytest.mark.slow
def test_a_taken_ops_port_stops_the_start_up_with_the_variable_named(stub: StubBackend, tmp_path: Path) -> None:
    public_port, ops_port = free_ports(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ops_port))
        taken.listen(1)
        proc = start_proxy(stub.url, tmp_path, public_port, STT_OPS_PORT=str(ops_port), STT_OPS_HOST="127.0.0.1")
        try:
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    log = (tmp_path / "proxy.log").read_text(errors="replace")
    assert code != 0, log
    assert f"STT_OPS_PORT={ops_port}: cannot listen on 127.0.0.1:{ops_port}" in log


@pytest.mark.slow
def test_sigterm_drains_the_public_port_while_the_ops_port_still_answers(stub: StubBackend, tmp_path: Path) -> None:
    """The ops listener leaves SIGTERM to the public one and stops after its drain, so the
    drain can be watched (scraped) to its end; then both are closed."""
    public_port, ops_port = free_ports(2)
    stack = Stack(ports={"proxy": public_port}, run_dir=tmp_path)
    proc = start_proxy(stub.url, tmp_path, public_port, STT_OPS_PORT=str(ops_port), STT_OPS_HOST="127.0.0.1")
    stack.procs["proxy"] = proc
    answers: list[int] = []

    def slow_request() -> None:
        url = f"http://127.0.0.1:{public_port}/transcribe?hold=3"
        answers.append(httpx.post(url, content=WAV, headers={"Content-Type": "audio/wav"}, timeout=20).status_code)

    try:
        stack.wait_ready(["proxy"], timeout=60)
        in_flight = threading.Thread(target=slow_request)
        in_flight.start()
        time.sleep(1.0)  # the request is with the backend
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None, "the proxy did not wait for its request in flight"
        during = httpx.get(f"http://127.0.0.1:{ops_port}/metrics", timeout=5)
        assert during.status_code == 200, "the ops port stopped before the public port drained"
        in_flight.join(timeout=20)
        assert answers == [200]
        code = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "proxy.log").read_text(errors="replace")
    # uvicorn re-raises the SIGTERM it handled once it has drained, as it does without an ops port
    assert code in (0, -signal.SIGTERM), log
    assert "Application shutdown complete" in log, "the proxy's lifespan (which stops the ops port) did not end"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", ops_port), timeout=2).close()
