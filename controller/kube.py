"""The few API calls the operator makes, each the narrowest one that does the job.

Every write is conditional (read, compare, patch only on a difference) so that a resync or a
resumed operator causes no rollouts and no needless writes. The ServiceAccount in the chart
grants exactly these verbs (see ``charts/stt/templates/rbac.yaml``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from controller import GROUP, PLURAL, VERSION

log = logging.getLogger("stt.controller")


@dataclass(frozen=True)
class Names:
    """The Deployments one SttConfig drives (set by the chart through env vars)."""

    cpu: str
    gpu: str
    detector: str
    detector_container: str = "tiny"


def load_config() -> None:
    """In-cluster ServiceAccount when running as a pod, else the kubeconfig (``kopf run`` on a host)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


class Cluster:
    def __init__(self, api_client: client.ApiClient | None = None):
        self.api = api_client or client.ApiClient()
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            raw = self.apps.read_namespaced_deployment(name, namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(raw.data)

    def scale(self, namespace: str, name: str, replicas: int) -> bool:
        """Set ``spec.replicas``; returns whether it changed. Missing Deployment: logged, not fatal."""
        current = self.read_deployment(namespace, name)
        if current is None:
            log.warning("deployment %s/%s not found: cannot scale it to %d", namespace, name, replicas)
            return False
        if current.get("spec", {}).get("replicas") == replicas:
            return False
        self.apps.patch_namespaced_deployment(name, namespace, {"spec": {"replicas": replicas}}, _preload_content=False)
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
        self.apps.patch_namespaced_deployment(name, namespace, patch, _preload_content=False)
        log.info("set %s=%s on deployment %s/%s (rolling)", key, value, namespace, name)
        return True

    def read_config(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}, _preload_content=False
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


def ready_replicas(deployment: dict[str, Any] | None) -> int | None:
    if deployment is None:
        return None
    return int(deployment.get("status", {}).get("readyReplicas") or 0)
