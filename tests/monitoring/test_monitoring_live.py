"""Every PromQL expression of the dashboard and the alerting rules, evaluated by a real
Prometheus that scrapes the real local stack after real speech went through it.

Set-up (once per module, ~30 s on 2 cores): tiny, base (CPU) and proxy on free ports, plus a
second base started with ``STT_DEVICE=cuda`` as the proxy's GPU backend (this machine has no
GPU, so it really falls back to CPU: the "CUDA requested, running on CPU" series exist for
real); Debian's Prometheus scraping all four every second. Traffic through the proxy: speech and
non-speech to /detect (both detectors), speech to /transcribe and the OpenAI route, undecodable
audio, an unknown detector, /gpu-toggle without, with a wrong and with the right token, then
the GPU backend is stopped mid-traffic so that the proxy's connect-error and "not ready"
fallbacks happen, and started again.

The same Prometheus evaluates the rules file, so alert evaluation is checked on real data too.
Only the operator's (``stt_controller_*``) and the live client's (``stt_client_*``) expressions
may be empty here; ALLOWED_MISSING lists them one by one, and a test proves the list is exact.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from monitoring.local_prometheus import PrometheusServer, ensure_installed, scrape_config
from monitoring.promql_check import (
    Expression,
    Prometheus,
    check,
    check_until,
    dashboard_expressions,
    report,
    rules_expressions,
)
from services.local_stack import Stack, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "stt" / "files" / "grafana-dashboard.json"
RULES = ROOT / "charts" / "stt" / "files" / "prometheus-rules.yml"
TOKEN = "monitoring-test-token"

# Expressions that need the operator or the live client, which the local stack does not run.
ALLOWED_MISSING = {
    "dashboard panel 'Routing mode over time' target B",
    "dashboard panel 'GPU replicas desired vs ready' target A",
    "dashboard panel 'GPU replicas desired vs ready' target B",
    "dashboard panel 'Reconciliations by result' target A",
    "dashboard panel 'SttConfig apply time' target A",
    "dashboard panel 'SttConfig apply time' target B",
    "dashboard panel 'Autoscaler: live streams and replicas' target A",
    "dashboard panel 'Autoscaler: live streams and replicas' target B",
    "dashboard panel 'Autoscaler: scale events and unread loads' target A",
    "dashboard panel 'Autoscaler: scale events and unread loads' target B",
    "dashboard panel 'Client chunks per second' target A",
    "dashboard panel 'Client chunks per second' target B",
    "dashboard panel 'Client chunks per second' target C",
    "dashboard panel 'Client chunks per second' target D",
    "dashboard panel 'Client lag' target A",
    "rules alert SttReconciliationFailing",
    "rules alert SttGpuReplicasNotReady",
    "rules alert SttAutoscalerAtMax",
    "rules alert SttClientDroppingChunks",
}


@dataclass
class Live:
    stack: Stack
    gpu: Stack
    prometheus: PrometheusServer
    expressions: list[Expression]
    fallback_headers: list[str]


def _audio(client: httpx.Client, url: str, path: Path | None = None, body: bytes | None = None, **params):
    content = body if body is not None else Path(path).read_bytes()
    return client.post(url, content=content, headers={"content-type": "audio/wav"}, params=params)


def _traffic(stack: Stack, gpu: Stack) -> list[str]:
    """Real requests through the proxy; returns the X-STT-Fallback headers seen."""
    from corpus import nonspeech_clips, speech_clips

    speech = sorted(speech_clips(), key=lambda c: c.path.stat().st_size)[:3]
    nonspeech = nonspeech_clips()[:3]
    proxy = stack.proxy_url
    fallbacks: list[str] = []
    with httpx.Client(timeout=60) as client:
        for clip in speech:
            assert _audio(client, f"{proxy}/detect", clip.path).status_code == 200
        assert _audio(client, f"{proxy}/detect", speech[0].path, detector="whisper-tiny").status_code == 200
        for clip in nonspeech:
            assert _audio(client, f"{proxy}/detect", clip.path).status_code == 200
        # Bad requests: undecodable audio (detector outcome "error"), an unknown detector.
        assert _audio(client, f"{proxy}/detect", body=b"RIFF but not really a wav").status_code in range(400, 500)
        assert _audio(client, f"{proxy}/detect", speech[0].path, detector="nope").status_code == 400
        assert _audio(client, f"{proxy}/transcribe", body=b"not audio at all").status_code in range(400, 500)

        for clip in speech:  # mode cpu
            response = _audio(client, f"{proxy}/transcribe", clip.path, language="en")
            assert response.status_code == 200 and response.headers["x-stt-backend"] == "cpu"
        with speech[0].path.open("rb") as handle:
            files = {"file": ("clip.wav", handle, "audio/wav")}
            assert client.post(f"{proxy}/v1/audio/transcriptions", files=files).status_code == 200

        _stream_session(stack, speech[0].path)  # mode cpu: its windows add no fallback
        toggle = f"{proxy}/gpu-toggle"
        assert client.post(toggle, json={"mode": "gpu"}).status_code == 401
        assert client.post(toggle, json={"mode": "gpu"}, headers={"authorization": "Bearer wrong"}).status_code == 403
        auth = {"authorization": f"Bearer {TOKEN}"}
        assert client.post(toggle, content=b"{not json", headers=auth).status_code == 400
        assert client.post(toggle, json={"mode": "gpu"}, headers=auth).json()["mode"] == "gpu"
        assert client.get(f"{proxy}/gpu-status").json()["backends"]["gpu"]["ready"] is True

        for clip in speech[:2]:  # mode gpu, GPU backend up
            response = _audio(client, f"{proxy}/transcribe", clip.path, language="en")
            assert response.headers["x-stt-backend"] == "gpu"

        gpu.stop("base")  # the proxy learns of it from the next request (health checks are 30 s apart)
        for clip in speech[:3]:
            response = _audio(client, f"{proxy}/transcribe", clip.path, language="en")
            assert response.status_code == 200 and response.headers["x-stt-backend"] == "cpu"
            fallbacks.append(response.headers.get("x-stt-fallback", ""))
        gpu.start("base")  # back, so its series are current when the expressions are evaluated
    return fallbacks


def _stream_session(stack: Stack, wav: Path) -> None:
    """One live session over /v1/stream to its end, so the session series have data."""
    import json
    import wave

    from websockets.sync.client import connect

    with wave.open(str(wav)) as handle:
        pcm = handle.readframes(handle.getnframes())
    url = stack.proxy_url.replace("http://", "ws://") + "/v1/stream?language=en"
    with connect(url, open_timeout=10) as ws:
        for i in range(0, len(pcm), 6400):
            ws.send(pcm[i : i + 6400])
        ws.send(json.dumps({"type": "stop"}))
        events = [json.loads(message) for message in ws]
    assert events[-1]["type"] == "session.ended" and events[-1]["text"]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    binary = ensure_installed()
    workdir = tmp_path_factory.mktemp("monitoring")
    gpu_port = free_port()
    stack = Stack(
        ports={"proxy": free_port(), "base": free_port(), "tiny": free_port()},
        env={
            "STT_ADMIN_TOKEN": TOKEN,
            "STT_GPU_BACKEND_URL": f"http://127.0.0.1:{gpu_port}",
            "STT_HEALTH_INTERVAL_S": "30",
            "STT_CPU_THREADS": "1",
        },
        run_dir=workdir / "stack",
    )
    gpu = Stack(ports={"base": gpu_port}, env={"STT_DEVICE": "cuda", "STT_CPU_THREADS": "1"}, run_dir=workdir / "gpu")
    prometheus: PrometheusServer | None = None
    try:
        stack.start("tiny", wait=False)
        stack.start("base", wait=False)
        gpu.start("base", wait=False)
        stack.wait_ready(["tiny", "base"])
        gpu.wait_ready(["base"])
        stack.start("proxy")  # last: its first health check must see the GPU backend ready
        # Prometheus last, scraping the ports the services really have (Stack.start moves a service
        # whose port was taken before it could bind it; a fresh-machine run lost the proxy's so)
        jobs = {
            "stt-proxy": [f"127.0.0.1:{stack.ports['proxy']}"],
            "stt-base": [f"127.0.0.1:{stack.ports['base']}"],
            "stt-base-gpu": [f"127.0.0.1:{gpu_port}"],
            "stt-tiny": [f"127.0.0.1:{stack.ports['tiny']}"],
        }
        prometheus = PrometheusServer(workdir / "prometheus", free_port(), scrape_config(jobs, 1.0, [RULES]), binary)
        prometheus.start()
        prometheus.wait_targets_up()
        fallbacks = _traffic(stack, gpu)
        prometheus.wait_scraped_after(time.time())  # instant values below include all of the traffic
        expressions = dashboard_expressions(DASHBOARD) + rules_expressions(RULES)
        yield Live(stack, gpu, prometheus, expressions, fallbacks)
    finally:
        if prometheus is not None:
            prometheus.stop()
        gpu.down()
        stack.down()


@pytest.fixture(scope="module")
def prom(live: Live) -> Iterator[Prometheus]:
    client = Prometheus(live.prometheus.url)
    yield client
    client.close()


def _allowed_exprs(live: Live) -> list[str]:
    return [e.expr for e in live.expressions if e.source in ALLOWED_MISSING]


def test_every_dashboard_and_rule_expression_has_series(live: Live, prom: Prometheus) -> None:
    results = check_until(prom, live.expressions, wait_s=45, allow_missing_exprs=_allowed_exprs(live))
    text = report(results)
    assert all(r.ok for r in results), text
    allowed = {r.expression.source for r in results if r.allowed_missing}
    assert allowed <= ALLOWED_MISSING, text


def test_allow_list_is_exact(live: Live, prom: Prometheus) -> None:
    """Without the allow-list exactly the operator/client expressions fail, none of the others."""
    check_until(prom, live.expressions, wait_s=45, allow_missing_exprs=_allowed_exprs(live))  # series settled
    failing = {r.expression.source for r in check(prom, live.expressions) if not r.ok}
    assert failing == ALLOWED_MISSING
    for expression in live.expressions:
        if expression.source in ALLOWED_MISSING:
            assert "stt_controller_" in expression.expr or "stt_client_" in expression.expr, expression.source


def test_fallback_and_admin_series_say_what_happened(live: Live) -> None:
    """The series the alerts and panels rely on carry the right labels, not just any values."""
    assert live.fallback_headers[0] == "gpu backend unreachable"
    assert set(live.fallback_headers[1:]) == {"gpu backend not ready"}
    q = live.prometheus.query
    reasons = {s["metric"]["reason"]: float(s["value"][1]) for s in q("stt_proxy_fallbacks_total")}
    assert reasons == {"gpu backend unreachable": 1.0, "gpu backend not ready": 2.0}
    routed = {
        (s["metric"]["backend"], s["metric"]["mode"]): float(s["value"][1]) for s in q("stt_proxy_routed_total > 0")
    }
    # mode cpu: 3 chunks, 1 file window, 1 window of the live session (one short clip)
    assert routed == {("cpu", "cpu"): 6.0, ("gpu", "gpu"): 2.0, ("cpu", "gpu"): 3.0}
    admin = {s["metric"]["result"]: float(s["value"][1]) for s in q("stt_proxy_admin_actions_total > 0")}
    assert admin == {"unauthenticated": 1.0, "forbidden": 1.0, "bad_request": 1.0, "ok": 1.0}
    errors = q('stt_proxy_upstream_errors_total{backend="gpu", kind="connect"}')
    assert [float(s["value"][1]) for s in errors] == [1.0]
    outcomes = {(s["metric"]["detector"], s["metric"]["outcome"]) for s in q("stt_detector_decisions_total > 0")}
    assert {("silero", "speech"), ("silero", "no_speech"), ("silero", "error"), ("whisper-tiny", "speech")} <= outcomes


def test_cuda_fallback_is_visible_and_only_on_the_gpu_side(live: Live) -> None:
    gpu_instance = f"127.0.0.1:{live.gpu.ports['base']}"
    firing = live.prometheus.query("stt_cuda_fallback == 1")
    assert [s["metric"]["instance"] for s in firing] == [gpu_instance]
    info = {
        (s["metric"]["instance"], s["metric"]["requested"], s["metric"]["device"])
        for s in live.prometheus.query("stt_device_info")
    }
    assert info == {(gpu_instance, "cuda", "cpu"), (f"127.0.0.1:{live.stack.ports['base']}", "cpu", "cpu")}


def test_cli_passes_with_allowances_and_fails_without(live: Live) -> None:
    base = [sys.executable, "-m", "monitoring.promql_check", "--prometheus", live.prometheus.url]
    base += ["--dashboard", str(DASHBOARD), "--rules", str(RULES)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    allowed = [*base, "--allow-missing-prefix", "stt_controller_", "--allow-missing-prefix", "stt_client_"]
    start = time.monotonic()
    ok = subprocess.run([*allowed, "--wait", "30"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 failed" in ok.stdout
    strict = subprocess.run(base, capture_output=True, text=True, cwd=ROOT, env=env)
    assert strict.returncode == 1
    assert f"{len(ALLOWED_MISSING)} failed" in strict.stdout
    assert time.monotonic() - start < 60


def test_check_reports_errors_typos_and_quiet_alert_signals(prom: Prometheus) -> None:
    """The checker itself against the live Prometheus: what must fail fails, with the reason."""
    results = check(
        prom,
        [
            Expression("syntax", "sum(rate(stt_http_requests_total[1m])", "graph"),
            Expression("typo", "sum(rate(stt_http_request_total[1m]))", "graph"),
            Expression("label typo", 'stt_ready{servce="base"}', "graph"),
            Expression("quiet alert", "stt_ready == 0", "alert"),  # healthy: empty, yet passes
            Expression("alert typo", "(max(stt_redy) == 0) and on() (max(stt_ready) == 1)", "alert"),
            Expression("allowed by prefix", "stt_controller_gpu_replicas_ready", "graph"),
        ],
        allow_missing_prefixes=["stt_controller_"],
    )
    verdict = {r.expression.source: (r.ok, r.problems) for r in results}
    assert verdict["syntax"][0] is False and "parse" in verdict["syntax"][1][0]
    assert verdict["typo"] == (False, ["no series"])
    assert verdict["label typo"] == (False, ["no series"])
    assert verdict["quiet alert"] == (True, [])
    assert verdict["alert typo"] == (False, ["no series for 'max(stt_redy)'"])
    assert verdict["allowed by prefix"] == (True, [])


def test_prometheus_evaluates_every_rule_and_the_cuda_alert_is_pending(live: Live) -> None:
    """The rules loaded into the same Prometheus: no evaluation errors, and the CUDA fallback of
    the GPU-side base (real, this machine has no GPU) makes its alert pending (``for: 5m``)."""
    gpu_instance = f"127.0.0.1:{live.gpu.ports['base']}"
    deadline = time.monotonic() + 20
    while True:
        rules = {rule["name"]: rule for rule in live.prometheus.rules()}
        cuda = rules["SttCudaRequestedRunningOnCpu"]["alerts"]
        if cuda or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(rules) == sorted(e.source.removeprefix("rules alert ") for e in rules_expressions(RULES))
    assert {name: (r["health"], r.get("lastError")) for name, r in rules.items() if r["health"] != "ok"} == {}
    assert [(a["state"], a["labels"]["instance"]) for a in cuda] == [("pending", gpu_instance)]
    assert rules["SttHighErrorRatio"]["alerts"] == []  # only 4xx were sent
    assert rules["SttBackendUnavailable"]["alerts"] == []
    assert rules["SttBeamsDroppedUnderLoad"]["alerts"] == []  # one session, never behind
