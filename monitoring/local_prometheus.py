"""Run a real Prometheus (Debian's ``prometheus`` binary) against services on this machine.

Why: the dashboard and the alerts are only proven by a Prometheus scraping the real
``/metrics``; tests/monitoring starts one per test module with its own temp dir and a free port,
and ``make monitor`` starts one against ``make up``'s stack (monitoring/prometheus-local.yml).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import yaml

NEED_DEBS = Path(__file__).resolve().parents[1] / "hack" / "need-debs.sh"


def ensure_installed() -> str:
    """Path of the ``prometheus`` binary, installing Debian's package when it is missing.

    ``make test`` installs it first (``make monitoring-tools``); this covers a bare ``pytest``
    through the same script, so there is one way to install system packages."""
    binary = shutil.which("prometheus")
    if binary and shutil.which("promtool"):
        return binary
    result = subprocess.run(["bash", str(NEED_DEBS), "prometheus"], capture_output=True, text=True)
    binary = shutil.which("prometheus")
    if result.returncode != 0 or not binary:
        raise RuntimeError(f"Prometheus 2.x is needed and could not be installed: {result.stderr.strip()}")
    return binary


def scrape_config(
    jobs: Mapping[str, Sequence[str]], interval_s: float = 1.0, rule_files: Sequence[Path | str] = ()
) -> dict:
    """A Prometheus config with one static job per entry (job name → host:port targets), and
    the given rule files evaluated as often as targets are scraped."""
    interval = f"{interval_s:g}s"
    config: dict = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(targets)}]} for job, targets in jobs.items()
        ],
    }
    if rule_files:
        config["rule_files"] = [str(Path(f).resolve()) for f in rule_files]
    return config


class PrometheusServer:
    """One Prometheus process with its own config, data dir and log under ``workdir``."""

    def __init__(self, workdir: Path, port: int, config: dict, binary: str | None = None):
        self.workdir = Path(workdir)
        self.port = port
        self.config = config
        self.binary = binary or ensure_installed()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        log = (self.workdir / "prometheus.log").open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready within {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def targets(self) -> list[dict]:
        response = httpx.get(f"{self.url}/api/v1/targets", params={"state": "active"}, timeout=5)
        response.raise_for_status()
        return response.json()["data"]["activeTargets"]

    def wait_targets_up(self, timeout_s: float = 20.0) -> list[dict]:
        """Wait until every target has been scraped successfully at least once."""
        deadline = time.monotonic() + timeout_s
        while True:
            targets = self.targets()
            if targets and all(t["health"] == "up" for t in targets):
                return targets
            if time.monotonic() > deadline:
                summary = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in targets]
                raise TimeoutError(f"targets not all up within {timeout_s:.0f} s: {summary}")
            time.sleep(0.3)

    def wait_scraped_after(self, moment: float, timeout_s: float = 20.0) -> None:
        """Wait until every target was scraped after ``moment`` (epoch seconds), so that instant
        queries see the values left by traffic that ended then."""
        deadline = time.monotonic() + timeout_s
        while True:
            stamps = [float(s["value"][1]) for s in self.query("timestamp(up)")]
            if stamps and min(stamps) > moment:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"not every target was scraped within {timeout_s:.0f} s after the traffic")
            time.sleep(0.3)

    def rules(self) -> list[dict]:
        """Every loaded rule with its health, last error and active alerts."""
        response = httpx.get(f"{self.url}/api/v1/rules", timeout=5)
        response.raise_for_status()
        return [rule for group in response.json()["data"]["groups"] for rule in group["rules"]]

    def query(self, expr: str) -> list[dict]:
        response = httpx.post(f"{self.url}/api/v1/query", data={"query": expr}, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise ValueError(f"{expr!r}: {body.get('error')}")
        return body["data"]["result"]

    def log_tail(self, chars: int = 2000) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        if not self.proc:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        self.proc = None
