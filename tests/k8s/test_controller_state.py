"""The operator's status rules (pure functions): what the SttConfig says about what runs."""

from __future__ import annotations

import pytest

from controller.state import (
    RESYNC_MAX_CALLS,
    Observed,
    ResyncHeartbeat,
    Spec,
    active_backend,
    compute_status,
    resync_stale_after_s,
)


def conds(status: dict) -> dict[str, dict]:
    return {c["type"]: c for c in status["conditions"]}


def test_spec_defaults_and_validation() -> None:
    assert Spec.from_dict({}) == Spec("cpu", 1, 0, 1, "silero")
    assert Spec.from_dict({"routing": "gpu", "gpuReplicas": 2}).desired_gpu_replicas == 2
    assert Spec.from_dict({"routing": "auto", "gpuReplicas": 3}).desired_gpu_replicas == 3
    # routing cpu: GPU pods cost money, so only the idle count runs
    assert Spec.from_dict({"routing": "cpu", "gpuReplicas": 3, "gpuIdleReplicas": 1}).desired_gpu_replicas == 1
    for bad in (
        {"routing": "fast"},
        {"detector": "vad"},
        {"gpuReplicas": -1},
        {"cpuReplicas": "2"},
        {"gpuReplicas": True},
    ):
        with pytest.raises(ValueError):
            Spec.from_dict(bad)


@pytest.mark.parametrize(
    ("routing", "cpu", "gpu", "expected"),
    [
        ("cpu", 1, 1, "cpu"),
        ("cpu", 0, 1, "gpu"),  # the proxy falls back to the GPU side when CPU is down
        ("gpu", 1, 1, "gpu"),
        ("gpu", 1, 0, "cpu"),
        ("auto", 1, 0, "cpu"),
        ("auto", 1, 2, "gpu"),
        ("gpu", 0, 0, "none"),
    ],
)
def test_active_backend_matches_the_proxy_rule(routing: str, cpu: int, gpu: int, expected: str) -> None:
    assert active_backend(routing, Observed(cpu, gpu, 1)) == expected


def test_gpu_routing_without_a_ready_gpu_pod_is_degraded() -> None:
    status = compute_status(Spec(routing="gpu"), Observed(1, 0, 1), 4, None, "2026-11-26T06:00:00Z")
    c = conds(status)
    assert status["activeBackend"] == "cpu"
    assert c["Degraded"]["status"] == "True" and c["Degraded"]["reason"] == "GpuNotReady"
    assert c["GpuReady"]["status"] == "False" and c["GpuReady"]["reason"] == "ReplicasNotReady"
    assert c["Ready"]["status"] == "True"  # still serving, on CPU
    assert status["observedGeneration"] == 4 and all(x["observedGeneration"] == 4 for x in c.values())
    assert status["gpuReplicasDesired"] == 1 and status["gpuReplicasReady"] == 0


def test_gpu_routing_with_gpu_ready_is_healthy() -> None:
    status = compute_status(Spec(routing="gpu", gpu_replicas=2), Observed(1, 2, 1), 5, None, "t0")
    c = conds(status)
    assert status["activeBackend"] == "gpu"
    assert (c["Ready"]["status"], c["GpuReady"]["status"], c["Degraded"]["status"]) == ("True", "True", "False")
    assert c["GpuReady"]["reason"] == "AllReplicasReady"


def test_cpu_routing_scaled_to_zero_gpu() -> None:
    c = conds(compute_status(Spec(), Observed(1, 0, 1), 1, None, "t0"))
    assert c["GpuReady"]["reason"] == "ScaledToZero" and c["Degraded"]["status"] == "False"


def test_nothing_ready_and_errors() -> None:
    c = conds(compute_status(Spec(), Observed(0, 0, 1), 1, None, "t0"))
    assert c["Ready"]["reason"] == "NoBackendReady" and c["Degraded"]["reason"] == "CpuNotReady"
    c = conds(compute_status(Spec(), Observed(1, 0, 0), 1, None, "t0"))
    assert c["Ready"]["reason"] == "DetectorNotReady" and c["Degraded"]["reason"] == "DetectorNotReady"
    c = conds(compute_status(Spec(), Observed(1, 0, 1), 1, None, "t0", error="HTTP 403 Forbidden"))
    assert c["Ready"]["status"] == "False" and c["Degraded"]["reason"] == "ApplyFailed"
    assert c["Degraded"]["message"] == "HTTP 403 Forbidden"


def test_transition_time_moves_only_when_status_changes() -> None:
    first = compute_status(Spec(routing="gpu"), Observed(1, 0, 1), 1, None, "t0")
    same = compute_status(Spec(routing="gpu"), Observed(1, 0, 1), 1, first, "t1")
    assert same == first  # nothing changed: the operator writes nothing
    healed = compute_status(Spec(routing="gpu"), Observed(1, 1, 1), 1, first, "t2")
    c = conds(healed)
    assert c["Degraded"]["lastTransitionTime"] == "t2" and c["GpuReady"]["lastTransitionTime"] == "t2"
    assert c["Ready"]["lastTransitionTime"] == "t0"  # Ready stayed True


