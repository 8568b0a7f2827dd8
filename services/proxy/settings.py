"""The proxy's settings: one typed model, read once at start-up by ``services.proxy.app``.

The fields are the environment variables (``STT_*``, plus ``POD_NAMESPACE`` and the
``KUBERNETES_SERVICE_*`` pair Kubernetes sets in every pod); ``docs/configuration.md``'s table
is generated from them (``hack/config_docs.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from core.vocabulary import MAX_BEAM_SIZE, SESSION_BEAM_SIZE, RoutingMode
from services.common.limits import DEFAULT_MAX_CONCURRENCY
from services.common.memory import DEFAULT_BODY_BYTES_IN_FLIGHT
from services.common.settings import BODY_BUDGET_HELP, CONCURRENCY_HELP, Lower, ServiceSettings, SettingsError
from services.proxy.sessions import Limits
from services.proxy.stream_ws import SessionSettings

# Upstream waits for one chunk and one detection. Twice the chunk wait (the wanted side, then
# the other) is under stt-client's 180 s per chunk, and the detection wait under its 5 s, so the
# proxy always answers first and a client never resends a chunk that is still being computed.
CHUNK_TIMEOUT_S = 60.0
# The longest wait for a backend's answer to a whole file; the chart's drain outlasts it.
UPSTREAM_TIMEOUT_S = 300.0
DETECT_TIMEOUT_S = 2.0
# The API keys' defaults (services.proxy.api_keys): 10 requests a second, 20 at once, per key.
DEFAULT_KEY_RATE = 10.0
DEFAULT_KEY_BURST = 20.0


def _unset_dash(value: object) -> object:
    """``-`` means unset, as the old settings had it (a way to clear a value the chart sets)."""
    return "" if isinstance(value, str) and value.strip() == "-" else value


class ProxySettings(ServiceSettings):
    """Everything the proxy can be told (see the module docstring)."""

    max_concurrency: int = Field(
        default=DEFAULT_MAX_CONCURRENCY["proxy"],
        ge=1,
        description=CONCURRENCY_HELP + " (proxy: its requests mostly wait on the network for several backends)",
    )
    max_body_bytes_in_flight: int = Field(
        default=DEFAULT_BODY_BYTES_IN_FLIGHT["proxy"],
        ge=1,
        description=BODY_BUDGET_HELP,
    )
    cpu_backend_url: str = Field(default="http://127.0.0.1:5002", description="CPU base")
    gpu_backend_url: str = Field(default="", description="GPU base (unset or `-`: no GPU side)")
    detector_url: str = Field(default="http://127.0.0.1:5004", description="tiny")
    routing_mode: Annotated[RoutingMode, Lower] = Field(
        default=RoutingMode.CPU, description="initial mode: " + ", ".join(f"`{m.value}`" for m in RoutingMode)
    )
    routing_source: Annotated[Literal["local", "kubernetes"], Lower] = Field(
        default="local", description="`local` (this process) or `kubernetes` (the `SttConfig` resource)"
    )
    sttconfig_name: str = Field(default="stt", description="the `SttConfig` followed when the source is `kubernetes`")
    pod_namespace: str = Field(
        default="",
        validation_alias="POD_NAMESPACE",
        description="namespace of that `SttConfig` (unset: the pod's own, from its service account; else "
        "`default`); the chart sets it from the downward API",
    )
    routing_watch_timeout_s: int = Field(
        default=300, ge=1, description="how long one watch of the `SttConfig` lasts before it is renewed"
    )
    kubernetes_service_host: str = Field(
        default="",
        validation_alias="KUBERNETES_SERVICE_HOST",
        description="set by Kubernetes in every pod: the API server the `kubernetes` routing source talks "
        "to (unset: the kubeconfig's)",
    )
    kubernetes_service_port: str = Field(
        default="", validation_alias="KUBERNETES_SERVICE_PORT", description="set by Kubernetes: its port"
    )
    admin_token: str = Field(
        default="",
        repr=False,
        description="bearer token for `/gpu-toggle` (unset: toggling disabled, 503); prefer the file",
    )
    admin_token_file: str = Field(
        default="", description="file holding that token (a mounted Secret); wins over `STT_ADMIN_TOKEN`"
    )
    health_interval_s: float = Field(default=2.0, ge=0.1, description="backend `/readyz` polling interval")
    connect_timeout_s: float = Field(
        default=2.0, ge=0.1, description="connect timeout to a backend (then the other side is tried)"
    )
    upstream_timeout_s: float = Field(
        default=UPSTREAM_TIMEOUT_S,
        ge=1.0,
        description="longest wait for a backend's answer to a whole file (between two pieces of a streamed answer)",
    )
    chunk_timeout_s: float = Field(
        default=CHUNK_TIMEOUT_S,
        ge=1.0,
        description="longest wait for one chunk's answer (`/transcribe`, a session's window); then the other "
        "side is tried if it is ready, else 504. Keep twice this under the client's 180 s",
    )
    detect_timeout_s: float = Field(
        default=DETECT_TIMEOUT_S, ge=0.5, description="longest wait for the detector (under the client's 5 s)"
    )
    max_sessions: int = Field(
        default=64,
        ge=0,
        description="streaming sessions (`/v1/stream`, `/v1/realtime`) one replica holds; more are refused "
        "with close 1013 and a retry hint",
    )
    session_max_frame_bytes: int = Field(
        default=256 * 1024, ge=1024, description="largest audio frame of a session (close 1009 above)"
    )
    session_idle_timeout_s: float = Field(
        default=60.0, ge=1.0, description="a session with no frame for this long is finished and closed"
    )
    session_max_buffer_s: float = Field(
        default=120.0,
        ge=10.0,
        description="audio a session may hold unprocessed before it is closed (1013, resume later)",
    )
    session_beam_size: int = Field(
        default=SESSION_BEAM_SIZE,
        ge=1,
        le=MAX_BEAM_SIZE,
        description="Whisper's beams per window for sessions that do not ask (`beam_size`): 1 greedy, up to "
        f"{MAX_BEAM_SIZE}; wider misses fewer words and costs the backends decoder time ([docs/client.md]"
        "(client.md#beam-search-for-session-windows-the-default-since-2026-12-06))",
    )
    api_keys_file: str = Field(
        default="",
        description="file of API key digests, one `name:sha256hex` a line (`#` comments), re-read when it "
        "changes; set: keys are on, even if it lists none ([API keys](api.md#api-keys))",
    )
    api_key_hashes: str = Field(
        default="",
        description="API key digests as `name:sha256hex,name:sha256hex` (with the file, both count); both "
        "unset or empty: no keys needed",
    )
    api_key_rate: float = Field(
        default=DEFAULT_KEY_RATE,
        ge=0.0,
        description="requests a second allowed per API key name on each replica (0: unlimited); over it 429 "
        "`rate_limited` with `Retry-After`",
    )
    api_key_burst: float = Field(
        default=DEFAULT_KEY_BURST,
        ge=1.0,
        description="requests one API key may make at once before the rate applies (at least 1)",
    )
    public_docs: bool = Field(
        default=True,
        description="serve `/docs`, `/redoc` and `/openapi.json` (the chart sets `false`: `proxy.publicDocs`)",
    )
    ops_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="internal second listener (same process) for `/metrics`, the detailed `/gpu-status` and "
        "`/docs`; set, the public port answers `/metrics` 404 and `/gpu-status` with a summary. Unset or 0: "
        "all on the one port. A port already taken stops the start-up, named. The chart sets 9090 "
        "(`proxy.opsPort`)",
    )
    ops_host: str = Field(
        default="0.0.0.0",
        description="address the ops listener binds (in the chart, the NetworkPolicy admits only Prometheus to it)",
    )

    _dash = field_validator(
        "gpu_backend_url", "admin_token", "admin_token_file", "api_keys_file", "sttconfig_name", mode="before"
    )(_unset_dash)

    @field_validator("cpu_backend_url", "gpu_backend_url", "detector_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("sttconfig_name")
    @classmethod
    def _default_name(cls, value: str) -> str:
        return value or "stt"

    @property
    def ops_listen_port(self) -> int | None:
        """The ops port, or None when unset (or 0): one public port serves everything."""
        return self.ops_port or None

    @property
    def sessions(self) -> SessionSettings:
        return SessionSettings(
            max_sessions=self.max_sessions,
            max_frame_bytes=self.session_max_frame_bytes,
            idle_timeout_s=self.session_idle_timeout_s,
            beam_size=self.session_beam_size,
            limits=Limits(max_buffer_s=self.session_max_buffer_s),
        )

    def resolved_admin_token(self) -> str:
        """The ``/gpu-toggle`` token: the file's content when ``STT_ADMIN_TOKEN_FILE`` is set, else
        ``STT_ADMIN_TOKEN``; empty: toggling is disabled."""
        if not self.admin_token_file:
            return self.admin_token
        try:
            return Path(self.admin_token_file).read_text().strip()
        except OSError as exc:
            raise SettingsError(
                f"STT_ADMIN_TOKEN_FILE={self.admin_token_file}: cannot read it ({exc.strerror})"
            ) from None
