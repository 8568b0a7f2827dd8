"""A simulated day of live streams through the GPU autoscaling rule (:mod:`controller.autoscaling`).

``python -m bench.autoscale_sim [--seed N] [--startup-s S]`` (``make bench-autoscale``): a few
seconds, no cluster, no sleeping. Prints a table and writes it to
``bench/results/autoscale.json`` when ``bench/results`` exists; docs/kubernetes.md quotes it.

**The trace** (24 h, one value a second, seeded): live streams arrive as a Poisson process
whose rate follows a working day, and each lasts an exponential time of mean 5 min (so the
count is the M/G/inf queue's: Poisson noise around the day's shape, with the lag real sessions
have). The mean shape: a quiet night (a few streams at midnight, then from 02:00 to 05:00 one
stream every ~100 min, so the GPU can go to zero), a morning ramp from 06:00 to ~620 streams at 09:30, a
plateau, a lunch dip to ~360 at 13:00, two afternoon peaks (~820 at 14:30, ~940 at 16:15), and
an evening fall to ~10 by 23:00.

**The cluster** (assumptions, each to be measured by the cluster test): a GPU pod serves
``target`` streams within the latency target and is *ready* ``--startup-s`` (60) seconds after it
is asked for (node already there, image cached, model loaded); it costs GPU time from the
moment it is asked for until it is removed, and it is removed at once (the drain is not
charged). Scale-down removes pods still starting first, as a ReplicaSet does. The autoscaler
evaluates every 15 s (the HPA's sync period, the operator's resync) on the instantaneous count.
Load above ``ready x target`` is "over target": served by the CPU side while no GPU pod is ready
(the proxy's fallback), else by GPU pods running above the target. "Over capacity" uses the
163 streams one H200 replica served within the latency bound (docs/performance.md), and the 12
one 2-core CPU replica served while no GPU pod is ready: there latency is really at risk.
Each run starts at midnight with the pods the policy wants for midnight's load, already ready.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

from controller.autoscaling import Policy, State, decide

DAY_S = 24 * 3600
SYNC_S = 15
MEAN_STREAM_S = 300.0
CAPACITY_PER_REPLICA = 163  # streams within the latency bound, one H200 replica, batch 16 (docs/performance.md)
CPU_CAPACITY = 12  # the same for one 2-core CPU replica (`make bench`), the chart's one CPU pod
TARGET = 120.0
MAX_REPLICAS = 12
RESULTS = Path(__file__).parent / "results"

# (hour, mean live streams), linear in between: the working day described in the docstring.
SHAPE = (
    (0.0, 6),
    (1.0, 1.5),
    (2.0, 0.05),
    (5.0, 0.05),
    (6.0, 8),
    (7.0, 120),
    (8.0, 380),
    (9.5, 620),
    (11.5, 600),
    (12.25, 400),
    (13.0, 360),
    (13.75, 560),
    (14.5, 820),
    (15.25, 700),
    (16.25, 940),
    (17.25, 720),
    (18.5, 380),
    (20.0, 160),
    (22.0, 30),
    (23.0, 10),
    (24.0, 6),
)

# The settings compared: how long to wait before going down, and whether to keep one GPU warm.
POLICIES = {
    "down 5 min": Policy(0, MAX_REPLICAS, TARGET, 0, 300),
    "down 15 min (default)": Policy(0, MAX_REPLICAS, TARGET, 0, 900),
    "down 30 min": Policy(0, MAX_REPLICAS, TARGET, 0, 1800),
    "down 15 min, min 1": Policy(1, MAX_REPLICAS, TARGET, 0, 900),
}


def mean_streams(t: float) -> float:
    """The day's mean live streams at ``t`` seconds after midnight."""
    hour = t / 3600.0
    for (h0, v0), (h1, v1) in pairwise(SHAPE):
        if h0 <= hour <= h1:
            return v0 + (v1 - v0) * (hour - h0) / (h1 - h0)
    return SHAPE[-1][1]


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method: exact, and fast for the rates here (a few arrivals a second at most)."""
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def day_trace(seed: int) -> list[int]:
    """Live streams at every second of the day (the M/G/inf queue of the docstring)."""
    rng = random.Random(seed)
    ends = [0] * (DAY_S + 1)
    active = 0
    # Start in the steady state of midnight: Poisson(mean) streams, each with an exponential rest.
    for _ in range(_poisson(rng, mean_streams(0))):
        ends[min(DAY_S, 1 + int(rng.expovariate(1 / MEAN_STREAM_S)))] += 1
        active += 1
    out = []
    for t in range(DAY_S):
        active -= ends[t]
        for _ in range(_poisson(rng, mean_streams(t) / MEAN_STREAM_S)):
            ends[min(DAY_S, t + 1 + int(rng.expovariate(1 / MEAN_STREAM_S)))] += 1
            active += 1
        out.append(active)
    return out


@dataclass
class Outcome:
    """What one way of provisioning did over the day."""

    name: str
    gpu_hours: float
    over_target_min: float  # load above ready x target
    no_gpu_ready_min: float  # ... of which with no GPU pod ready (the CPU side serves)
    over_capacity_min: float  # load above what the serving side holds: latency really at risk
    scale_events: int
    from_zero: int
    at_max_min: float
    peak_replicas: int


def _account(loads: list[int], ready_at: list[list[float]], asked: list[int], target: float) -> dict[str, float]:
    """Per-second accounting shared by the fixed and the autoscaled runs."""
    over = cold = over_cap = 0
    for t, load in enumerate(loads):
        ready = sum(1 for r in ready_at[t] if r <= t)
        if load > ready * target:
            over += 1
            cold += ready == 0
        # the proxy sends everything to the GPU side once a GPU pod is ready, else to the CPU side
        over_cap += load > (ready * CAPACITY_PER_REPLICA if ready else CPU_CAPACITY)
    return {
        "gpu_hours": sum(asked) / 3600.0,
        "over_target_min": over / 60.0,
        "no_gpu_ready_min": cold / 60.0,
        "over_capacity_min": over_cap / 60.0,
    }


def simulate(name: str, loads: list[int], policy: Policy, startup_s: float) -> Outcome:
    """Drive :func:`decide` through the day, one second at a time."""
    # the time each pod asked for is ready, oldest first; midnight's pods are already up
    pods: list[float] = [-startup_s] * policy.clamp(policy.needed(loads[0]))
    state = State()
    events = from_zero = at_max_s = peak = 0
    at_max = False
    ready_at: list[list[float]] = []
    asked: list[int] = []
    for t, load in enumerate(loads):
        if t % SYNC_S == 0:
            d = decide(load, len(pods), policy, state, float(t))
            state = d.state
            if d.replicas != len(pods):
                events += 1
                from_zero += not pods
            if d.replicas > len(pods):
                pods += [t + startup_s] * (d.replicas - len(pods))
            del pods[d.replicas :]  # the newest (still starting, if any) go first
            at_max = d.at_max
            peak = max(peak, len(pods))
        at_max_s += at_max
        ready_at.append(list(pods))
        asked.append(len(pods))
    return Outcome(
        name,
        scale_events=events,
        from_zero=from_zero,
        at_max_min=at_max_s / 60.0,
        peak_replicas=peak,
        **_account(loads, ready_at, asked, policy.target_streams_per_replica),
    )


def fixed_for_peak(loads: list[int], target: float) -> Outcome:
    """The alternative: enough GPU pods for the day's peak, all day."""
    n = math.ceil(max(loads) / target)
    ready = [0.0] * n
    return Outcome(
        f"fixed {n} (sized for the peak)",
        scale_events=0,
        from_zero=0,
        at_max_min=0.0,
        peak_replicas=n,
        **_account(loads, [ready] * len(loads), [n] * len(loads), target),
    )


