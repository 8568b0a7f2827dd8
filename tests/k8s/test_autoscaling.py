"""The autoscaling rule (a pure function), driven in simulated time, and its spec."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from controller.autoscaling import (
    AT_MAX,
    SCALE_DOWN,
    SCALE_DOWN_DELAYED,
    SCALE_FROM_ZERO,
    SCALE_TO_ZERO,
    SCALE_UP,
    SCALE_UP_DELAYED,
    STEADY,
    Decision,
    Policy,
    State,
    decide,
)

# Small numbers make the arithmetic obvious: 3 streams per replica, 60 s down window.
POLICY = Policy(min_replicas=0, max_replicas=5, target_streams_per_replica=3, scale_down_stabilization_s=60)


def run(loads: list[float], policy: Policy = POLICY, current: int = 0, step_s: float = 15.0) -> list[Decision]:
    """Evaluate every ``step_s`` seconds, applying each decision at once (the operator's loop)."""
    state, out = State(), []
    for i, load in enumerate(loads):
        d = decide(load, current, policy, state, now=1000.0 + i * step_s)
        state, current = d.state, d.replicas
        out.append(d)
    return out


def test_defaults_are_documented_and_valid() -> None:
    p = Policy()
    assert (p.min_replicas, p.max_replicas) == (0, 1)
    assert p.target_streams_per_replica == 120 and p.scale_up_stabilization_s == 0
    assert p.scale_down_stabilization_s == 900


def test_scales_up_at_once_with_the_reason() -> None:
    d = decide(7, 1, POLICY, State(), now=0.0)
    assert d.replicas == 3 and d.reason == SCALE_UP and not d.at_max
    assert d.message.startswith("7 streams over target 3 per replica: 1 -> 3")


def test_scale_from_zero_on_any_load() -> None:
    d = decide(0.2, 0, POLICY, State(), now=0.0)
    assert (d.replicas, d.reason) == (1, SCALE_FROM_ZERO)
    assert d.message == "0.2 streams with no replica, target 3 per replica: 0 -> 1"
    # even with a scale-up window that would otherwise hold the replicas where they are
    slow_up = Policy(max_replicas=5, target_streams_per_replica=3, scale_up_stabilization_s=120)
    quiet = decide(0, 0, slow_up, State(), now=0.0)
    d = decide(10, 0, slow_up, quiet.state, now=15.0)
    assert (d.replicas, d.reason) == (1, SCALE_FROM_ZERO)
    # the rest waits for the window: the load must stay high for 120 s
    d = decide(10, 1, slow_up, d.state, now=30.0)
    assert (d.replicas, d.reason) == (1, SCALE_UP_DELAYED)
    d = decide(10, 1, slow_up, d.state, now=140.0)
    assert d.replicas == 4 and d.reason == SCALE_UP


def test_no_flapping_on_a_noisy_load_around_the_target() -> None:
    rng = random.Random(7)
    # 2 replicas' worth (6 streams) +- 1: the needed count flips between 2 and 3 all the time
    loads = [6 + rng.choice((-1, 0, 1)) for _ in range(240)]
    decisions = run(loads, current=2, step_s=1.0)  # 60 samples a window
    needed = [POLICY.needed(x) for x in loads]
    assert len(set(needed)) == 2 and sum(a != b for a, b in pairwise(needed)) > 20
    replicas = [d.replicas for d in decisions]
    changes = sum(a != b for a, b in pairwise([2, *replicas]))
    assert changes == 1 and replicas[-1] == 3  # one step up at the first 7, then held
    assert all(d.replicas * 3 >= load for d, load in zip(decisions, loads, strict=True))


def test_scale_down_only_after_the_delay() -> None:
    state = decide(9, 3, POLICY, State(), now=0.0).state
    d = decide(2, 3, POLICY, state, now=15.0)
    assert (d.replicas, d.reason) == (3, SCALE_DOWN_DELAYED)
    d = decide(2, 3, POLICY, d.state, now=59.0)  # the 9-stream sample is 59 s old: still in the window
    assert d.replicas == 3
    d = decide(2, 3, POLICY, d.state, now=60.0)
    assert (d.replicas, d.reason) == (1, SCALE_DOWN) and d.message.endswith("3 -> 1")


def test_scale_down_goes_to_the_largest_need_over_the_window() -> None:
    state = decide(15, 5, POLICY, State(), now=0.0).state  # 5 needed
    state = decide(7, 5, POLICY, state, now=30.0).state  # 3 needed
    d = decide(1, 5, POLICY, state, now=61.0)  # the 5 is out, the 3 is still in
    assert (d.replicas, d.reason) == (3, SCALE_DOWN)


def test_history_never_scales_up_by_itself() -> None:
    state = decide(15, 5, POLICY, State(), now=0.0).state  # 5 needed a moment ago
    d = decide(1, 2, POLICY, state, now=15.0)  # someone scaled to 2 by hand; 1 is needed now
    assert (d.replicas, d.reason) == (2, SCALE_DOWN_DELAYED)


def test_to_zero_after_the_delay_and_back() -> None:
    decisions = run([4] + [0] * 8 + [1])
    replicas = [d.replicas for d in decisions]
    assert replicas[:4] == [2, 2, 2, 2]  # the 4 streams were seen under 60 s ago: kept
    assert replicas[4] == 0 and decisions[4].reason == SCALE_TO_ZERO  # 60 s later
    assert decisions[1].reason == SCALE_DOWN_DELAYED
    assert decisions[-1].replicas == 1 and decisions[-1].reason == SCALE_FROM_ZERO


def test_a_restarted_autoscaler_does_not_scale_down_before_a_full_window() -> None:
    d = decide(0, 4, POLICY, State(), now=500.0)  # no memory: the current 4 count as seen now
    assert (d.replicas, d.reason) == (4, SCALE_DOWN_DELAYED)
    d = decide(0, 4, POLICY, d.state, now=560.0)
    assert (d.replicas, d.reason) == (0, SCALE_TO_ZERO)


def test_a_clock_reset_drops_entries_from_the_future() -> None:
    state = decide(15, 5, POLICY, State(), now=10_000.0).state
    d = decide(0, 5, POLICY, state, now=5.0)  # the 5 recorded "later" is forgotten; seeded with current
    assert all(t <= 5.0 for t, _ in d.state.recommendations)
    assert d.replicas == 5  # still no scale-down before a full window


def test_bounds_and_the_max_reached_flag() -> None:
    bounded = Policy(min_replicas=1, max_replicas=2, target_streams_per_replica=3, scale_down_stabilization_s=0)
    d = decide(0, 0, bounded, State(), now=0.0)
    assert d.replicas == 1 and d.reason == SCALE_UP and "min 1" in d.message
    d = decide(0, 2, bounded, State(), now=0.0)
    assert d.replicas == 1 and d.reason == SCALE_DOWN  # never under min, even with no load
    d = decide(20, 1, bounded, State(), now=0.0)
    assert d.replicas == 2 and d.at_max and "capped at max 2; 7 needed" in d.message
    d = decide(20, 2, bounded, d.state, now=15.0)
    assert (d.replicas, d.reason, d.at_max) == (2, AT_MAX, True)
    d = decide(6, 2, bounded, d.state, now=30.0)  # exactly max x target: served, no alert
    assert (d.replicas, d.reason, d.at_max) == (2, STEADY, False)
    d = decide(5, 9, bounded, State(), now=0.0)  # scaled past max by hand: brought back
    assert d.replicas == 2 and d.reason == SCALE_DOWN


def test_state_stays_bounded_by_the_window() -> None:
    state = State()
    for i in range(1000):
        state = decide(5, 2, POLICY, state, now=float(i)).state
    assert len(state.recommendations) == 60 and state.recommendations[0][0] == 940.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_replicas": -1}, "min_replicas=-1: must be a non-negative integer"),
        ({"max_replicas": 0}, "max_replicas=0: must be at least 1"),
        ({"max_replicas": 2.5}, "max_replicas=2.5"),
        ({"min_replicas": True}, "min_replicas=True"),
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas=3 is above max_replicas=2"),
        ({"target_streams_per_replica": 0}, "target_streams_per_replica=0: must be a number above 0"),
        ({"target_streams_per_replica": float("nan")}, "target_streams_per_replica=nan"),
        ({"target_streams_per_replica": "120"}, "target_streams_per_replica='120'"),
        ({"scale_down_stabilization_s": -5}, "scale_down_stabilization_s=-5: must be a non-negative number"),
        ({"scale_up_stabilization_s": float("inf")}, "scale_up_stabilization_s=inf"),
    ],
)
def test_invalid_policies_are_refused_with_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        Policy(**kwargs)


