"""End-to-end tests against a real cluster (``make e2e``): real API server, kubelet, containerd.

They run only when asked for (``pytest -m e2e tests/e2e``) and a cluster kubeconfig exists
(``$STT_KUBECONFIG``, default ``/var/tmp/stt-cluster/kubeconfig``); plain ``pytest`` skips them,
so ``make test`` never needs a cluster.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.k8s.tools import CHART, find_tool

KUBECONFIG = Path(os.environ.get("STT_KUBECONFIG", "/var/tmp/stt-cluster/kubeconfig"))
NAMESPACE = os.environ.get("STT_E2E_NAMESPACE", "stt-e2e")
RELEASE = "stt"
TIMINGS: dict[str, float] = {}
TIMINGS_FILE = Path(os.environ.get("STT_E2E_TIMINGS", "/var/tmp/stt-e2e-timings.json"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: needs a running cluster with the images loaded (make e2e)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    asked = "e2e" in (config.getoption("-m") or "")
    reason = None
    if not asked:
        reason = "end-to-end test: run with `make e2e` (pytest -m e2e tests/e2e)"
    elif not KUBECONFIG.is_file():
        reason = f"no cluster kubeconfig at {KUBECONFIG}: run `make cluster` first"
    if reason:
        for item in items:
            if "e2e" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not TIMINGS:
        return
    terminalreporter.section("stt e2e timings")
    for key, value in TIMINGS.items():
        terminalreporter.write_line(f"{key:<40} {value:8.2f} s")
    TIMINGS_FILE.write_text(json.dumps(TIMINGS, indent=2) + "\n")
    terminalreporter.write_line(f"(also in {TIMINGS_FILE})")


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


@pytest.fixture(scope="session")
def kube() -> Kube:
    kubectl, helm = find_tool("kubectl"), find_tool("helm")
    assert kubectl and helm, "kubectl/helm missing (make cluster fetches them into /var/tmp/stt-k8s/bin)"
    return Kube(kubectl, helm, NAMESPACE)


@pytest.fixture(scope="session")
def chart() -> Path:
    return CHART


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortForward:
    """A real ``kubectl port-forward`` to a Service, restarted when its pod went away."""

    def __init__(self, kube: Kube, target: str, remote: int):
        self.kube, self.target, self.remote = kube, target, remote
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
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200
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


@pytest.fixture(scope="session")
def proxy_forward(kube: Kube) -> Iterator[PortForward]:
    pf = PortForward(kube, f"svc/{RELEASE}-proxy", 5001)
    yield pf
    pf.stop()
