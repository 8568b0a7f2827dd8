"""The operator's settings (:mod:`controller.settings`): the environment the chart sets is what
the model reads, under the same names and defaults, and a bad value fails with its variable."""

from __future__ import annotations

import pytest

from controller.settings import OperatorSettings, load_settings
from tests.k8s.test_chart import deployments, env_of, render

FIELDS = OperatorSettings.model_fields


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for field in FIELDS:
        monkeypatch.delenv(OperatorSettings.env_name(field), raising=False)
    return monkeypatch


def test_every_setting_has_a_description_and_an_stt_variable() -> None:
    for name, info in FIELDS.items():
        assert info.description and len(info.description) > 20, name
        assert OperatorSettings.env_name(name) == "STT_" + name.upper()
    with pytest.raises(KeyError):
        OperatorSettings.env_name("nope")


def test_defaults_are_the_documented_ones(clean_env: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.sttconfig_name, s.cpu_deployment, s.gpu_deployment) == ("", "stt-base-cpu", "stt-base-gpu")
    assert (s.detector_deployment, s.detector_container) == ("stt-tiny", "tiny")
    assert (s.controller_metrics_port, s.status_resync_s, s.k8s_timeout_s) == (8080, 15.0, 5.0)
    assert (s.proxy_metrics_service, s.proxy_metrics_port) == ("stt-proxy-metrics", 9090)
    assert s.externally_scaled_backends == frozenset()


def test_the_charts_controller_environment_is_read_whole(helm: str, clean_env: pytest.MonkeyPatch) -> None:
    keda = ("--set", "autoscaling.engine=keda", "--set", "autoscaling.keda.prometheusAddress=http://prom:9090")
    keda += ("--set", "sttConfig.autoscaling.gpu.enabled=true", "--set", "sttConfig.autoscaling.gpu.maxReplicas=4")
    for args in ((), keda):
        env = env_of(deployments(render(helm, "1.33.0", *args))["stt-controller"])
        stt = {k: v for k, v in env.items() if k.startswith("STT_")}
        unknown = set(stt) - {OperatorSettings.env_name(f) for f in FIELDS}
        assert not unknown, f"the chart sets variables the operator does not read: {unknown}"
        for name, value in stt.items():
            clean_env.setenv(name, value or "")
        s = load_settings()
        assert s.sttconfig_name == "stt" and s.k8s_timeout_s == float(env["STT_K8S_TIMEOUT_S"])
        assert s.externally_scaled_backends == (frozenset({"gpu"}) if args else frozenset())


def test_an_empty_variable_means_the_default(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STT_PROXY_METRICS_PORT", "")
    clean_env.setenv("STT_K8S_TIMEOUT_S", " ")
    clean_env.setenv("STT_EXTERNALLY_SCALED", " cpu, gpu ,")
    s = load_settings()
    assert s.proxy_metrics_port == 9090 and s.externally_scaled_backends == {"gpu", "cpu"}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STT_K8S_TIMEOUT_S", "0"),
        ("STT_K8S_TIMEOUT_S", "soon"),
        ("STT_PROXY_METRICS_PORT", "0"),
        ("STT_CONTROLLER_METRICS_PORT", "-1"),
        ("STT_STATUS_RESYNC_S", "0"),
        ("STT_EXTERNALLY_SCALED", "gpu,tpu"),
    ],
)
def test_a_bad_value_names_its_variable(clean_env: pytest.MonkeyPatch, name: str, value: str) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        load_settings()
