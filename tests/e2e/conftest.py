"""End-to-end tests against a real cluster (``make e2e``): real API server, kubelet, containerd.

They run only when asked for (``pytest -m e2e tests/e2e``) and a cluster kubeconfig exists
(``$STT_KUBECONFIG``, default ``/var/tmp/stt-cluster/kubeconfig``); plain ``pytest`` skips them,
so ``make test`` never needs a cluster.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import KUBECONFIG, NAMESPACE, RELEASE, TIMINGS, TIMINGS_FILE, Kube, PortForward
from tests.k8s.tools import CHART, find_tool


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: needs a running cluster with the images loaded (make e2e)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    markexpr = config.getoption("-m") or ""
    asked = "e2e" in markexpr and "not e2e" not in markexpr
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
        terminalreporter.write_line(f"{key:<66} {value:8.2f} s")
    TIMINGS_FILE.write_text(json.dumps(TIMINGS, indent=2) + "\n")
    terminalreporter.write_line(f"(also in {TIMINGS_FILE})")


@pytest.fixture(scope="session")
def kube() -> Kube:
    kubectl, helm = find_tool("kubectl"), find_tool("helm")
    assert kubectl and helm, "kubectl/helm missing (make cluster fetches them into /var/tmp/stt-k8s/bin)"
    return Kube(kubectl, helm, NAMESPACE)


@pytest.fixture(scope="session")
def chart() -> Path:
    return CHART


@pytest.fixture(scope="session")
def proxy_forward(kube: Kube) -> Iterator[PortForward]:
    pf = PortForward(kube, f"svc/{RELEASE}-proxy", 5001)
    yield pf
    pf.stop()
