"""A real proxy process in front of stand-in backends that run in the test process: for the
tests of the proxy's own behaviour (API keys, the ops port, hang-ups), which need no model.

The proxy is started as the image starts it (uvicorn with the bounded HTTP protocol); the
stand-ins are ASGI apps served by uvicorn in a thread, so a test can see what reached them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from services.local_stack import HTTP_PROTOCOL, Stack, free_port


class ThreadedServer:
    """``app`` served by uvicorn in a thread on a free loopback port; a context manager.
    ``config`` goes to :class:`uvicorn.Config` (e.g. ``lifespan="off"``)."""

    def __init__(self, app: Any, **config: Any) -> None:
        settings = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", **config)
        self.port = settings.port
        self.server = uvicorn.Server(settings)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, f"{type(self).__name__} did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_proxy(backend_url: str, run_dir: Path, port: int, **env: str) -> subprocess.Popen:
    """The proxy on ``port`` with ``backend_url`` as its CPU backend and detector, no GPU side,
    ``env`` on top; none of the test process's own ``STT_*`` settings. Logs to run_dir/proxy.log."""
    settings = {
        "STT_CPU_BACKEND_URL": backend_url,
        "STT_DETECTOR_URL": backend_url,
        "STT_GPU_BACKEND_URL": "-",
        "STT_HEALTH_INTERVAL_S": "0.5",
        "STT_LOG_FORMAT": "text",
        **env,
    }
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("STT_")}
    cmd = [sys.executable, "-m", "uvicorn", "services.proxy.app:app", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--http", HTTP_PROTOCOL]
    with (run_dir / "proxy.log").open("wb") as out:
        return subprocess.Popen(cmd, env={**inherited, **settings}, stdout=out, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def running_proxy(backend_url: str, run_dir: Path, **env: str) -> Iterator[str]:
    """:func:`start_proxy`, ready; yields its public URL and stops it afterwards."""
    port = free_port()
    stack = Stack(ports={"proxy": port}, run_dir=run_dir)
    stack.procs["proxy"] = proc = start_proxy(backend_url, run_dir, port, **env)
    try:
        stack.wait_ready(["proxy"], timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
