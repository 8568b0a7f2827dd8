"""The Grafana dashboard, as code: ``python -m monitoring.dashboard --write`` regenerates
``charts/stt/files/grafana-dashboard.json``.

Why code and not a hand-edited export: every query shares one label filter
(``namespace=~"$namespace"``), one datasource variable and one layout rule, and a reviewer can
read a panel's PromQL here in one line. A test fails when the committed JSON and this module
disagree, so edit here (or export from Grafana and port the change back).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_PATH = ROOT / "charts" / "stt" / "files" / "grafana-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
NS = 'namespace=~"$namespace"'  # `.*` (All) also matches series without a namespace (local stack)
NOT_PROBES = 'route!~"/metrics|/healthz|/readyz"'
CODE_4XX_5XX = 'code=~"[45].."'
SPEECH = 'outcome="speech"'
DECIDED = 'outcome=~"speech|no_speech"'


def m(metric: str, matchers: str = "") -> str:
    """A selector with the dashboard-wide namespace filter."""
    return f"{metric}{{{NS}{', ' + matchers if matchers else ''}}}"


def q(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict:
    target: dict[str, object] = {
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "refId": ref,
    }
    if instant:
        target.update(instant=True, range=False, format="table")
    return target


def quantiles(histogram: str, by: str, matchers: str = "", qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> list[dict]:
    """p50/p95/p99 targets of a histogram, one series per ``by`` label value."""
    targets = []
    for index, quantile in enumerate(qs):
        expr = f"histogram_quantile({quantile}, sum by (le, {by}) (rate({m(histogram + '_bucket', matchers)}[{RATE}])))"
        legend = " ".join("{{" + label.strip() + "}}" for label in by.split(",")) + f" p{round(quantile * 100)}"
        targets.append(q(expr, legend, chr(ord("A") + index)))
    return targets


class Layout:
    """Places panels left to right on Grafana's 24-column grid, rows on their own line."""

    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.x = self.y = 0
        self.row_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {"type": "row", "title": title, "collapsed": False, "id": len(self.panels) + 1, "panels": []}
            | {"gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}}
        )
        self.y += 1

    def add(self, panel: dict, w: int = 8, h: int = 8) -> None:
        if self.x + w > 24:
            self._newline()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        panel["id"] = len(self.panels) + 1
        panel.setdefault("datasource", DATASOURCE)
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_height
        self.x, self.row_height = 0, 0


def timeseries(
    title: str,
    description: str,
    targets: list[dict],
    unit: str = "short",
    stack: str | None = None,
    thresholds: list[tuple[float, str]] | None = None,
    minimum: float | None = 0,
    maximum: float | None = None,
) -> dict:
    custom: dict = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    if stack:
        custom["stacking"] = {"mode": stack, "group": "A"}
    defaults: dict = {"unit": unit, "custom": custom}
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    if thresholds:
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": "green", "value": None}] + [{"color": c, "value": v} for v, c in thresholds],
        }
        custom["thresholdsStyle"] = {"mode": "line+area"}
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
    }


def stat(title: str, description: str, targets: list[dict], mappings: list | None = None, **defaults) -> dict:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {"defaults": {"mappings": mappings or [], **defaults}, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
        },
    }


def table(title: str, description: str, targets: list[dict]) -> dict:
    return {
        "type": "table",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}}],
    }


