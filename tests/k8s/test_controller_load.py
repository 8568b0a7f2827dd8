"""The autoscaler's load signal: live streams read over HTTP from real (local) metrics servers,
and the sum taken from the proxy's own metrics exposition, not a hand-written sample."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from controller.load import proxy_addresses, read_streams, sessions_in


class MetricsServer:
    """A loopback HTTP server answering ``/metrics`` with ``text`` (or hanging while ``hang``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.text = ""
        self.hang = threading.Event()
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if outer.hang.is_set():
                    outer.release.wait(10)
                body = outer.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def metrics_server(text: str = "", host: str = "127.0.0.1", port: int = 0) -> Iterator[MetricsServer]:
    server = MetricsServer(host, port)
    server.text = text
    try:
        yield server
    finally:
        server.close()


def exposition(**sessions: float) -> str:
    """What a proxy's /metrics says with these sessions open per protocol (the proxy's own gauge)."""
    from services.proxy import metrics as proxy_metrics

    registry = CollectorRegistry()
    gauge = Gauge(
        proxy_metrics.SESSIONS_ACTIVE._name,
        "sessions",
        ["protocol"],
        registry=registry,
    )
    for protocol, n in sessions.items():
        gauge.labels(protocol).set(n)
    Gauge("stt_proxy_other", "another series", registry=registry).set(99)
    return generate_latest(registry).decode()


def test_sessions_are_summed_over_protocols() -> None:
    assert sessions_in(exposition(ws=3, realtime=2)) == 5
    assert sessions_in(exposition()) == 0
    assert sessions_in("") == 0


def test_the_proxy_exports_the_series_the_autoscaler_reads() -> None:
    from prometheus_client import REGISTRY

    from controller.load import SESSIONS_METRIC
    from services.proxy import metrics as proxy_metrics

    proxy_metrics.SESSIONS_ACTIVE.labels("ws").inc()
    try:
        assert sessions_in(generate_latest(REGISTRY).decode()) >= 1
        assert proxy_metrics.SESSIONS_ACTIVE._name == SESSIONS_METRIC
    finally:
        proxy_metrics.SESSIONS_ACTIVE.labels("ws").dec()


def test_proxy_addresses_include_pods_that_are_not_ready() -> None:
    endpoints = {
        "subsets": [
            {"addresses": [{"ip": "10.0.0.2"}, {"ip": "10.0.0.1"}], "notReadyAddresses": [{"ip": "10.0.0.3"}]},
            {"addresses": [{"ip": "10.0.0.1"}]},
        ]
    }
    assert proxy_addresses(endpoints) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert proxy_addresses({}) == [] and proxy_addresses(None) == []


def test_every_proxy_is_read_and_summed() -> None:
    # Two loopback addresses on one port stand in for two proxy pods (same port, other IPs).
    with metrics_server(exposition(ws=2)) as a, metrics_server(exposition(ws=1, realtime=2), "127.0.0.2", a.port):
        reading = read_streams(["127.0.0.1", "127.0.0.2"], a.port, 2)
    assert (reading.streams, reading.proxies, reading.error) == (5, 2, "")
    assert read_streams([], 1, 1).streams == 0  # no proxy: nobody streams


def test_a_silent_proxy_makes_the_reading_unknown_within_the_deadline() -> None:
    with metrics_server(exposition(ws=4)) as server:
        server.hang.set()
        started = time.monotonic()
        reading = read_streams(["127.0.0.1", "127.0.0.2"], server.port, 0.5)
        elapsed = time.monotonic() - started
    assert reading.streams is None and reading.proxies == 2
    assert "2 of 2 proxies unread" in reading.error
    # the silent one: its socket timeout or the deadline, whichever fires first
    assert "127.0.0.1: no answer" in reading.error or "127.0.0.1: TimeoutError" in reading.error
    assert elapsed < 1.5, "all proxies are read under one deadline, not one each"


def test_a_refused_connection_is_reported_not_raised() -> None:
    with metrics_server() as server:
        port = server.port
    reading = read_streams(["127.0.0.1"], port, 1)  # the server is gone: connection refused
    assert reading.streams is None and "127.0.0.1" in reading.error


@pytest.mark.parametrize("text", ["not prometheus {{{", 'stt_proxy_sessions_active{protocol="ws"} many\n'])
def test_a_garbled_answer_is_an_unknown_load(text: str) -> None:
    with metrics_server(text) as server:
        reading = read_streams(["127.0.0.1"], server.port, 1)
    assert reading.streams is None and reading.error