def table(rows: list[Outcome], fixed: Outcome) -> str:
    head = (
        "| provisioning | GPU-hours | vs fixed | min over target | of which on CPU (no GPU ready) | min over capacity "
        "| scale events | from zero | peak pods |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in [fixed, *rows]:
        lines.append(
            f"| {r.name} | {r.gpu_hours:.1f} | {100 * r.gpu_hours / fixed.gpu_hours:.0f} % | "
            f"{r.over_target_min:.1f} | {r.no_gpu_ready_min:.1f} | {r.over_capacity_min:.1f} | "
            f"{r.scale_events} | {r.from_zero} | {r.peak_replicas} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--startup-s", type=float, default=60.0, help="GPU pod asked for -> ready (an assumption)")
    parser.add_argument("--out", type=Path, default=RESULTS / "autoscale.json")
    args = parser.parse_args(argv)
    began = time.monotonic()
    loads = day_trace(args.seed)
    fixed = fixed_for_peak(loads, TARGET)
    rows = [simulate(name, loads, policy, args.startup_s) for name, policy in POLICIES.items()]
    summary = {
        "peak_streams": max(loads),
        "mean_streams": round(sum(loads) / len(loads), 1),
        "stream_hours": round(sum(loads) / 3600.0, 1),
        "minutes_with_no_stream": round(sum(1 for x in loads if x == 0) / 60.0, 1),
    }
    print(
        f"24 h simulated (seed {args.seed}): peak {summary['peak_streams']} streams, mean {summary['mean_streams']}, "
        f"{summary['minutes_with_no_stream']} min with none; target {TARGET:g} streams per GPU pod, max "
        f"{MAX_REPLICAS}, pod ready {args.startup_s:g} s after asked for, evaluated every {SYNC_S} s"
    )
    print(table(rows, fixed))
    print(f"({time.monotonic() - began:.1f} s)")
    if args.out.parent.is_dir():
        result = {
            "command": shlex.join(["python", "-m", "bench.autoscale_sim", *(sys.argv[1:] if argv is None else argv)]),
            "assumptions": {
                "startup_s": args.startup_s,
                "sync_s": SYNC_S,
                "mean_stream_s": MEAN_STREAM_S,
                "target_streams_per_replica": TARGET,
                "capacity_streams_per_replica": CAPACITY_PER_REPLICA,
                "cpu_capacity_streams": CPU_CAPACITY,
                "max_replicas": MAX_REPLICAS,
                "seed": args.seed,
            },
            "trace": summary,
            "policies": {name: asdict(p) for name, p in POLICIES.items()},
            "outcomes": [asdict(r) for r in [fixed, *rows]],
        }
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
