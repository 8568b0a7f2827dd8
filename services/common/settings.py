"""Settings read from the environment, with documented defaults.

Every knob of every service is an ``STT_*`` environment variable; ``docs/configuration.md``
lists them. Parsing lives here once so that a bad value fails at start-up with the variable's
name in the message instead of deep inside a request.
"""

from __future__ import annotations

import os


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default).strip() or default


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


def env_float(name: str, default: float, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use true/false)")


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env_str(name, default).lower()
    if value not in choices:
        raise SettingsError(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value


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


def env_origins(name: str) -> tuple[str, ...]:
    """A comma-separated list of web origins (``https://ui.example.com,http://localhost:3000``).

    Each entry must be a full origin; a wildcard is refused on purpose, since allowing every
    origin is exactly what the Origin check exists to prevent.
    """
    raw = os.environ.get(name, "")
    origins = []
    for entry in (e.strip() for e in raw.split(",")):
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
