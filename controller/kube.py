"""The few API calls the operator makes, each the narrowest one that does the job.

Every write is conditional (read, compare, patch only on a difference) so that a resync or a
resumed operator causes no rollouts and no needless writes. The ServiceAccount in the chart
grants exactly these verbs (see ``charts/stt/templates/rbac.yaml``).

Every call is bounded: ``timeout_s`` (``STT_K8S_TIMEOUT_S``, default 5, see
:class:`controller.settings.OperatorSettings`) is the whole request's timeout
(connect + send + answer), and a client makes at most one retry, so one call gives up after
about ``2 x STT_K8S_TIMEOUT_S``. Without it, the kubernetes client waits forever on an API
server (or a connection through a dead node) that never answers, and the handler or the status
resync that made the call hangs with it. 5 s because each call reads or patches one object,
which a healthy API server answers in milliseconds and a loaded one (priority-and-fairness
queueing) in a few seconds; a call that gives up is retried by the next resync or by kopf.
"""

from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass
from typing import Any, cast

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from core.vocabulary import GROUP, KIND, PLURAL, VERSION
from kubeapi import load_configuration

log = logging.getLogger("stt.controller")

# One retry: a pooled keep-alive connection that the API server closed while idle fails at once
# and deserves a second try; more retries of a call that timed out only multiply the wait
# (urllib3's default, 3, made a GET to a silent server take 4 x the timeout).
RETRIES = 1


@dataclass(frozen=True)
class Names:
    """The Deployments one SttConfig drives (set by the chart through env vars)."""

    cpu: str
    gpu: str
    detector: str
    detector_container: str = "tiny"
    transcriber_container: str = "base"  # in both the CPU and the GPU Deployment


def load_config() -> None:
    """In-cluster ServiceAccount when running as a pod, else the kubeconfig (``kopf run`` on a host),
    made the default of every ApiClient (:func:`make_api_client`).

    The loader is :func:`kubeapi.load_configuration`, the proxy's too: one place finds the API
    server, its CA and the credentials (the ServiceAccount token re-read before each request, as
    bound tokens rotate). The calls are the official synchronous client's: kopf runs the
    handlers in threads, where blocking calls are what it expects.
    """
    client.Configuration.set_default(load_configuration())


# What a failed call raises: an answer with an error status, or no usable answer (timeout, refused).
API_ERRORS = (ApiException, urllib3.exceptions.HTTPError)


def describe_error(exc: BaseException, timeout_s: float | None = None) -> str:
    """One line for the status and the log: ``HTTP 403 Forbidden``, ``timed out after 5s``.

    ``timeout_s``: the timeout of the call that failed (the :class:`Cluster`'s), for the message.
    """
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    reason = getattr(exc, "reason", None) or exc  # MaxRetryError wraps the last try's error
    if isinstance(reason, urllib3.exceptions.TimeoutError):
        return f"timed out after {timeout_s:g}s" if timeout_s else "timed out"
    return f"no answer ({type(reason).__name__})"


def make_api_client(configuration: client.Configuration | None = None) -> client.ApiClient:
    """An ApiClient for ``configuration`` (default: what :func:`load_config` loaded) with ``RETRIES``."""
    configuration = configuration or client.Configuration.get_default_copy()
    configuration.retries = RETRIES
    return client.ApiClient(configuration)


