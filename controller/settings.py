"""The operator's settings: every ``STT_*`` environment variable it reads, in one typed model.

The environment is read once, at start-up (:func:`controller.operator.startup`), into an
:class:`OperatorSettings`; everything else gets the values passed in (kopf's ``memo``), so no
controller module reads the environment on its own and a test passes settings instead of
patching the environment. A bad value fails start-up with the variable's name in the message.

Each field's environment variable is ``STT_`` + its name in upper case (``env_prefix``), e.g.
``k8s_timeout_s`` is ``STT_K8S_TIMEOUT_S``: :meth:`OperatorSettings.env_name` says so for the
docs. The Helm chart sets them (``charts/stt/templates/controller.yaml``); the defaults here are
for ``kopf run`` on a host against the chart's resource names.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BACKENDS = ("gpu", "cpu")


class OperatorSettings(BaseSettings):
    """The controller's configuration (environment variables ``STT_<FIELD NAME>``)."""

    model_config = SettingsConfigDict(
        env_prefix="STT_",
        # An empty variable (``STT_PROXY_METRICS_PORT=""``) means "the default", as it always did.
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
    )

    sttconfig_name: str = Field(
        default="",
        description=(
            "The one SttConfig this operator manages (empty: every SttConfig it sees). The chart "
            "sets the release's own, so that two releases in one namespace never fight over Deployments."
        ),
    )
    cpu_deployment: str = Field(
        default="stt-base-cpu",
        description="The CPU transcriber Deployment the SttConfig drives (replicas, STT_MODEL), in its namespace.",
    )
    gpu_deployment: str = Field(
        default="stt-base-gpu",
        description="The GPU transcriber Deployment the SttConfig drives (replicas, STT_MODEL), in its namespace.",
    )
    detector_deployment: str = Field(
        default="stt-tiny",
        description="The detector Deployment whose default detector (STT_DETECTOR) the SttConfig sets.",
    )
    detector_container: str = Field(
        default="tiny",
        description="The container in the detector Deployment that gets STT_DETECTOR; change it with the chart.",
    )
    controller_metrics_port: int = Field(
        default=8080,
        ge=0,
        le=65535,
        description="Port of the operator's Prometheus /metrics (0: off, e.g. when nothing scrapes it).",
    )
    status_resync_s: float = Field(
        default=15.0,
        gt=0,
        description=(
            "Seconds between status refreshes and drift corrections of every SttConfig, and the "
            "autoscaler's evaluation period. Status follows every Deployment event anyway; this is "
            "the backstop for a missed event. Shorter reacts faster to load, at more API calls."
        ),
    )
    k8s_timeout_s: float = Field(
        default=5.0,
        ge=0.1,
        description=(
            "Timeout in seconds of every Kubernetes API call, the operator's own and kopf's, and of "
            "reading all proxies' load together. Raise it for an API server that is slow under load; "
            "the liveness bound grows with it (controller.state.resync_stale_after_s)."
        ),
    )
    proxy_metrics_service: str = Field(
        default="stt-proxy-metrics",
        description=(
            "Service whose Endpoints list the proxy pods; the autoscaler reads each pod's live "
            "streams from its /metrics."
        ),
    )
    proxy_metrics_port: int = Field(
        default=9090,
        ge=1,
        le=65535,
        description="Port of each proxy pod's /metrics that the autoscaler reads (the proxy's ops port).",
    )
    externally_scaled: str = Field(
        default="",
        description=(
            "Backends whose replicas an HPA or KEDA sets (gpu, cpu or gpu,cpu; the chart's "
            "autoscaling.engine): the operator neither scales nor autoscales them, and reports "
            "what the HPA asked for."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, data: Any) -> Any:
        """A blank value (``STT_K8S_TIMEOUT_S=" "``) means the default, as an empty one does: a
        values file that templates an empty string should not fail the operator's start."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (isinstance(v, str) and not v.strip())}
        return data

    @field_validator("sttconfig_name", "cpu_deployment", "gpu_deployment", "detector_deployment", "detector_container")
    @classmethod
    def _strip(cls, value: str) -> str:
        """Names from a values file may carry stray spaces; Kubernetes names never do."""
        return value.strip()

    @field_validator("externally_scaled")
    @classmethod
    def _backends(cls, value: str) -> str:
        """A comma-separated list of backends, normalized (sorted, no blanks); anything else is refused."""
        backends = sorted({b.strip() for b in value.split(",") if b.strip()})
        if set(backends) - set(BACKENDS):
            raise ValueError(f"{','.join(backends)}: use gpu, cpu or both")
        return ",".join(backends)

    @property
    def externally_scaled_backends(self) -> frozenset[str]:
        """:attr:`externally_scaled` as a set (a plain string in the environment and the docs)."""
        return frozenset(b for b in self.externally_scaled.split(",") if b)

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of ``field`` (``k8s_timeout_s`` → ``STT_K8S_TIMEOUT_S``)."""
        if field not in cls.model_fields:
            raise KeyError(field)
        return str(cls.model_config.get("env_prefix", "")) + field.upper()


def load_settings() -> OperatorSettings:
    """Read the environment once; a bad value is a :class:`ValueError` naming its variable.

    pydantic's own message names the field (``k8s_timeout_s``); the person who set
    ``STT_K8S_TIMEOUT_S`` in a values file should not have to translate.
    """
    try:
        return OperatorSettings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = error.get("loc") or ("?",)
            field = str(loc[0])
            name = OperatorSettings.env_name(field) if field in OperatorSettings.model_fields else field
            problems.append(f"{name}={error.get('input')!r}: {error.get('msg')}")
        raise ValueError("invalid operator settings: " + "; ".join(problems)) from None