@pytest.mark.parametrize(("streams", "current"), [(-1, 1), (float("nan"), 1), (True, 1), (3, -1), (3, 1.0)])
def test_invalid_inputs_are_refused(streams: float, current: int) -> None:
    with pytest.raises(ValueError):
        decide(streams, current, POLICY, State(), now=0.0)


def test_the_simulation_charges_the_start_up_and_the_scale_down_delay() -> None:
    """bench/autoscale_sim.py's accounting on a trace small enough to check by hand."""
    from bench.autoscale_sim import simulate

    loads = [0] * 600 + [250] * 1200 + [0] * 2000
    policy = Policy(max_replicas=12, target_streams_per_replica=120, scale_down_stabilization_s=900)
    out = simulate("t", loads, policy, startup_s=60)
    # 3 pods asked for at 600 s, ready at 660 s: the minute between is over target, on the CPU side
    assert out.over_target_min == pytest.approx(1.0) and out.no_gpu_ready_min == pytest.approx(1.0)
    assert out.over_capacity_min == pytest.approx(1.0)  # 250 streams > the one CPU pod's 12
    # the last busy evaluation is at 1785 s; 900 s later nothing is left: 3 pods from 600 s to 2685 s
    assert out.gpu_hours == pytest.approx(3 * (2685 - 600) / 3600)
    assert (out.scale_events, out.from_zero, out.peak_replicas) == (2, 1, 3)
    slow = simulate("t", loads, policy, startup_s=300)
    assert slow.over_target_min == pytest.approx(5.0)