class Cluster:
    """The operator's API calls, each bounded by ``timeout_s`` (``None``: unbounded, for tests only).

    ``timeout_s`` has no default on purpose: it is a setting (``STT_K8S_TIMEOUT_S``), passed in.
    """

    def __init__(self, api_client: client.ApiClient | None = None, *, timeout_s: float | None):
        self.api = api_client or make_api_client()
        self.timeout_s = timeout_s
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)

    def serves(self, group: str, version: str, plural: str) -> bool:
        """Whether the API serves ``plural`` in ``group/version`` (discovery; needs no RBAC)."""
        resources = self.custom.get_api_resources(group, version, _request_timeout=self.timeout_s)
        return any(r.name == plural for r in resources.resources or [])

    def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(self.apps.read_namespaced_deployment, namespace, name)

    def scale(self, namespace: str, name: str, replicas: int) -> bool:
        """Set ``spec.replicas``; returns whether it changed. Missing Deployment: logged, not fatal."""
        current = self.read_deployment(namespace, name)
        if current is None:
            log.warning("deployment %s/%s not found: cannot scale it to %d", namespace, name, replicas)
            return False
        if current.get("spec", {}).get("replicas") == replicas:
            return False
        self.apps.patch_namespaced_deployment(
            name, namespace, {"spec": {"replicas": replicas}}, _preload_content=False, _request_timeout=self.timeout_s
        )
        log.info("scaled deployment %s/%s to %d", namespace, name, replicas)
        return True

    def set_env(self, namespace: str, name: str, container: str, key: str, value: str) -> bool:
        """Set one env var of one container (strategic merge by name: other vars untouched).

        This rolls the Deployment, which is what applying a new default detector needs.
        """
        current = self.read_deployment(namespace, name)
        if current is None:
            log.warning("deployment %s/%s not found: cannot set %s=%s", namespace, name, key, value)
            return False
        if container_env(current, container).get(key) == value:
            return False
        # The whole env list, changed in one entry: correct under strategic merge (by name) and
        # under a plain merge patch alike; valueFrom entries are kept as they are.
        env = [e for e in container_spec(current, container).get("env") or [] if e.get("name") != key]
        env.append({"name": key, "value": value})
        patch = {"spec": {"template": {"spec": {"containers": [{"name": container, "env": env}]}}}}
        self.apps.patch_namespaced_deployment(
            name, namespace, patch, _preload_content=False, _request_timeout=self.timeout_s
        )
        log.info("set %s=%s on deployment %s/%s (rolling)", key, value, namespace, name)
        return True

    def read_endpoints(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Service's Endpoints (``None``: no such Service): where the proxies' metrics are."""
        return self._read(self.core.read_namespaced_endpoints, namespace, name)

    def _read(self, read: Any, namespace: str, name: str) -> dict[str, Any] | None:
        """One object as plain JSON (no model classes), ``None`` when it does not exist."""
        try:
            raw = read(name, namespace, _preload_content=False, _request_timeout=self.timeout_s)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(raw.data)

    def post_event(self, obj: dict[str, Any], reason: str, message: str, warning: bool = False) -> None:
        """A Kubernetes Event about ``obj`` (an SttConfig as read), as ``kubectl describe`` shows them."""
        meta = obj.get("metadata") or {}
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "metadata": {"generateName": f"{meta.get('name', 'sttconfig')}.", "namespace": meta.get("namespace")},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", f"{GROUP}/{VERSION}"),
                "kind": obj.get("kind", KIND),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": "stt-controller"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        # A plain dict body, as for every other call here: the client serializes it as it is.
        self.core.create_namespaced_event(
            meta["namespace"],
            event,  # type: ignore[arg-type]
            _preload_content=False,
            _request_timeout=self.timeout_s,
        )

    def read_config(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=self.timeout_s
            )
            return cast(dict[str, Any], obj)  # the client types it as object; it is the JSON object
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": status},
            _preload_content=False,
            _request_timeout=self.timeout_s,
        )


def container_spec(deployment: dict[str, Any], container: str) -> dict[str, Any]:
    for c in deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
        if c.get("name") == container:
            return c
    return {}


def container_env(deployment: dict[str, Any], container: str) -> dict[str, str]:
    return {
        e["name"]: e.get("value", "") for e in container_spec(deployment, container).get("env") or [] if "name" in e
    }


def rollout_done(deployment: dict[str, Any] | None) -> bool:
    """Whether every replica runs the Deployment's current template and is ready (what
    ``kubectl rollout status`` waits for)."""
    if deployment is None:
        return False
    meta, spec, status = deployment.get("metadata") or {}, deployment.get("spec") or {}, deployment.get("status") or {}
    want = int(spec.get("replicas") or 0)
    return (
        int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        and int(status.get("updatedReplicas") or 0) >= want
        and int(status.get("readyReplicas") or 0) >= want
        and int(status.get("replicas") or 0) <= want  # no old pod left
    )


def asked(deployment: dict[str, Any] | None) -> int | None:
    """A Deployment's ``spec.replicas`` (``None``: no such Deployment)."""
    return None if deployment is None else int((deployment.get("spec") or {}).get("replicas") or 0)


def ready_replicas(deployment: dict[str, Any] | None) -> int | None:
    if deployment is None:
        return None
    return int(deployment.get("status", {}).get("readyReplicas") or 0)
