"""Run tiny, base (CPU) and proxy as local uvicorn processes: ``make up`` / ``make down``,
``make run`` and the test suite all start the stack through this one module.

``python -m services.local_stack up`` starts them in the background (logs and PIDs under
``.run/``), waits until every ``/readyz`` answers 200, and prints the proxy URL;
``down`` stops exactly the processes it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = Path(os.environ.get("STT_RUN_DIR", ROOT / ".run"))
DEFAULT_PORTS = {"proxy": 5001, "base": 5002, "tiny": 5004}
# name -> (uvicorn app, extra environment). "gpu" is a second base asked to use CUDA; tests start
# it to exercise routing (without a GPU it serves on CPU and says so).
SERVICES = {
    "tiny": ("services.tiny.app:app", {}),
    "base": ("services.base.app:app", {}),
    "gpu": ("services.base.app:app", {"STT_DEVICE": "cuda"}),
    "proxy": ("services.proxy.app:app", {}),
}

# The HTTP implementation every service runs with (here, in the images' CMD and so in the chart):
# httptools with a bound on request heads, 431 above STT_MAX_HEADER_BYTES.
HTTP_PROTOCOL = "services.common.http_protocol:BoundedHttpToolsProtocol"


def free_ports(count: int) -> list[int]:
    """Distinct free ports (all sockets held open together, so none is handed out twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


class PortTakenError(RuntimeError):
    """A service exited at start because its port was no longer free."""


@dataclass
class Stack:
    """The three services on given ports; ``env`` adds settings for all of them.

    ``cwd`` is the services' working directory (tests run them in an empty or planted one to
    show that nothing there can be read through an upload). ``cpus``, when given, pins every
    service process to those CPU cores, as a pod's CPU limit bounds it (benchmarks that keep the
    load generator off the service's cores).
    """

    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    env: dict[str, str] = field(default_factory=dict)
    run_dir: Path = RUN_DIR
    host: str = "127.0.0.1"
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    cwd: Path = ROOT
    cpus: frozenset[int] | None = None
    _log_starts: dict[str, int] = field(default_factory=dict, repr=False)  # each log's size at the last start

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.ports[name]}"

    @property
    def proxy_url(self) -> str:
        return self.url("proxy")

    @property
    def base_url(self) -> str:
        return self.url("base")

    @property
    def tiny_url(self) -> str:
        return self.url("tiny")

    def service_env(self, name: str) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env, **SERVICES[name][1]}
        if self.cwd != ROOT:  # the services' package must stay importable from elsewhere
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        if name == "proxy":
            env.setdefault("STT_CPU_BACKEND_URL", self.base_url)
            env.setdefault("STT_DETECTOR_URL", self.tiny_url)
            env.setdefault("STT_HEALTH_INTERVAL_S", "1")
            if "gpu" in self.ports:
                env.setdefault("STT_GPU_BACKEND_URL", self.url("gpu"))
        return env

    def start(self, name: str, wait: bool = True, timeout: float = 180) -> None:
        """Start ``name`` and, with ``wait``, wait until it is ready. :func:`free_port` can only
        choose a port that is free when it looks; an outgoing connection may take it as its own
        end before the service binds it. A service that then cannot bind (``PortTakenError``) is
        started again on another free port, at most twice: ``self.ports`` says where it is."""
        for attempt in range(3):
            self._spawn(name)
            if not wait:
                return
            try:
                self.wait_ready([name], timeout)
                return
            except PortTakenError:
                if attempt == 2:
                    raise
                self.ports[name] = free_port()

    def _spawn(self, name: str) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = (self.run_dir / f"{name}.log").open("ab")
        self._log_starts[name] = log.tell()
        cmd = [sys.executable, "-m", "uvicorn", SERVICES[name][0], "--host", self.host]
        cmd += ["--port", str(self.ports[name]), "--no-access-log", "--http", HTTP_PROTOCOL]
        cpus = self.cpus
        proc = subprocess.Popen(
            cmd,
            cwd=self.cwd,
            env=self.service_env(name),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        self.procs[name] = proc
        (self.run_dir / f"{name}.pid").write_text(str(proc.pid))

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name, None)
        pid = proc.pid if proc else _read_pid(self.run_dir / f"{name}.pid")
        if pid:
            _terminate(pid, sig)
        if proc:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _terminate(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        (self.run_dir / f"{name}.pid").unlink(missing_ok=True)

    def wait_ready(self, names: list[str], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        pending = list(names)
        while pending:
            name = pending[0]
            proc = self.procs.get(name)
            if proc and proc.poll() is not None:
                with (self.run_dir / f"{name}.log").open("rb") as f:
                    f.seek(self._log_starts.get(name, 0))
                    tail = f.read().decode(errors="replace")[-2000:]
                error = PortTakenError if "address already in use" in tail else RuntimeError
                raise error(f"{name} exited with {proc.returncode} while starting:\n{tail}")
            try:
                if httpx.get(f"{self.url(name)}/readyz", timeout=2).status_code == 200:
                    pending.pop(0)
                    continue
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} was not ready within {timeout:.0f} s; see {self.run_dir / name}.log")
            time.sleep(0.3)

    def up(self) -> None:
        # Backends first, then the proxy, so that its first health check already sees them.
        for name in ("tiny", "base"):
            self.start(name, wait=False)
        self.wait_ready(["tiny", "base"])
        self.start("proxy")

    def down(self) -> None:
        for name in ("proxy", "gpu", "base", "tiny"):
            self.stop(name)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _terminate(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # each service runs in its own session; take its children too
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start or stop the local stack (tiny, base on CPU, proxy).")
    parser.add_argument("action", choices=["up", "down"])
    args = parser.parse_args(argv)
    stack = Stack()
    if args.action == "down":
        stack.down()
        print("local stack stopped")
        return 0
    stack.down()  # a stale stack from an earlier run would hold the ports
    started = time.monotonic()
    try:
        stack.up()
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        stack.down()
        return 1
    print(f"local stack ready in {time.monotonic() - started:.1f} s (logs in {stack.run_dir})")
    print(f"live transcription in the browser: {stack.proxy_url}/")
    print(stack.proxy_url)  # last: scripts read the URL from here
    return 0


if __name__ == "__main__":
    sys.exit(main())
