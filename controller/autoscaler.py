"""The operator's autoscaler: read the live load, decide, remember, and say so.

:mod:`controller.autoscaling` is the rule (a pure function) and :mod:`controller.load` reads the
proxies; this is the part with memory and side effects: the stabilization windows per SttConfig
and backend, the last decisions (which stand between evaluations, so a Deployment event is not
mistaken for drift), the Events on the SttConfig and the metrics. The operator
(:mod:`controller.operator`) calls :meth:`Autoscaler.evaluate` on every resync and spec change
and applies the decisions together with the rest of the spec.

The memory lives in this process: a restarted operator starts from the replicas that run
(:func:`controller.autoscaling.decide` seeds an empty state with them), so it never scales down
before a full window has been seen.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from controller import metrics as m
from controller.autoscaling import AT_MAX, Decision, Policy, State, decide, hold, streams_per_backend
from controller.kube import API_ERRORS, Cluster, Names, asked, describe_error, ready_replicas
from controller.load import Reading, proxy_addresses, read_streams

log = logging.getLogger("stt.controller")

Key = tuple[str, str]  # (namespace, name) of an SttConfig


@dataclass(frozen=True)
class Evaluation:
    """The last evaluation of one SttConfig: a decision per autoscaled backend and the streams
    each was given (``None``: the load could not be read)."""

    decisions: dict[str, Decision] = field(default_factory=dict)
    streams: dict[str, float | None] = field(default_factory=dict)


class Autoscaler:
    """Decisions for the SttConfigs one operator manages. Thread-safe: kopf's handler threads
    and the resync loop both evaluate.

    ``proxy_service``/``proxy_port``: where the proxies' ``/metrics`` are (``STT_PROXY_METRICS_*``);
    ``timeout_s``: the bound on reading all of them, used when the :class:`Cluster` has none
    (``STT_K8S_TIMEOUT_S``; a reading never waits forever, even in a test).
    """

    def __init__(self, proxy_service: str, proxy_port: int, timeout_s: float) -> None:
        self.proxy_service, self.proxy_port, self.timeout_s = proxy_service, proxy_port, timeout_s
        self._states: dict[tuple[str, str, str], State] = {}
        self._last: dict[Key, Evaluation] = {}
        self._lock = threading.Lock()

    def last(self, key: Key) -> Evaluation:
        """The decisions that stand for ``key`` (empty when it autoscales nothing)."""
        with self._lock:
            return self._last.get(key, Evaluation())

    def forget(self, key: Key) -> None:
        with self._lock:
            self._last.pop(key, None)
            for backend in ("gpu", "cpu"):
                self._states.pop((*key, backend), None)

    def read_load(self, c: Cluster, namespace: str) -> Reading:
        """Live streams from every proxy pod behind the proxy metrics Service."""
        endpoints = c.read_endpoints(namespace, self.proxy_service)
        if endpoints is None:
            return Reading(None, 0, f"no Service {namespace}/{self.proxy_service} to find the proxies by")
        return read_streams(proxy_addresses(endpoints), self.proxy_port, c.timeout_s or self.timeout_s)

    def evaluate(
        self, c: Cluster, obj: dict[str, Any], routing: str, policies: dict[str, Policy], names: Names
    ) -> dict[str, Decision]:
        """Read the load and decide each backend in ``policies``; post an Event for each change
        and on reaching the max. ``obj``: the SttConfig (its metadata, for the Events)."""
        meta = obj.get("metadata") or {}
        key: Key = (meta["namespace"], meta["name"])
        if not policies:
            self.forget(key)
            m.publish_autoscaler({}, {})
            return {}
        reading = self.read_load(c, key[0])
        if reading.streams is None:
            log.warning("autoscaler: %s", reading.error)
            m.LOAD_READ_FAILURES.inc()
        deployments = {"gpu": c.read_deployment(key[0], names.gpu), "cpu": c.read_deployment(key[0], names.cpu)}
        load: dict[str, float | None]
        if reading.streams is None:
            load = dict.fromkeys(policies)
        else:
            load = dict(streams_per_backend(reading.streams, routing, ready_replicas(deployments["gpu"]) or 0))
        with self._lock:
            before = self._last.get(key, Evaluation())
            now = time.monotonic()
            decisions: dict[str, Decision] = {}
            changes: list[tuple[str, int, Decision]] = []
            for backend, policy in policies.items():
                current = asked(deployments[backend]) or 0
                state = self._states.get((*key, backend), State())
                streams = load.get(backend)
                if streams is None:
                    decision = hold(current, policy, state, reading.error)
                else:
                    decision = decide(streams, current, policy, state, now)
                self._states[(*key, backend)] = decision.state
                decisions[backend] = decision
                changes.append((backend, current, decision))
            evaluation = Evaluation(decisions, {b: load.get(b) for b in policies})
            self._last[key] = evaluation
        for backend, current, decision in changes:
            previous = before.decisions.get(backend)
            if decision.replicas != current:
                m.SCALE_EVENTS.labels(backend, decision.reason).inc()
                self._post_event(c, obj, decision.reason, f"{backend}: {decision.message}")
            if decision.at_max and not (previous and previous.at_max):
                self._post_event(c, obj, AT_MAX, f"{backend}: {decision.message}", warning=True)
        m.publish_autoscaler(decisions, evaluation.streams)
        return decisions

    @staticmethod
    def _post_event(c: Cluster, obj: dict[str, Any], reason: str, message: str, warning: bool = False) -> None:
        """Best effort: an Event that fails to post must not stop the scaling it reports."""
        log.log(logging.WARNING if warning else logging.INFO, "autoscaler %s: %s", reason, message)
        try:
            c.post_event(obj, reason, message, warning)
        except API_ERRORS as exc:
            log.warning("could not post the %s event: %s", reason, describe_error(exc, c.timeout_s))
