"""Optional API keys for the proxy's transcription endpoints, with a rate limit per key.

Why: the proxy is the one public entry point, and every request it takes spends CPU or GPU
time. With keys configured, only callers holding one may transcribe, and one caller cannot take
all the capacity: each key has its own token bucket.

- **Only digests are configured.** A key is given as the SHA-256 hex digest of its text
  (``printf %s "$KEY" | sha256sum``), never the key itself, so the Secret, the environment and a
  leaked config file reveal no usable key. Sources: ``STT_API_KEYS_FILE`` (one ``name:sha256hex``
  a line, ``#`` comments; the chart mounts a Secret there) and ``STT_API_KEY_HASHES``
  (``name:hex,name:hex``). Both unset or empty: keys are off, as before. ``STT_API_KEYS_FILE``
  set: keys are on even if the file lists none (everything is refused), so a Secret that was
  emptied by mistake closes the service instead of opening it. The file is read again when it
  changes (a rotated Secret), at most every few seconds; a broken new file keeps the old keys.
- **Compared in constant time, against every digest.** The presented key is hashed and compared
  with each configured digest by :func:`hmac.compare_digest`, all of them every time, so neither
  the answer's timing nor an early exit tells a caller which key it came close to.
- **Names, never keys, in logs and metrics.** A key's *name* labels its metrics and its bucket.
  Uvicorn logs a WebSocket's path with its query string at INFO, so the ``api_key=`` query
  parameter (for WebSocket clients that can set neither headers nor subprotocols) is redacted
  from those lines by :class:`RedactApiKeyFilter`.
- **Rate limit per key name** (``STT_API_KEY_RATE`` requests a second, ``STT_API_KEY_BURST`` at
  once; rate 0: unlimited). Per proxy replica: N replicas allow N times the rate in all.

How a caller presents a key (docs/api.md, "API keys"): ``Authorization: Bearer <key>`` (what
OpenAI's SDKs send) or ``x-api-key: <key>``; on a WebSocket also the subprotocol
``openai-insecure-api-key.<key>`` (what OpenAI's browser Realtime clients send; a browser
cannot set headers on a WebSocket), and on ``/v1/stream`` the query parameter ``api_key``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import HTTPConnection

from core.errors import ApiError
from services.common.settings import SettingsError
from services.proxy import metrics

log = logging.getLogger("stt.proxy.auth")

SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
QUERY_PARAM = "api_key"
DEFAULT_RATE = 10.0  # requests a second per key, per replica
DEFAULT_BURST = 20.0
RELOAD_INTERVAL_S = 5.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")
# Subprotocols a client may offer beside the key that only carry options, never one to answer with.
_FLAG_SUBPROTOCOLS = ("openai-beta.", "openai-organization.", "openai-project.")


def hash_key(key: str) -> str:
    """The digest a key is configured by: SHA-256 of its UTF-8 text, in lower-case hex."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One configured key: the name it is known by (logs, metrics, its bucket) and its digest."""

    name: str
    digest: bytes  # the 32 raw bytes of the SHA-256


def parse_entry(entry: str, where: str) -> ApiKey:
    """``name:sha256hex`` → :class:`ApiKey`; the error names the place, never echoes the value."""
    name, sep, digest = (part.strip() for part in entry.partition(":"))
    if not sep or not _NAME.match(name):
        raise SettingsError(
            f"{where}: expected 'name:sha256hex' with a name of letters, digits, '.', '_' or '-' "
            "(at most 63 characters)"
        )
    if not _DIGEST.match(digest):
        raise SettingsError(
            f"{where}: key {name!r} needs the 64 hex digits of the key's SHA-256 "
            '(printf %s "$KEY" | sha256sum), not the key itself'
        )
    return ApiKey(name, bytes.fromhex(digest))


def parse_file(text: str, source: str) -> list[ApiKey]:
    """Keys from a file's text: one ``name:sha256hex`` a line; blank lines and ``#`` comments skipped."""
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            keys.append(parse_entry(line, f"{source} line {number}"))
    return _unique(keys, source)


def parse_list(raw: str, source: str) -> list[ApiKey]:
    """Keys from a comma-separated ``name:hex,name:hex`` list (``STT_API_KEY_HASHES``)."""
    entries = [e.strip() for e in raw.split(",")]
    keys = [parse_entry(e, f"{source} entry {i}") for i, e in enumerate(entries, 1) if e]
    return _unique(keys, source)