def test_stale_bound_covers_an_attempt_whose_every_call_ran_to_its_timeout() -> None:
    assert resync_stale_after_s(15, 5) == 255  # the chart's defaults: 4 x 15 + (19 x 2 + 1) x 5
    assert resync_stale_after_s(15, 5, retries=0) == 160
    slowest_attempt = (RESYNC_MAX_CALLS * 2 + 1) * 5
    assert resync_stale_after_s(15, 5) > 15 + slowest_attempt  # one period late and the slowest attempt


def test_heartbeat_stuck_only_when_no_attempt_finished_for_longer_than_the_bound() -> None:
    beat = ResyncHeartbeat(stale_after_s=60, last_finished=1000.0)
    assert not beat.stuck(1000.0) and not beat.stuck(1060.0)  # exactly the bound: still alive
    assert beat.stuck(1060.5)
    assert beat.age_s(999.0) == 0.0  # a clock read before the beat is not negative


def test_failing_attempts_keep_the_operator_alive_and_are_counted() -> None:
    beat = ResyncHeartbeat(stale_after_s=60, last_finished=0.0)
    for t in (50.0, 100.0, 150.0):  # the API answers errors: every attempt fails, but finishes
        beat.finished(t, ok=False)
    assert not beat.stuck(200.0)
    assert (beat.last_ok, beat.consecutive_failures) == (False, 3)
    beat.finished(210.0, ok=True)
    assert (beat.last_ok, beat.consecutive_failures) == (True, 0)
    assert beat.stuck(270.1)  # then nothing finishes any more: stuck


def test_the_status_patch_removes_what_the_new_status_no_longer_has() -> None:
    from controller.state import merge_patch

    previous = {
        "routing": "gpu",
        "autoscaling": {"gpu": {"streams": 4, "desiredReplicas": 2}, "cpu": {"desiredReplicas": 1}},
        "conditions": [{"type": "Ready"}],
    }
    new = {"routing": "gpu", "autoscaling": {"gpu": {"desiredReplicas": 2}}, "conditions": []}
    assert merge_patch(previous, new) == {
        "routing": "gpu",
        "autoscaling": {"gpu": {"desiredReplicas": 2, "streams": None}, "cpu": None},
        "conditions": [],  # lists are replaced whole by a merge patch
    }
    assert merge_patch(previous, {"routing": "cpu"})["autoscaling"] is None
    assert merge_patch({}, new) == new


def test_models_are_checked_per_backend() -> None:
    from controller.state import models_from_spec

    good = {"cpu": "tiny.en", "gpu": "/models/whisper-small-ct2"}
    assert Spec.from_dict({"models": good}).models == good
    assert models_from_spec({"gpu": "Systran/faster-whisper-small"}) == {"gpu": "Systran/faster-whisper-small"}
    for bad, says in (
        ({"tpu": "base"}, "spec.models.tpu: unknown backend"),
        ({"cpu": "base; rm -rf /"}, "spec.models.cpu='base; rm -rf /'"),
        ({"cpu": "/models/../etc"}, "spec.models.cpu='/models/../etc'"),
        ({"gpu": ""}, "spec.models.gpu=''"),
        ({"gpu": 3}, "spec.models.gpu=3"),
    ):
        with pytest.raises(ValueError) as err:
            models_from_spec(bad)
        assert says in str(err.value)


def test_status_says_when_a_model_rollout_is_done() -> None:
    from controller.state import Rollout

    spec = Spec(models={"cpu": "tiny.en"})
    rolling = Observed(1, 0, 1, rollouts={"cpu": Rollout("tiny.en", done=False)})
    assert compute_status(spec, rolling, 2, None, "t0")["models"] == {
        "cpu": {"requested": "tiny.en", "template": "tiny.en", "rolledOut": False}
    }
    done = Observed(1, 0, 1, rollouts={"cpu": Rollout("tiny.en", done=True)})
    assert compute_status(spec, done, 2, None, "t0")["models"]["cpu"]["rolledOut"] is True
    # the template still has the old model (the operator has not written it yet): not rolled out
    old = Observed(1, 0, 1, rollouts={"cpu": Rollout("base", done=True)})
    assert compute_status(spec, old, 2, None, "t0")["models"]["cpu"]["rolledOut"] is False
    assert "models" not in compute_status(Spec(), done, 2, None, "t0")


@pytest.mark.parametrize(
    ("status", "done"),
    [
        ({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}, True),
        ({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}, False),  # not seen yet
        ({"observedGeneration": 3, "replicas": 3, "updatedReplicas": 2, "readyReplicas": 3}, False),  # old pod left
        ({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 1}, False),  # not ready
    ],
)
def test_a_rollout_is_done_when_every_pod_runs_the_template_and_is_ready(status: dict, done: bool) -> None:
    from controller.kube import rollout_done

    deployment = {"metadata": {"generation": 3}, "spec": {"replicas": 2}, "status": status}
    assert rollout_done(deployment) is done
    assert rollout_done(None) is False
