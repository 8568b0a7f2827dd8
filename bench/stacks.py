"""The service configurations the bench compares, each a real local stack on free ports.

"design" is what the project ships (defaults); "baseline" is one-chunk-at-a-time serving:
Whisper's full 30 s encoder window and no batching. Both run side by side (an idle stack
costs no CPU), so measurements of the two can be interleaved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from services.local_stack import Stack, free_ports

# The seed design: Whisper's full window, one chunk per call, and Whisper's own limit of 224
# tokens per decode (the token budget is this project's, not the seed's).
BASELINE_ENV = {"STT_ENCODER_WINDOW": "full", "STT_BATCH_MAX": "1", "STT_MAX_TOKENS_PER_SECOND": "0"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (``/proc/<pid>/stat`` fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class BenchStack:
    """One named configuration of tiny + base + proxy."""

    name: str
    env: dict[str, str]
    run_dir: Path
    stack: Stack = field(init=False)

    def __post_init__(self) -> None:
        ports = dict(zip(("proxy", "base", "tiny"), free_ports(3), strict=True))
        env = {"STT_LOG_LEVEL": "WARNING", **self.env}
        self.stack = Stack(ports=ports, env=env, run_dir=self.run_dir / self.name)

    def start(self) -> None:
        for name in ("tiny", "base"):
            self.stack.start(name, wait=False)

    def wait(self) -> None:
        self.stack.wait_ready(["tiny", "base"], timeout=300)
        self.stack.start("proxy")

    def stop(self) -> None:
        self.stack.down()

    @property
    def proxy_url(self) -> str:
        return self.stack.proxy_url

    @property
    def base_url(self) -> str:
        return self.stack.base_url

    @property
    def tiny_url(self) -> str:
        return self.stack.tiny_url

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each service process; deltas give a run's cost."""
        return {name: process_cpu_seconds(proc.pid) for name, proc in self.stack.procs.items()}


# A what-if beside the shipped defaults: the trimmed window without dynamic batching. Batching
# buys nothing on a CPU (the int8 encoder is compute-bound), so this isolates what the trimmed
# window alone gives, and stays measurable when batching itself misbehaves.
WHATIF_ENV = {"STT_BATCH_MAX": "1"}


def make_stacks(run_dir: Path, device: str, whatif: bool = True) -> dict[str, BenchStack]:
    device_env = {"STT_DEVICE": device} if device != "cpu" else {}
    stacks = {
        "design": BenchStack("design", {**device_env}, run_dir),
        "baseline": BenchStack("baseline", {**BASELINE_ENV, **device_env}, run_dir),
    }
    if whatif:
        stacks["design_batch1"] = BenchStack("design_batch1", {**WHATIF_ENV, **device_env}, run_dir)
    return stacks


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: round(after.get(name, 0.0) - before.get(name, 0.0), 3) for name in after}
