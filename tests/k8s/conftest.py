"""The ``helm`` binary for the chart tests (fetched once per machine when missing)."""

from __future__ import annotations

import pytest

from tests.k8s.tools import find_tool


@pytest.fixture(scope="module")
def helm() -> str:
    path = find_tool("helm")
    if path is None:
        pytest.fail("helm not found and could not be fetched (hack/cluster/build-binaries.sh --tools-only)")
    return str(path)
