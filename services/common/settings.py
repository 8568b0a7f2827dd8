"""The settings every service shares, as a typed pydantic-settings model, and how they are read.

Each service has one model (``services/<role>/settings.py``) built on :class:`ServiceSettings`:
every field is one environment variable (``STT_`` plus the field name, or the field's alias for
the few without the prefix), with its type, default, bounds and a description. The model is the
single source of truth: the service's app reads it once at start-up (:func:`load_settings`) and
passes it on, no other module reads the environment, and ``docs/configuration.md``'s tables are
generated from the models (``hack/config_docs.py``; a test fails when they drift apart).

A bad value stops the service at start-up with a :class:`SettingsError` that
names the variable (not pydantic's field name), so the message says what to fix in the
deployment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AliasChoices, BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(value: str) -> str | None:
    """``scheme://host[:port]`` in the form browsers send in ``Origin`` (lower case, default
    port dropped), or None when ``value`` is not such an origin (a path, a wildcard, ``null``)."""
    value = value.strip().lower()
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in DEFAULT_PORTS or not rest or any(c in rest for c in "/?#@*\\ "):
        return None
    host, port = rest, ""
    if rest.startswith("["):  # IPv6 literal: [::1]:8080
        end = rest.find("]")
        if end < 0:
            return None
        host, tail = rest[: end + 1], rest[end + 1 :]
        if tail and not tail.startswith(":"):
            return None
        port = tail[1:]
    elif ":" in rest:
        host, port = rest.rsplit(":", 1)
    if not host or (":" in host and not host.startswith("[")):  # an IPv6 address needs brackets
        return None
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            return None
        if int(port) == DEFAULT_PORTS[scheme]:
            port = ""
    return f"{scheme}://{host}:{port}" if port else f"{scheme}://{host}"


def parse_origins(raw: str | tuple[str, ...] | list[str], name: str = "STT_ALLOWED_ORIGINS") -> tuple[str, ...]:
    """A comma-separated list of web origins (``https://ui.example.com,http://localhost:3000``).

    Each entry must be a full origin; a wildcard is refused on purpose, since allowing every
    origin is exactly what the Origin check exists to prevent.
    """
    entries = raw.split(",") if isinstance(raw, str) else list(raw)
    origins = []
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        origin = normalize_origin(entry)
        if origin is None:
            raise SettingsError(
                f"{name}: {entry!r} is not an origin; list entries like https://ui.example.com or "
                "http://localhost:3000 (scheme, host and optional port; no path, no wildcard)"
            )
        origins.append(origin)
    return tuple(origins)


def split_list(value: Any) -> Any:
    """``a, b,c`` -> ``("a", "b", "c")``: lists keep the comma syntax deployments already use
    (pydantic-settings would otherwise expect JSON)."""
    if isinstance(value, str):
        return tuple(e.strip() for e in value.split(",") if e.strip())
    return value


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _origins(value: Any) -> tuple[str, ...]:
    try:
        return parse_origins(value)
    except SettingsError as exc:  # a ValueError pydantic reports; load_settings names the variable
        raise ValueError(str(exc).removeprefix("STT_ALLOWED_ORIGINS: ")) from None


# Field annotations shared by the models.
CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(split_list)]
Origins = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_origins)]
Lower = BeforeValidator(_lower)  # choices are matched case-insensitively, as before
LogLevel = Annotated[Literal["debug", "info", "warning", "error", "critical"], Lower]
MIB = 1024 * 1024
# Shared by the models that re-declare these fields with their own defaults.
CONCURRENCY_HELP = (
    "HTTP requests one worker process handles at once; past it, an immediate 429 `overloaded` "
    "with `Retry-After: 1`. `/healthz`, `/readyz`, `/metrics` and WebSocket sessions are neither counted "
    "nor refused"
)
BODY_BUDGET_HELP = (
    "bytes of request bodies one worker process holds at once: a request reserves its "
    "Content-Length (a chunked body, its bytes as they arrive) and past the budget gets an immediate 429 "
    "`overloaded` with `Retry-After: 1`, before its body is read; released when the request ends. At "
    "least two maximal uploads, so one is always taken by an idle worker; derived from the chart's memory "
    "limits in [reliability.md](reliability.md#memory-under-upload-floods)"
)


def env_name(model: type[BaseSettings], field: str) -> str:
    """The environment variable that sets ``field`` of ``model``: its alias when it has one
    (``POD_NAMESPACE``), else the model's prefix plus the field name, upper case."""
    info: FieldInfo = model.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    return f"{model.model_config.get('env_prefix', '')}{field}".upper()


S = TypeVar("S", bound=BaseSettings)


def load_settings(model: type[S], **overrides: Any) -> S:
    """Read ``model`` from the environment (plus ``overrides``, by field name), once.

    pydantic's own message names the model's field; this one names the variable and the value
    it held, which is what an operator can fix."""
    try:
        return model(**overrides)
    except ValidationError as exc:
        by_alias = {env_name(model, f).lower(): f for f in model.model_fields}
        problems = []
        for error in exc.errors():
            loc = str(error["loc"][0]) if error["loc"] else ""
            field = by_alias.get(loc.lower(), loc)
            name = env_name(model, field) if field in model.model_fields else loc or model.__name__
            message = str(error["msg"]).removeprefix("Value error, ")
            if "input" in error and error["type"] != "missing" and not isinstance(error["input"], dict):
                problems.append(f"{name}={error['input']!r}: {message}")
            else:
                problems.append(f"{name}: {message}")
        raise SettingsError("; ".join(problems)) from None


class StrictSettings(BaseSettings):
    """The reading rules every model shares: ``STT_`` prefix, an empty variable means the
    default (as with the old helpers and the chart's ``value: ""``), surrounding blanks dropped,
    unknown variables ignored (the environment holds much else)."""

    model_config = SettingsConfigDict(
        env_prefix="STT_",
        env_ignore_empty=True,
        str_strip_whitespace=True,
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )


class ModelCacheSettings(StrictSettings):
    """Where verified models are kept: the services that load models and the model CLI."""

    model_cache: Path = Field(
        default=Path.home() / ".cache" / "stt-models",
        description="where verified models are kept (outside git); a volume here keeps downloads across restarts",
        json_schema_extra={"doc_default": "~/.cache/stt-models"},
    )


class ServiceSettings(StrictSettings):
    """What every service has: logs, the request limits of ``create_app`` and the request head
    bound of :mod:`services.common.http_protocol`. Each service's model overrides the defaults
    that differ per service (``max_concurrency``, ``max_body_bytes_in_flight``)."""

    log_level: LogLevel = Field(
        default="info", description="log level (`debug`, `info`, `warning`, `error`, `critical`)"
    )
    log_format: Annotated[Literal["json", "text"], Lower] = Field(
        default="json", description="`json` (one object per line, for cluster log stacks) or `text` (for humans)"
    )
    max_upload_bytes: int = Field(default=50 * MIB, ge=1024, description="largest request body accepted (413 above)")
    allowed_origins: Origins = Field(
        default=(),
        description="comma-separated web origins (`https://ui.example.com,http://localhost:3000`) besides the "
        "service's own that may `POST` to it from a browser; others get 403 `origin_not_allowed`. Requests "
        "without an `Origin` header (curl, `stt-client`, service to service) are never affected. Full origins "
        "only (scheme, host, optional port; no path, no `*`). Behind a TLS-terminating ingress the service "
        "sees `http`, so list the public `https://` origin of a web UI here",
    )
    max_header_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        description="largest request head (request line plus header fields, in bytes); above it the service "
        "answers 431 `headers_too_large` and closes the connection (see [Request limits](#request-limits))",
    )
    max_header_fields: int = Field(default=100, ge=8, description="most header fields in one request (431 above)")
    max_concurrency: int = Field(
        default=64,
        ge=1,
        description=CONCURRENCY_HELP,
    )
    max_body_bytes_in_flight: int = Field(
        default=128 * MIB,
        ge=1,
        description=BODY_BUDGET_HELP,
    )
