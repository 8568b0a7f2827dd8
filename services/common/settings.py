"""Settings only the services have: the web origins allowed to call them (the Origin check).

The generic ``STT_*`` parsing (integers, floats, choices) is :mod:`core.settings`.
"""

from __future__ import annotations

import os

from core.settings import SettingsError

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