# --- spec.autoscaling: parsing, defaults, and which backend carries the streams ---------------


def test_spec_autoscaling_parses_the_enabled_backends_with_their_own_defaults() -> None:
    from controller.autoscaling import DEFAULT_POLICIES, policies_from_spec

    assert policies_from_spec(None) == {}
    assert policies_from_spec({"gpu": {"enabled": False, "maxReplicas": 4}}) == {}
    got = policies_from_spec({"gpu": {"enabled": True, "maxReplicas": 4}, "cpu": {"enabled": True}})
    assert got["gpu"] == Policy(max_replicas=4)
    assert got["cpu"] == DEFAULT_POLICIES["cpu"] and got["cpu"].min_replicas == 1


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"tpu": {"enabled": True}}, "spec.autoscaling.tpu: unknown backend"),
        ({"gpu": {"enabled": True, "minReplicas": 3, "maxReplicas": 2}}, "autoscaling.gpu: min_replicas=3 is above"),
        ({"cpu": {"enabled": True, "targetStreamsPerReplica": 0}}, "spec.autoscaling.cpu: target_streams_per_replica"),
        ({"gpu": {"enabled": True, "maxReplica": 2}}, "unknown field(s) maxReplica"),
    ],
)
def test_spec_autoscaling_errors_name_the_field(spec, says) -> None:
    from controller.autoscaling import policies_from_spec

    with pytest.raises(ValueError) as err:
        policies_from_spec(spec)
    assert says in str(err.value)


def test_streams_go_where_the_proxy_routes_them() -> None:
    from controller.autoscaling import streams_per_backend

    assert streams_per_backend(5, "cpu", gpu_ready=2) == {"gpu": 0, "cpu": 5}
    assert streams_per_backend(5, "gpu", gpu_ready=1) == {"gpu": 5, "cpu": 0}
    # Scale from zero: no GPU pod ready yet, so the CPU side carries them (the proxy's fallback)
    # while the GPU side is asked for replicas.
    assert streams_per_backend(5, "auto", gpu_ready=0) == {"gpu": 5, "cpu": 5}


def test_an_unknown_load_holds_the_replicas_within_the_bounds() -> None:
    from controller.autoscaling import LOAD_UNKNOWN, hold

    state = State(((10.0, 2),))
    held = hold(2, POLICY, state, "1 of 2 proxies unread")
    assert (held.replicas, held.reason, held.state) == (2, LOAD_UNKNOWN, state)
    assert "1 of 2 proxies unread" in held.message and not held.at_max
    assert hold(9, POLICY, state, "x").replicas == POLICY.max_replicas  # a spec change still applies its bounds


def test_the_crd_and_the_chart_defaults_are_the_operators(helm) -> None:
    """One set of defaults: what the CRD fills in, what the chart renders and what the operator
    assumes for a field left out must agree, per backend."""
    import yaml

    from controller.autoscaling import DEFAULT_POLICIES, SPEC_FIELDS, policies_from_spec
    from tests.k8s.test_chart import render
    from tests.k8s.tools import CHART

    docs = render(helm)
    crd = next(d for d in docs if d["kind"] == "CustomResourceDefinition")
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())["sttConfig"]["autoscaling"]
    for backend, policy in DEFAULT_POLICIES.items():
        props = spec_schema["properties"]["autoscaling"]["properties"][backend]["properties"]
        crd_defaults = {k: props[k]["default"] for k in SPEC_FIELDS}
        assert props["enabled"]["default"] is False and values[backend]["enabled"] is False
        assert policies_from_spec({backend: {"enabled": True, **crd_defaults}})[backend] == policy, backend
        chart = {k: v for k, v in values[backend].items() if k != "enabled"}
        assert policies_from_spec({backend: {"enabled": True, **chart}})[backend] == policy, backend
