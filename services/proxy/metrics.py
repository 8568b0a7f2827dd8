"""Metrics of the routing proxy."""

from prometheus_client import Counter, Gauge, Histogram

from core.vocabulary import BACKENDS, ROUTING_MODES

ROUTED = Counter("stt_proxy_routed_total", "Requests routed, by backend that served and mode", ["backend", "mode"])
FALLBACKS = Counter("stt_proxy_fallbacks_total", "Requests not served by the backend the mode asked for", ["reason"])
BACKEND_READY = Gauge("stt_proxy_backend_ready", "1 when the backend answered its last /readyz with 200", ["backend"])
UPSTREAM_SECONDS = Histogram(
    "stt_proxy_upstream_duration_seconds",
    "Time waiting for the backend, per backend and route",
    ["backend", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60),
)
UPSTREAM_ERRORS = Counter("stt_proxy_upstream_errors_total", "Backend calls that failed", ["backend", "kind"])
CALLER_HANGUPS = Counter(
    "stt_proxy_caller_hangups_total",
    "Requests whose caller hung up before the backend answered; the backend call was closed",
    ["route"],
)
ADMIN_ACTIONS = Counter("stt_proxy_admin_actions_total", "Admin actions by action and result", ["action", "result"])
MODE = Gauge("stt_proxy_routing_mode", "1 for the routing mode in force", ["mode"])

# Create the known series at 0 so that rate()/increase() also see the first event.
for _backend in BACKENDS:
    for _mode in ROUTING_MODES:
        ROUTED.labels(_backend, _mode)
for _backend in ("cpu", "gpu", "detector"):
    for _kind in ("connect", "timeout", "dropped", "busy_429", "busy_503"):
        UPSTREAM_ERRORS.labels(_backend, _kind)
for _route in ("/transcribe", "/v1/audio/transcriptions", "/v1/audio/translations", "/detect"):
    CALLER_HANGUPS.labels(_route)
for _result in ("ok", "unauthenticated", "forbidden", "bad_request", "disabled", "error"):
    ADMIN_ACTIONS.labels("gpu-toggle", _result)

# Streaming sessions (services/proxy/sessions.py, stream_ws.py, realtime.py).
SESSIONS_ACTIVE = Gauge("stt_proxy_sessions_active", "Streaming sessions open now, by protocol", ["protocol"])
SESSIONS = Counter(
    "stt_proxy_sessions_total", "Streaming sessions ended, by protocol and how they ended", ["protocol", "outcome"]
)
SESSIONS_REFUSED = Counter("stt_proxy_sessions_refused_total", "Streaming sessions refused, by reason", ["reason"])
SESSION_AUDIO_SECONDS = Counter("stt_proxy_session_audio_seconds_total", "Audio received by streaming sessions")
SESSION_LAG_SECONDS = Histogram(
    "stt_proxy_session_lag_seconds",
    "Audio received but not yet processed by a session, observed at every step",
    buckets=(0.5, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89),
)
SESSION_MAX_LAG_SECONDS = Gauge("stt_proxy_session_max_lag_seconds", "The largest lag of any open session now")
SESSION_PARTIAL_SECONDS = Histogram(
    "stt_proxy_session_first_partial_seconds",
    "End of a step's audio arriving → the words decoded from it sent (partial or committed)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 13),
)
SESSION_COMMIT_SECONDS = Histogram(
    "stt_proxy_session_commit_seconds",
    "End of a word's audio arriving → that word committed",
    buckets=(0.5, 1, 2, 3, 4, 5, 6, 8, 10, 13, 21),
)
for _protocol in ("native", "openai-realtime"):
    SESSIONS_ACTIVE.labels(_protocol)
    for _outcome in ("finished", "disconnected", "error", "too_far_behind"):
        SESSIONS.labels(_protocol, _outcome)
for _reason in ("session_cap", "origin", "bad_request", "api_key", "rate_limited"):
    SESSIONS_REFUSED.labels(_reason)

# API keys (services/proxy/api_keys.py): labelled by the key's configured *name*, never the key.
AUTH_REFUSALS = Counter(
    "stt_proxy_auth_refusals_total", "Requests and sessions refused for their API key, by reason", ["reason"]
)
RATE_LIMITED = Counter("stt_proxy_rate_limited_total", "Requests and sessions over their API key's rate", ["key"])
API_KEY_REQUESTS = Counter("stt_proxy_api_key_requests_total", "Requests and sessions let in, by API key name", ["key"])
for _reason in ("missing", "invalid"):
    AUTH_REFUSALS.labels(_reason)
