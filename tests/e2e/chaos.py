"""Chaos for the end-to-end tests: signals to a pod's process from the node, a port-forward kept
alive through pod deletions, live client streams, and the check that a transcript lost nothing
and repeated nothing.

``kubectl exec ... kill -9 1`` cannot stand in for a crash: the kernel ignores SIGKILL and
SIGSTOP sent to a PID namespace's init from inside it. So the signal comes from the node, to
the container's PID 1 as the node sees it, found by the container ID in ``/proc/*/cgroup``
(the same on the local cluster and on kind, whose nodes share the host's kernel). That needs
root, as signalling another user's process does; without it the chaos test skips and says so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import jiwer
from whisper_normalizer.english import EnglishTextNormalizer

from tests.e2e.helpers import PortForward

_normalizer = EnglishTextNormalizer()
# A chunk lost or transcribed twice is a 3 s stretch: 6 or more words in a row missing from, or
# added to, the transcript. A misheard word or two in a row is the model's, not the platform's.
RUN_WORDS = 6


def can_signal_containers() -> str | None:
    """Why this process cannot signal container processes on the node, or None."""
    if os.geteuid() != 0:
        return "signalling a container's process from the node needs root"
    if not Path("/proc/self/cgroup").is_file():
        return "no /proc: the node's processes are not visible here"
    return None


def container_pid(pod: dict) -> int:
    """The node's PID of the pod's first container's PID 1."""
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if container_id not in (proc / "cgroup").read_text():
                continue
            nspid = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("NSpid:"))
        except (OSError, StopIteration):
            continue  # the process ended while we looked
        if nspid.split()[-1] == "1":
            return int(proc.name)
    raise LookupError(f"no process of container {container_id[:12]} on this node")


def signal_pod(pod: dict, sig: signal.Signals) -> int:
    pid = container_pid(pod)
    os.kill(pid, sig)
    return pid


class KeptForward:
    """A port-forward to the proxy Service that a thread brings back within a second or two
    whenever its pod goes away, on the same local port: what a user's ``kubectl port-forward``
    in a restart loop does. Clients see refused connections meanwhile, never a new address."""

    def __init__(self, forward: PortForward):
        self.forward = forward
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, daemon=True)

    def __enter__(self) -> KeptForward:
        self.forward.ensure()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=40)

    def _keep(self) -> None:
        while not self._stop.wait(0.5):
            if self.forward.proc is not None and self.forward.proc.poll() is None and self.forward._answers():
                continue
            self.restarts += 1
            with contextlib.suppress(AssertionError):  # no proxy ready yet: try again
                self.forward.ensure()


def runs(reference: str, hypothesis: str) -> dict[str, int | float]:
    """WER and the longest runs of missing and added words, after Whisper's normalisation."""
    ref, hyp = _normalizer(reference), _normalizer(hypothesis)
    out = jiwer.process_words(ref, hyp)
    longest = {"delete": 0, "insert": 0}
    for chunk in out.alignments[0]:
        if chunk.type == "delete":
            longest["delete"] = max(longest["delete"], chunk.ref_end_idx - chunk.ref_start_idx)
        elif chunk.type == "insert":
            longest["insert"] = max(longest["insert"], chunk.hyp_end_idx - chunk.hyp_start_idx)
    return {
        "wer": round(100 * out.wer, 1),
        "words": len(ref.split()),
        "longest_missing": longest["delete"],
        "longest_added": longest["insert"],
    }


def client_log(path: Path, last: int = 30) -> str:
    """The client's stderr without its live-view refreshes: what it said about connections."""
    lines = path.read_text(errors="replace").replace("\r", "\n").splitlines()
    return "\n".join([line for line in lines if line.strip() and not line.lstrip().startswith("-- in ")][-last:])


class LiveStreams:
    """Real ``stt-client`` processes streaming recordings at real-time pace to ``url`` (the
    default WebSocket transport), each with its own log, and the check that each transcript
    came back whole."""

    def __init__(self, recordings: list, url: str, tmp_path: Path):
        self.recordings, self.tmp_path = recordings, tmp_path
        env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
        self.logs = [(tmp_path / f"client-{i}.log").open("w") for i in range(len(recordings))]
        self.clients = [
            subprocess.Popen(
                [sys.executable, "-m", "client", "--file", str(r.path), "--realtime", "--url", url, "--language", "en"],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
            )
            for r, log in zip(recordings, self.logs, strict=True)
        ]
        self.outputs: list[str] = []

    def running(self) -> bool:
        return any(c.poll() is None for c in self.clients)

    def finish(self, timeout: float) -> None:
        """Wait for every client (killing one that overstays ``timeout``) and keep its transcript."""
        for c in self.clients:
            try:
                self.outputs.append(c.communicate(timeout=timeout)[0])
            except subprocess.TimeoutExpired:
                c.kill()
                self.outputs.append(c.communicate()[0])
        for log in self.logs:
            log.close()

    def assert_whole(self, tag: str, note: str = "") -> None:
        """Each client exited 0, and no run of ``RUN_WORDS`` words is missing or added (WER <= 20 %)."""
        for i, (recording, client, text) in enumerate(zip(self.recordings, self.clients, self.outputs, strict=True)):
            tail = client_log(self.tmp_path / f"client-{i}.log")
            assert client.returncode == 0, f"client {i} exited {client.returncode}: {tail}"
            found = runs(recording.text, text)
            print(f"{tag} stream {i}: {found}{note}", flush=True)
            assert found["longest_missing"] < RUN_WORDS, (found, text, tail)
            assert found["longest_added"] < RUN_WORDS, (found, text, tail)
            assert found["wer"] <= 20, (found, text, tail)
