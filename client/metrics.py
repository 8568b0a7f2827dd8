"""``--metrics-port``: expose :class:`client.stats.Stats` as Prometheus metrics.

A custom collector reads the live Stats on every scrape, so the stages never touch
prometheus objects and the numbers cannot disagree with what the display shows.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from client.stats import Stats

COUNTERS = {
    "stt_client_chunks_captured": ("chunks_captured", "Chunks cut from the input"),
    "stt_client_chunks_sent": ("chunks_sent", "Chunks transcribed (answered by the service)"),
    "stt_client_chunks_retried": ("chunks_retried", "Failed transcription attempts that were retried"),
    "stt_client_chunks_dropped": ("chunks_dropped", "Chunks given up on; should always be 0"),
    "stt_client_chunks_nonspeech": ("chunks_nonspeech", "Chunks skipped because the detector heard no speech"),
    "stt_client_capture_overruns": ("overruns", "Audio blocks lost because capture fell behind"),
    "stt_client_reconnects": ("reconnects", "--transport ws: streaming sessions lost and tried again"),
    "stt_client_spill_failures": ("spill_failures", "Chunks kept in memory because writing them to disk failed"),
    "stt_client_chunks_recovered": ("chunks_recovered", "Chunks of an interrupted run replayed from the spill dir"),
}


class StatsCollector(Collector):
    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        for name, (attr, doc) in COUNTERS.items():
            family = CounterMetricFamily(name, doc)
            family.add_metric([], getattr(self.stats, attr))
            yield family
        reasons = CounterMetricFamily(
            "stt_client_chunks_dropped_by_reason", "Chunks given up on, by reason", labels=["reason"]
        )
        for reason, count in sorted(self.stats.drop_reasons.items()):
            reasons.add_metric([reason], count)
        yield reasons
        yield GaugeMetricFamily(
            "stt_client_lag_seconds", "Seconds from capturing audio to having its words", value=self.stats.lag_s
        )
        yield GaugeMetricFamily(
            "stt_client_behind_seconds", "Seconds of captured audio not yet transcribed", value=self.stats.behind_s
        )
        yield GaugeMetricFamily(
            "stt_client_chunks_held", "Chunks waiting to be sent (memory and disk)", value=self.stats.chunks_held
        )
        yield GaugeMetricFamily(
            "stt_client_audio_held_seconds",
            "--transport ws: audio kept until the server acknowledges it (memory and disk)",
            value=self.stats.audio_held_s,
        )


def serve(stats: Stats, port: int, addr: str = "127.0.0.1") -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StatsCollector(stats))
    start_http_server(port, addr=addr, registry=registry)
    return registry