UP_DOWN = [
    {"type": "value", "options": {"0": {"text": "NOT READY", "color": "red"}, "1": {"text": "ready", "color": "green"}}}
]
RED_IF_ONE = {"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}]}
RED_IF_ZERO = {"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}]}


def build() -> dict:
    g = Layout()
    requests = m("stt_http_requests_total", NOT_PROBES)

    g.row("Overview")
    g.add(
        stat(
            "Readiness",
            "stt_ready per service (min over replicas): 0 while a model loads or the service shuts down.",
            [q(f"min by (service) ({m('stt_ready')})", "{{service}}")],
            UP_DOWN,
            thresholds=RED_IF_ZERO,
        ),
        w=6,
        h=5,
    )
    g.add(
        stat(
            "Backend health seen by the proxy",
            "stt_proxy_backend_ready (max over proxy replicas). GPU at 0 is normal while routing is cpu.",
            [q(f"max by (backend) ({m('stt_proxy_backend_ready')})", "{{backend}}")],
            UP_DOWN,
            thresholds=RED_IF_ZERO,
        ),
        w=6,
        h=5,
    )
    g.add(
        stat(
            "Routing mode (proxy)",
            "The mode the proxies route by (stt_proxy_routing_mode is 1 for the mode in force).",
            [q(f"max by (mode) ({m('stt_proxy_routing_mode')}) == 1", "{{mode}}")],
        )
        | {"options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "textMode": "name"}},
        w=4,
        h=5,
    )
    g.add(
        stat(
            "CUDA requested, running on CPU",
            "base replicas whose model fell back to CPU although CUDA was requested (stt_cuda_fallback).",
            [q(f"sum({m('stt_cuda_fallback')})", "replicas")],
            thresholds=RED_IF_ONE,
        ),
        w=4,
        h=5,
    )
    g.add(
        stat(
            "Model load time",
            "Seconds the last model load took, per service and model (stt_model_load_seconds).",
            [q(f"max by (service, model) ({m('stt_model_load_seconds')})", "{{service}} {{model}}")],
            unit="s",
        ),
        w=4,
        h=5,
    )
    g.add(
        table(
            "Build versions",
            "Replicas per service and version (stt_build_info): two versions at once means a rollout.",
            [q(f"count by (service, version) ({m('stt_build_info')})", instant=True)],
        ),
        w=12,
        h=6,
    )
    g.add(
        table(
            "Device in use (base)",
            "Replicas per requested device, device actually used, compute type and model (stt_device_info).",
            [q(f"count by (requested, device, compute_type, model) ({m('stt_device_info')})", instant=True)],
        ),
        w=12,
        h=6,
    )

    g.row("Traffic and errors")
    g.add(
        timeseries(
            "Requests per second",
            "By service and route (probes and scrapes excluded).",
            [q(f"sum by (service, route) (rate({requests}[{RATE}]))", "{{service}} {{route}}")],
            "reqps",
        )
    )
    g.add(
        timeseries(
            "Error responses per second",
            "4xx (client sent something wrong) and 5xx (we failed), by service and status code.",
            [
                q(
                    f"sum by (service, code) (rate({m('stt_http_requests_total', CODE_4XX_5XX)}[{RATE}]))",
                    "{{service}} {{code}}",
                )
            ],
            "reqps",
        )
    )
    five_xx = m("stt_http_requests_total", f'{NOT_PROBES}, code=~"5.."')
    all_requests = f"sum by (service) (rate({requests}[{RATE}]))"
    g.add(
        timeseries(
            "5xx error ratio",
            "Share of answers that were 5xx, per service; 0 (not 'No data') when all is well. Alert at 5%.",
            [q(f"(sum by (service) (rate({five_xx}[{RATE}])) or {all_requests} * 0) / {all_requests}", "{{service}}")],
            "percentunit",
            thresholds=[(0.05, "red")],
        )
    )
    g.add(
        timeseries(
            "In-flight requests",
            "Requests being handled right now, per service (stt_http_requests_in_flight).",
            [q(f"sum by (service) ({m('stt_http_requests_in_flight')})", "{{service}}")],
        )
    )
    g.add(
        timeseries(
            "Audio seconds per second",
            "Audio received by base vs transcribed, per device. A value of N means N live streams.",
            [
                q(f"sum(rate({m('stt_audio_received_seconds_total')}[{RATE}]))", "received", "A"),
                q(
                    f"sum by (device) (rate({m('stt_audio_transcribed_seconds_total')}[{RATE}]))",
                    "transcribed {{device}}",
                    "B",
                ),
            ],
        )
    )
    g.add(
        timeseries(
            "Upstream errors (proxy → backends)",
            "Backend calls that failed to connect or timed out, by backend and kind.",
            [
                q(
                    f"sum by (backend, kind) (rate({m('stt_proxy_upstream_errors_total')}[{RATE}]))",
                    "{{backend}} {{kind}}",
                )
            ],
            "reqps",
        )
    )

    g.row("Latency")
    g.add(
        timeseries(
            "Transcription latency per backend",
            "Proxy → backend time of /transcribe chunks, p50/p95/p99 per backend (cpu, gpu). "
            "Above the 3 s chunk length the transcript falls behind live audio.",
            quantiles("stt_proxy_upstream_duration_seconds", "backend", 'route="/transcribe"'),
            "s",
            thresholds=[(3, "red")],
        ),
        w=12,
    )
    g.add(
        timeseries(
            "HTTP latency p95 by service and route",
            "Request start to last byte, measured in each service.",
            [
                q(
                    f"histogram_quantile(0.95, sum by (le, service, route) "
                    f"(rate({m('stt_http_request_duration_seconds_bucket', NOT_PROBES)}[{RATE}])))",
                    "{{service}} {{route}}",
                )
            ],
            "s",
        ),
        w=12,
    )
    g.add(
        timeseries(
            "Model time per batch (base)",
            "faster-whisper time per batch call, p50/p95/p99 per device.",
            quantiles("stt_transcription_processing_seconds", "device"),
            "s",
        )
    )
    g.add(
        timeseries(
            "Queue wait (base)",
            "Time a chunk waited for its batch to start, p50/p95/p99.",
            [
                q(
                    f"histogram_quantile({qq}, sum by (le) (rate({m('stt_queue_wait_seconds_bucket')}[{RATE}])))",
                    f"p{round(qq * 100)}",
                    r,
                )
                for qq, r in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
            ],
            "s",
        )
    )
    g.add(
        timeseries(
            "Detector time",
            "Speech detector model time per chunk, p50/p95/p99 per detector (milliseconds scale).",
            quantiles("stt_detector_processing_seconds", "detector"),
            "s",
        )
    )

    g.row("Whisper backend (base)")
    g.add(
        timeseries(
            "Real-time factor",
            "Model seconds per audio second, per device (below 1 is faster than real time): overall ratio, "
            "and p95 of per-batch values.",
            [
                q(
                    f"sum by (device) (rate({m('stt_transcription_processing_seconds_sum')}[{RATE}])) / "
                    f"sum by (device) (rate({m('stt_audio_transcribed_seconds_total')}[{RATE}]))",
                    "{{device}} overall",
                    "A",
                ),
                q(
                    f"histogram_quantile(0.95, sum by (le, device) "
                    f"(rate({m('stt_transcription_realtime_factor_bucket')}[{RATE}])))",
                    "{{device}} p95 per batch",
                    "B",
                ),
            ],
            thresholds=[(1, "red")],
        )
    )
    g.add(
        timeseries(
            "Queue depth",
            "Chunks waiting for the model, per base replica (STT_MAX_QUEUE rejects beyond 64).",
            [q(f"max by (instance) ({m('stt_queue_depth')})", "{{instance}}")],
        )
    )
    g.add(
        timeseries(
            "Batch size",
            "Chunks per model call: mean and p95. Mostly 1 means batching is not helping (light load).",
            [
                q(
                    f"sum(rate({m('stt_batch_size_sum')}[{RATE}])) / sum(rate({m('stt_batch_size_count')}[{RATE}]))",
                    "mean",
                    "A",
                ),
                q(f"histogram_quantile(0.95, sum by (le) (rate({m('stt_batch_size_bucket')}[{RATE}])))", "p95", "B"),
            ],
        )
    )
    g.add(
        timeseries(
            "Decodes by beam size",
            "Live chunks and file windows decoded per second, by the beams of their first decode (1: greedy, "
            "as HTTP chunks and files are; streaming sessions ask for 5), and session windows that asked for "
            "beams but were decoded greedily because the replica had fallen behind: a steady share of those "
            "means less accurate live transcripts (alert SttBeamsDroppedUnderLoad).",
            [
                q(
                    f"sum by (beam_size) (rate({m('stt_chunks_decoded_total')}[{RATE}]))",
                    "{{beam_size}} beams",
                    "A",
                ),
                q(f"sum(rate({m('stt_chunks_greedy_under_load_total')}[{RATE}]))", "greedy under load", "B"),
            ],
            "reqps",
        )
    )

    g.row("Routing (proxy)")
    routed = m("stt_proxy_routed_total")
    g.add(
        timeseries(
            "CPU vs GPU share",
            "Share of transcriptions served by each backend.",
            [
                q(
                    f"sum by (backend) (rate({routed}[{RATE}])) / ignoring(backend) group_left "
                    f"sum(rate({routed}[{RATE}]))",
                    "{{backend}}",
                )
            ],
            "percentunit",
            stack="normal",
            maximum=1,
        )
    )
    g.add(
        timeseries(
            "Routed per second by backend and mode",
            "Which backend served, under which routing mode: cpu under mode gpu is a fallback.",
            [q(f"sum by (backend, mode) (rate({routed}[{RATE}]))", "{{backend}} (mode {{mode}})")],
            "reqps",
        )
    )
    g.add(
        timeseries(
            "Fallbacks per second by reason",
            "Requests not served by the backend the mode asked for (stt_proxy_fallbacks_total).",
            [q(f"sum by (reason) (rate({m('stt_proxy_fallbacks_total')}[{RATE}]))", "{{reason}}")],
            "reqps",
        )
    )
    g.add(
        timeseries(
            "Backend health over time",
            "1 = the backend's last /readyz answered 200 (min over proxy replicas).",
            [q(f"min by (backend) ({m('stt_proxy_backend_ready')})", "{{backend}}")],
            maximum=1,
        )
    )
    g.add(
        timeseries(
            "Routing mode over time",
            "Mode in force at the proxies and the mode the operator applied.",
            [
                q(f"max by (mode) ({m('stt_proxy_routing_mode')})", "proxy {{mode}}", "A"),
                q(f"max by (mode) ({m('stt_controller_routing_mode')})", "controller {{mode}}", "B"),
            ],
            maximum=1,
        )
    )
    g.add(
        table(
            "Admin actions (dashboard range)",
            "/gpu-toggle calls by result: ok, unauthenticated, forbidden, bad_request, disabled, error.",
            [
                q(
                    f"sum by (action, result) (increase({m('stt_proxy_admin_actions_total')}[$__range]))",
                    instant=True,
                )
            ],
        )
        | {"transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True}}}]}
    )

    g.row("Streaming sessions (proxy)")
    g.add(
        timeseries(
            "Open sessions by protocol",
            "WebSocket sessions open now (stt_proxy_sessions_active): native /v1/stream and OpenAI realtime.",
            [q(f"sum by (protocol) ({m('stt_proxy_sessions_active')})", "{{protocol}}")],
        )
    )
    g.add(
        timeseries(
            "Sessions ended and refused per second",
            "How sessions ended (finished, disconnected, error, too_far_behind) and why some were refused "
            "(session_cap: the replica's STT_MAX_SESSIONS; origin; bad_request).",
            [
                q(f"sum by (outcome) (rate({m('stt_proxy_sessions_total')}[{RATE}]))", "ended {{outcome}}", "A"),
                q(
                    f"sum by (reason) (rate({m('stt_proxy_sessions_refused_total')}[{RATE}]))",
                    "refused {{reason}}",
                    "B",
                ),
            ],
            "reqps",
        )
    )
    g.add(
        timeseries(
            "Session lag",
            "Audio received but not yet processed: the largest of any open session now, and p95 over steps. "
            "A lag that keeps growing means the backends cannot keep up (alert SttSessionLagGrowing).",
            [
                q(f"max({m('stt_proxy_session_max_lag_seconds')})", "largest now", "A"),
                q(
                    "histogram_quantile(0.95, sum by (le) "
                    f"(rate({m('stt_proxy_session_lag_seconds_bucket')}[{RATE}])))",
                    "p95 per step",
                    "B",
                ),
            ],
            "s",
        )
    )
    g.add(
        timeseries(
            "Session first-partial latency",
            "End of a step's audio arriving at the proxy → the words decoded from it sent to the client.",
            quantiles("stt_proxy_session_first_partial_seconds", "job"),
            "s",
        )
    )
    g.add(
        timeseries(
            "Session commit latency",
            "End of a word's audio arriving at the proxy → that word sent as committed (final).",
            quantiles("stt_proxy_session_commit_seconds", "job"),
            "s",
        )
    )
    g.add(
        timeseries(
            "Session audio per second",
            "Seconds of audio the sessions receive per second: about the number of people talking.",
            [q(f"sum(rate({m('stt_proxy_session_audio_seconds_total')}[{RATE}]))", "audio s/s")],
        )
    )

    g.row("Speech detector (tiny)")
    decisions = m("stt_detector_decisions_total")
    g.add(
        timeseries(
            "Speech ratio",
            "Share of chunks the detector called speech, per detector (errors excluded).",
            [
                q(
                    f"sum by (detector) (rate({m('stt_detector_decisions_total', SPEECH)}[{RATE}])) / "
                    f"sum by (detector) (rate({m('stt_detector_decisions_total', DECIDED)}[{RATE}]))",
                    "{{detector}}",
                )
            ],
            "percentunit",
            maximum=1,
        )
    )
    g.add(
        timeseries(
            "Decisions per second",
            "By detector and outcome (speech, no_speech, error = undecodable audio).",
            [q(f"sum by (detector, outcome) (rate({decisions}[{RATE}]))", "{{detector}} {{outcome}}")],
            "ops",
        )
    )
    g.add(
        timeseries(
            "Audio examined per second",
            "Seconds of audio the detector looked at per second, per detector.",
            [q(f"sum by (detector) (rate({m('stt_detector_audio_seconds_total')}[{RATE}]))", "{{detector}}")],
        )
    )

    g.row("Operator (controller)")
    g.add(
        timeseries(
            "GPU replicas desired vs ready",
            "What the operator asked for and what is ready; a lasting gap means no GPU node or a failing pod.",
            [
                q(f"max({m('stt_controller_gpu_replicas_desired')})", "desired", "A"),
                q(f"max({m('stt_controller_gpu_replicas_ready')})", "ready", "B"),
            ],
        )
    )
    g.add(
        timeseries(
            "Reconciliations by result",
            "SttConfig reconciliations per second, success vs error.",
            [q(f"sum by (result) (rate({m('stt_controller_reconciliations_total')}[{RATE}]))", "{{result}}")],
            "ops",
        )
    )
    g.add(
        timeseries(
            "SttConfig apply time",
            "From an SttConfig change observed to applied, p50/p95.",
            [
                q(
                    f"histogram_quantile({qq}, sum by (le) (rate({m('stt_controller_apply_seconds_bucket')}[{RATE}])))",
                    f"p{round(qq * 100)}",
                    r,
                )
                for qq, r in ((0.5, "A"), (0.95, "B"))
            ],
            "s",
        )
    )

    g.add(
        timeseries(
            "Autoscaler: live streams and replicas",
            "Per autoscaled backend (spec.autoscaling): the live streams the operator read from the proxies "
            "and the replicas it asks for. Empty while autoscaling is off.",
            [
                q(f"max by (backend) ({m('stt_controller_autoscaler_streams')})", "{{backend}} streams", "A"),
                q(f"max by (backend) ({m('stt_controller_autoscaler_replicas_desired')})", "{{backend}} replicas", "B"),
            ],
        )
    )
    g.add(
        timeseries(
            "Autoscaler: scale events and unread loads",
            "Replica changes by backend and reason (also Kubernetes Events on the SttConfig), and evaluations "
            "that held the replicas because a proxy could not be read.",
            [
                q(
                    f"sum by (backend, reason) (increase({m('stt_controller_autoscaler_scale_events_total')}[{RATE}]))",
                    "{{backend}} {{reason}}",
                    "A",
                ),
                q(f"sum(increase({m('stt_controller_autoscaler_load_read_failures_total')}[{RATE}]))", "unread", "B"),
            ],
        )
    )

    g.row("Live client (--metrics-port)")
    g.add(
        timeseries(
            "Client chunks per second",
            "Captured, sent, retried and dropped chunks (dropped should stay 0).",
            [
                q(f"sum(rate({m(f'stt_client_chunks_{what}_total')}[{RATE}]))", what, chr(ord("A") + i))
                for i, what in enumerate(("captured", "sent", "retried", "dropped"))
            ],
            "ops",
        ),
        w=12,
    )
    g.add(
        timeseries(
            "Client lag",
            "Seconds from capturing audio to having its words, per client.",
            [q(f"max by (instance) ({m('stt_client_lag_seconds')})", "{{instance}}")],
            "s",
            thresholds=[(10, "red")],
        ),
        w=12,
    )

    g.row("Processes")
    info = f"group_left(service) {m('stt_build_info')}"
    g.add(
        timeseries(
            "Resident memory",
            "process_resident_memory_bytes per service replica (prometheus-client's process collector).",
            [q(f"process_resident_memory_bytes * on(instance) {info}", "{{service}} {{instance}}")],
            "bytes",
        ),
        w=12,
    )
    g.add(
        timeseries(
            "CPU used",
            "CPU cores used per service replica (rate of process_cpu_seconds_total).",
            [q(f"rate(process_cpu_seconds_total[{RATE}]) * on(instance) {info}", "{{service}} {{instance}}")],
        ),
        w=12,
    )

    return {
        "title": "Speech-to-text (Whisper)",
        "uid": "stt-overview",
        "description": "Traffic, latency, routing, detector, operator and client of stt (docs/monitoring.md)",
        "tags": ["stt", "whisper"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                },
                {
                    "name": "namespace",
                    "label": "Namespace",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": {"query": "label_values(stt_build_info, namespace)", "refId": "namespace"},
                    "definition": "label_values(stt_build_info, namespace)",
                    "includeAll": True,
                    "allValue": ".*",
                    "multi": True,
                    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                    "refresh": 2,
                    "sort": 1,
                    "hide": 0,
                },
            ]
        },
        "panels": g.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the Grafana dashboard JSON.")
    parser.add_argument("--write", action="store_true", help=f"write {DASHBOARD_PATH.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    if args.write:
        DASHBOARD_PATH.parent.mkdir(parents=True, exist_ok=True)
        DASHBOARD_PATH.write_text(render())
        print(f"wrote {DASHBOARD_PATH.relative_to(ROOT)}")
    else:
        sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
