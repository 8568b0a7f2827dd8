"""Helpers for the end-to-end tests: kubectl/helm on the cluster, port-forwards, polling, timings.

A module of its own (not the conftest) so that the tests and the conftest share one ``TIMINGS``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx

from services.local_stack import free_port

KUBECONFIG = Path(os.environ.get("STT_KUBECONFIG", "/var/tmp/stt-cluster/kubeconfig"))
NAMESPACE = os.environ.get("STT_E2E_NAMESPACE", "stt-e2e")
RELEASE = "stt"
TIMINGS: dict[str, float] = {}
TIMINGS_FILE = Path(os.environ.get("STT_E2E_TIMINGS", "/var/tmp/stt-e2e-timings.json"))


def record(name: str, seconds: float) -> None:
    TIMINGS[name] = round(seconds, 2)
    print(f"TIMING {name}: {seconds:.2f}s", flush=True)


class Kube:
    """kubectl and helm on the test cluster's admin kubeconfig."""

    def __init__(self, kubectl: Path, helm: Path, namespace: str):
        self.kubectl_bin, self.helm_bin, self.namespace = str(kubectl), str(helm), namespace
        self.env = {**os.environ, "KUBECONFIG": str(KUBECONFIG)}

    def kubectl(self, *args: str, check: bool = True, input: str | None = None, env: dict | None = None):
        cmd = [self.kubectl_bin, "-n", self.namespace, *args]
        r = subprocess.run(cmd, capture_output=True, text=True, input=input, env={**self.env, **(env or {})})
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr or r.stdout}")
        return r

    def json(self, *args: str) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [self.helm_bin, "-n", self.namespace, *args]
        r = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr or r.stdout}")
        return r

    def sttconfig(self) -> dict:
        return self.json("get", "sttconfig", RELEASE)

    def exec_http(self, pod: str, url: str) -> dict:
        """GET a pod-local URL from inside the pod (python is in every image)."""
        code = (
            f"import urllib.request,sys; sys.stdout.write(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
        )
        return json.loads(self.kubectl("exec", pod, "--", "python", "-c", code).stdout)

    def pods(self, component: str) -> list[dict]:
        sel = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={component}"
        return self.json("get", "pods", "-l", sel)["items"]


def wait_for(what: str, predicate, timeout: float = 180.0, interval: float = 0.25):
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # a transient API or connection error: keep polling
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_exc})")


class PortForward:
    """A real ``kubectl port-forward`` to a Service, restarted when its pod went away."""

    def __init__(self, kube: Kube, target: str, remote: int, health_path: str = "/healthz"):
        self.kube, self.target, self.remote = kube, target, remote
        self.health_path = health_path
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        self.ensure()
        return f"http://127.0.0.1:{self.port}"

    def ensure(self) -> None:
        if self.proc is not None and self.proc.poll() is None and self._answers():
            return
        self.stop()
        cmd = [
            self.kube.kubectl_bin,
            "-n",
            self.kube.namespace,
            "port-forward",
            self.target,
            f"{self.port}:{self.remote}",
        ]
        self.proc = subprocess.Popen(cmd, env=self.kube.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(f"port-forward to {self.target}", self._answers, timeout=30)

    def _answers(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}{self.health_path}", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