def _unique(keys: list[ApiKey], source: str) -> list[ApiKey]:
    """The same digest twice is a copy-and-paste slip (which name would it count under?).
    The same name twice is allowed on purpose: an old and a new key during a rotation share
    one name, one bucket and one series of metrics."""
    seen: dict[bytes, str] = {}
    for key in keys:
        if key.digest in seen:
            raise SettingsError(f"{source}: keys {seen[key.digest]!r} and {key.name!r} have the same digest")
        seen[key.digest] = key.name
    return keys


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; a request takes one. Starts full."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, now

    def take(self, now: float) -> float:
        """0 when a token was taken; else the seconds until one will be there (nothing taken)."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RefusedError(Exception):
    """A request without a usable key, or over its key's rate: ``reason`` is the metric label."""

    def __init__(self, reason: str, code: str, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.reason, self.code, self.message, self.retry_after_s = reason, code, message, retry_after_s

    def http_error(self) -> ApiError:
        """401 with ``WWW-Authenticate`` for a missing or wrong key (so OpenAI's SDK raises
        ``AuthenticationError``); 429 with ``Retry-After`` over the rate (``RateLimitError``)."""
        if self.retry_after_s is not None:
            return ApiError(429, self.code, self.message, headers={"Retry-After": str(self.retry_after_s)})
        challenge = 'Bearer realm="stt"' if self.reason == "missing" else 'Bearer realm="stt", error="invalid_token"'
        return ApiError(401, self.code, self.message, headers={"WWW-Authenticate": challenge})


MISSING_MESSAGE = (
    "an API key is required: send it as 'Authorization: Bearer <key>' (or 'x-api-key: <key>'); "
    "on a WebSocket also as the subprotocol 'openai-insecure-api-key.<key>'"
)


class ApiKeyGuard:
    """The configured keys and their buckets. ``enabled`` False: every request passes, as
    before keys existed."""

    def __init__(
        self,
        keys: Sequence[ApiKey] = (),
        *,
        enabled: bool | None = None,
        rate: float = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
        path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate < 0 or (rate > 0 and burst < 1):
            raise SettingsError("the API key rate must be >= 0 and the burst >= 1")
        self.keys = tuple(keys)
        self.enabled = (bool(keys) or path is not None) if enabled is None else enabled
        self.rate, self.burst = rate, burst
        self.path = path
        self.clock = clock
        self._env_keys: tuple[ApiKey, ...] = ()
        self._stamp = self._file_stamp()
        self._checked = clock()
        self._buckets: dict[str, TokenBucket] = {}  # one per key name, so as many as names configured

    @classmethod
    def from_settings(
        cls,
        keys_file: str = "",
        key_hashes: str = "",
        rate: float = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> ApiKeyGuard:
        """The guard the proxy's settings describe: ``STT_API_KEYS_FILE`` (``keys_file``, empty:
        none), ``STT_API_KEY_HASHES`` (``key_hashes``), ``STT_API_KEY_RATE``, ``STT_API_KEY_BURST``."""
        path = Path(keys_file) if keys_file else None
        env_keys = parse_list(key_hashes, "STT_API_KEY_HASHES")
        file_keys: list[ApiKey] = []
        if path is not None:
            try:
                file_keys = parse_file(path.read_text(), f"STT_API_KEYS_FILE={path}")
            except OSError as exc:
                raise SettingsError(f"STT_API_KEYS_FILE={path}: cannot read it ({exc.strerror})") from None
        guard = cls(_unique([*env_keys, *file_keys], "API keys"), rate=rate, burst=burst, path=path, clock=clock)
        guard._env_keys = tuple(env_keys)
        if guard.enabled:
            names = sorted({k.name for k in guard.keys})
            limit = f"{rate:g}/s, burst {burst:g} per key" if rate > 0 else "no rate limit"
            log.info("API keys on: %d key(s) named %s; %s", len(guard.keys), ", ".join(names) or "(none)", limit)
            if not guard.keys:
                log.warning("STT_API_KEYS_FILE=%s lists no key: every transcription request is refused", path)
        return guard

    # --- keys -----------------------------------------------------------------------------

    def identify(self, presented: str) -> str | None:
        """The name of the key ``presented`` is, or None. Every digest is compared, each in
        constant time, whatever matched before: the time taken says nothing about which
        (or whether a) key was close."""
        digest = hashlib.sha256(presented.encode()).digest()
        found: str | None = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key.name
        return found

    def _file_stamp(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()  # follows the ..data symlink a Secret volume swaps on update
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def maybe_reload(self) -> None:
        """Read the key file again if it changed (a rotated Secret reaches a pod within about a
        minute, without a restart). Checked at most every ``RELOAD_INTERVAL_S``."""
        if self.path is None or self.clock() - self._checked < RELOAD_INTERVAL_S:
            return
        self._checked = self.clock()
        stamp = self._file_stamp()
        if stamp == self._stamp or stamp is None:
            return
        try:
            keys = _unique([*self._env_keys, *parse_file(self.path.read_text(), str(self.path))], "API keys")
        except (OSError, SettingsError) as exc:
            log.error("API key file changed but cannot be used (%s); keeping the keys loaded before", exc)
            return
        self._stamp, self.keys = stamp, tuple(keys)
        log.info("API key file reloaded: %d key(s) named %s", len(keys), ", ".join(sorted({k.name for k in keys})))

    # --- checks ---------------------------------------------------------------------------

    def check(self, presented: str | None) -> str | None:
        """The key's name when the caller may go on (None when keys are off); else :class:`RefusedError`."""
        if not self.enabled:
            return None
        self.maybe_reload()
        if not presented:
            metrics.AUTH_REFUSALS.labels("missing").inc()
            raise RefusedError("missing", "missing_api_key", MISSING_MESSAGE)
        name = self.identify(presented)
        if name is None:
            metrics.AUTH_REFUSALS.labels("invalid").inc()
            raise RefusedError("invalid", "invalid_api_key", "the API key is not valid; check the key you send")
        wait = self._take(name)
        if wait > 0:
            metrics.RATE_LIMITED.labels(name).inc()
            retry_after = max(1, math.ceil(wait))
            raise RefusedError(
                "rate_limited",
                "rate_limited",
                f"too many requests for API key {name!r} (at most {self.rate:g} a second, {self.burst:g} at once); "
                f"retry in {retry_after} s",
                retry_after_s=retry_after,
            )
        metrics.API_KEY_REQUESTS.labels(name).inc()
        return name

    def _take(self, name: str) -> float:
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = TokenBucket(self.rate, self.burst, now)
        return bucket.take(now)


# --- presenting a key ---------------------------------------------------------------------------


def key_from_headers(connection: HTTPConnection) -> str | None:
    """``Authorization: Bearer <key>``, else ``x-api-key``. Another scheme counts as no key."""
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return connection.headers.get("x-api-key", "").strip() or None


def offered_subprotocols(connection: HTTPConnection) -> list[str]:
    return list(connection.scope.get("subprotocols") or [])


def key_from_subprotocols(subprotocols: Iterable[str]) -> str | None:
    for protocol in subprotocols:
        if protocol.startswith(SUBPROTOCOL_PREFIX) and len(protocol) > len(SUBPROTOCOL_PREFIX):
            return protocol[len(SUBPROTOCOL_PREFIX) :]
    return None


def choose_subprotocol(subprotocols: Sequence[str]) -> str | None:
    """The subprotocol to accept a WebSocket with. A browser fails the connection when it
    offered subprotocols and the server picks none, so one is always picked then: the first that
    is neither a key nor an option flag (``realtime``, or the page's ``stt``), else the key's
    own (echoed to the client that sent it, as OpenAI does)."""
    for protocol in subprotocols:
        if not protocol.startswith((SUBPROTOCOL_PREFIX, *_FLAG_SUBPROTOCOLS)):
            return protocol
    return subprotocols[0] if subprotocols else None


def presented_key(connection: HTTPConnection, allow_query: bool = False) -> str | None:
    """The key a request or WebSocket presents: headers, then (WebSocket) the subprotocol, then
    (``allow_query``) the ``api_key`` query parameter."""
    key = key_from_headers(connection)
    if key is None and connection.scope["type"] == "websocket":
        key = key_from_subprotocols(offered_subprotocols(connection))
    if key is None and allow_query:
        key = connection.query_params.get(QUERY_PARAM) or None
    return key


async def require_api_key(request: HTTPConnection) -> None:
    """FastAPI dependency of the transcription routes: 401 without a valid key, 429 over its rate.
    Nothing happens while keys are off (no ``api_keys`` on the app, or none configured)."""
    guard: ApiKeyGuard | None = getattr(request.app.state, "api_keys", None)
    if guard is None or not guard.enabled:
        return
    try:
        request.state.api_key_name = guard.check(presented_key(request))
    except RefusedError as refused:
        log.info("refused %s %s: %s", request.scope.get("method", "WS"), request.url.path, refused.reason)
        raise refused.http_error() from None


# --- keeping keys out of logs -------------------------------------------------------------------

_QUERY_KEY = re.compile(r"([?&]api_key=)[^&\s\"']*", re.IGNORECASE)


class RedactApiKeyFilter(logging.Filter):
    """Blanks ``api_key=...`` in log lines: uvicorn logs ``"WebSocket /v1/stream?..." [accepted]``
    with the whole query string at INFO, whatever the access-log setting."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(_QUERY_KEY.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str) and "api_key=" in record.msg.lower():
            record.msg = _QUERY_KEY.sub(r"\1[redacted]", record.msg)
        return True


def install_log_redaction() -> None:
    """Attach :class:`RedactApiKeyFilter` to the loggers that print request paths (once)."""
    for name in ("uvicorn.error", "uvicorn.access", "uvicorn"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactApiKeyFilter) for f in logger.filters):
            logger.addFilter(RedactApiKeyFilter())
