"""The load signal of the autoscaler: live streams, read from the proxies themselves.

Every proxy counts its open streaming sessions (``stt_proxy_sessions_active``, one series per
protocol) on its ``/metrics``. The operator finds the proxy pods in the Endpoints of the
proxy's metrics Service (ready and not-ready addresses alike: a proxy that is draining still
serves its sessions) and reads each one directly, so autoscaling works on a cluster without
Prometheus. The reads run in parallel under one deadline, so a resync waits at most
``timeout_s`` for all of them, however many proxies there are.

A reading is complete only when every proxy answered: the autoscaler does not act on a partial
sum (an unread proxy may hold many streams), see :func:`controller.autoscaling.hold`.
"""

from __future__ import annotations

import concurrent.futures
import urllib.request
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

SESSIONS_METRIC = "stt_proxy_sessions_active"
# Enough for a few thousand series; a proxy's /metrics is ~40 KB.
MAX_METRICS_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Reading:
    """Live streams summed over the proxies (``None``: not every proxy answered; ``error`` says which)."""

    streams: float | None
    proxies: int
    error: str = ""


def proxy_addresses(endpoints: dict[str, Any] | None) -> list[str]:
    """Pod IPs in an Endpoints object, ready or not (a not-ready proxy may still be draining)."""
    ips: list[str] = []
    for subset in (endpoints or {}).get("subsets") or []:
        for key in ("addresses", "notReadyAddresses"):
            ips.extend(a["ip"] for a in subset.get(key) or [] if a.get("ip"))
    return sorted(set(ips))


def sessions_in(metrics_text: str) -> float:
    """The sum of ``stt_proxy_sessions_active`` over its protocols in one exposition text."""
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name == SESSIONS_METRIC:
            total += sum(s.value for s in family.samples if s.name == SESSIONS_METRIC)
    return total


def _read_one(url: str, timeout_s: float) -> float:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return sessions_in(r.read(MAX_METRICS_BYTES).decode("utf-8", "replace"))


def read_streams(ips: list[str], port: int, timeout_s: float) -> Reading:
    """Read every proxy at ``http://<ip>:<port>/metrics`` in parallel, within ``timeout_s`` in all."""
    if not ips:
        return Reading(0.0, 0)  # no proxy runs: nobody can be streaming
    urls = {ip: f"http://{ip}:{port}/metrics" for ip in ips}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(ips)), thread_name_prefix="load")
    try:
        futures = {ip: pool.submit(_read_one, url, timeout_s) for ip, url in urls.items()}
        done, _ = concurrent.futures.wait(futures.values(), timeout=timeout_s)
        total, failed = 0.0, []
        for ip, future in futures.items():
            if future not in done:
                failed.append(f"{ip}: no answer in {timeout_s:g}s")
            elif (exc := future.exception()) is not None:
                failed.append(f"{ip}: {type(exc).__name__}: {exc}"[:200])
            else:
                total += future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    if failed:
        return Reading(None, len(ips), f"{len(failed)} of {len(ips)} proxies unread: " + "; ".join(failed))
    return Reading(total, len(ips))
