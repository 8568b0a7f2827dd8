"""The native streaming protocol: ``GET /v1/stream`` upgraded to a WebSocket.

Binary frames carry 16 kHz mono s16le PCM (any length up to ``STT_SESSION_MAX_FRAME_BYTES``,
an even number of bytes); text frames carry JSON control messages (``{"type": "stop"}`` ends
the stream and asks for the rest of the transcript). Every event the session produces is
sent as one JSON text frame (fields in docs/api.md, "Streaming sessions"). Session options
are query parameters, because a browser cannot set headers on a WebSocket.

The pieces shared with the OpenAI Realtime endpoint (:mod:`services.proxy.realtime`): the
session cap, the Origin check and the API key check (:class:`SessionGate`), the event sender
that refuses to buffer without bound for a client that stops reading (:class:`EventSender`),
and a session's run from start to counted end (:class:`SessionRun`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter, Query, WebSocket
from starlette.websockets import WebSocketState

from core.commit_policy import PolicyConfig
from core.vocabulary import SAMPLE_RATE
from services.common.origin import origin_allowed
from services.proxy import metrics
from services.proxy.api_keys import ApiKeyGuard, RefusedError, choose_subprotocol, offered_subprotocols, presented_key
from services.proxy.sessions import Limits, ProxyBackend, SessionOptions, StreamSession, TooFarBehindError

log = logging.getLogger("stt.proxy.stream")
router = APIRouter()

# WebSocket close codes (RFC 6455 §7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008  # refused: origin, API key, or a client that does not read its events
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013  # session cap reached, or the session fell too far behind: retry later


@dataclass
class SessionSettings:
    max_sessions: int = 64
    max_frame_bytes: int = 256 * 1024
    idle_timeout_s: float = 60.0
    max_queued_events: int = 256
    retry_after_s: float = 5.0
    beam_size: int = SessionOptions.beam_size  # what a session decodes with unless it asks (STT_SESSION_BEAM_SIZE)
    limits: Limits | None = None


class SessionGate:
    """Counts open sessions on this replica and refuses past the cap (per replica, so the cap
    scales with proxy replicas and a full replica sends clients to another)."""

    def __init__(self, settings: SessionSettings) -> None:
        self.settings = settings
        self.open = 0

    async def admit(
        self,
        websocket: WebSocket,
        protocol: str,
        allowed_origins: tuple[str, ...],
        cap_event: Callable[[str, float], dict] | None = None,
        key_event: Callable[[str, str, float | None], dict] | None = None,
        key_in_query: bool = False,
    ) -> bool:
        """Accept the socket; if it may not have a session, say why in an error event and
        close it (accepted first: a browser sees only a close code and reason, never an HTTP
        status on a refused upgrade). ``cap_event(message, retry_after_s)`` and
        ``key_event(code, message, retry_after_s)`` shape those events for a protocol other than
        the native one. With API keys on, the key (header, subprotocol, or with ``key_in_query``
        the ``api_key`` query parameter) is checked before the session cap and before any
        audio is read: a missing or wrong one closes with 1008, one over its rate with 1013."""
        origin = websocket.headers.get("origin")
        if origin is not None and not origin_allowed(origin, websocket, allowed_origins):
            metrics.SESSIONS_REFUSED.labels("origin").inc()
            await websocket.close(CLOSE_POLICY, "origin not allowed: see STT_ALLOWED_ORIGINS")
            return False
        await websocket.accept(subprotocol=choose_subprotocol(offered_subprotocols(websocket)))
        guard: ApiKeyGuard | None = getattr(websocket.app.state, "api_keys", None)
        if guard is not None and guard.enabled:
            try:
                guard.check(presented_key(websocket, allow_query=key_in_query))
            except RefusedError as refused:
                await self._refuse(websocket, refused, key_event or _key_event)
                return False
        if self.open >= self.settings.max_sessions:
            metrics.SESSIONS_REFUSED.labels("session_cap").inc()
            message = (
                f"this proxy replica has its maximum of {self.settings.max_sessions} sessions open; "
                f"retry in {self.settings.retry_after_s:g} s (another replica may have room)"
            )
            event = (cap_event or _cap_event)(message, self.settings.retry_after_s)
            await websocket.send_text(json.dumps(event))
            await websocket.close(CLOSE_TRY_AGAIN, f"session cap reached; retry in {self.settings.retry_after_s:g} s")
            return False
        self.open += 1
        metrics.SESSIONS_ACTIVE.labels(protocol).inc()
        return True

    async def _refuse(
        self, websocket: WebSocket, refused: RefusedError, key_event: Callable[[str, str, float | None], dict]
    ) -> None:
        """An ``error`` event saying what to send, then the close: 1008 for the key, 1013 for the rate."""
        rate_limited = refused.retry_after_s is not None
        metrics.SESSIONS_REFUSED.labels("rate_limited" if rate_limited else "api_key").inc()
        log.info("session refused: %s", refused.reason)
        event = key_event(refused.code, refused.message, refused.retry_after_s)
        with contextlib.suppress(Exception):
            await websocket.send_text(json.dumps(event))
        if rate_limited:
            await close_websocket(websocket, CLOSE_TRY_AGAIN, f"rate limited; retry in {refused.retry_after_s} s")
        else:
            await close_websocket(
                websocket, CLOSE_POLICY, "missing API key" if refused.reason == "missing" else "invalid API key"
            )

    def release(self, protocol: str) -> None:
        self.open -= 1
        metrics.SESSIONS_ACTIVE.labels(protocol).dec()


class ClientNotReadingError(Exception):
    """More events are waiting than the bound: the client stopped reading."""


class EventSender:
    """Sends events from a bounded queue, so a session never waits on a slow socket and a
    client that never reads cannot make the proxy hold events without bound."""

    def __init__(self, websocket: WebSocket, max_queued: int) -> None:
        self.websocket = websocket
        self.queue: asyncio.Queue[dict | None] = asyncio.Queue(max_queued)
        self.task = asyncio.create_task(self._run(), name="events")
        self.failed: str | None = None  # why the session was ended from here, if it was
        self._closing: asyncio.Task | None = None

    async def emit(self, event: dict) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.fail(CLOSE_POLICY, "client is not reading its events")
            raise ClientNotReadingError(
                f"{self.queue.maxsize} events are waiting to be sent: the client is not reading them"
            ) from None

    def fail(self, code: int, reason: str) -> None:
        """End the connection from the session's side (the receive loop then sees it close)."""
        if self._closing is None:
            self.failed = reason
            self.task.cancel()
            self._closing = asyncio.create_task(close_websocket(self.websocket, code, reason, timeout=5))

    def on_session_error(self, exc: BaseException) -> None:
        if not isinstance(exc, ClientNotReadingError):
            log.error("session failed: %r", exc, exc_info=exc)
            self.fail(CLOSE_INTERNAL, "internal error; resume from the last settled sample")

    async def _run(self) -> None:
        while (event := await self.queue.get()) is not None:
            await self.websocket.send_text(json.dumps(event, ensure_ascii=False))

    async def close(self) -> None:
        """Send what is queued, then stop."""
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, timeout=5)
        self.task.cancel()


class SessionRun:
    """One admitted connection's session, from its start to its counted end: what the native
    and the OpenAI Realtime endpoints do alike around their own receive loops.

    :meth:`serve` registers the session (the lag gauge reads the registered ones), starts it
    and runs the protocol's receive loop, which returns how the session ended. :meth:`end`,
    called in ``finally`` whatever happened (a refused option, a crash, a hang-up), unregisters
    it, cancels it unless it finished (a client gone must not leave windows decoding for
    nobody), sends the events still queued, frees its place under the cap and counts the end.
    """

    def __init__(self, websocket: WebSocket, protocol: str, sender: EventSender) -> None:
        self.app = websocket.app
        self.protocol, self.sender = protocol, sender
        self.session: StreamSession | None = None
        self.outcome = "error"  # until the receive loop says otherwise

    async def serve(
        self, session: StreamSession, start: Callable[[], Awaitable[None]], receive: Callable[[], Awaitable[str]]
    ) -> None:
        self.session = session
        self.app.state.sessions.add(session)
        try:
            await start()
            self.outcome = await receive()
            if self.sender.failed:
                self.outcome = "error"
        except ClientNotReadingError as exc:
            self.outcome = "error"
            log.warning("%s session closed: %s", self.protocol, exc)

    async def end(self) -> None:
        if self.session is not None:
            self.app.state.sessions.discard(self.session)
            if self.outcome != "finished":
                await self.session.cancel()
        await self.sender.close()
        self.app.state.session_gate.release(self.protocol)
        metrics.SESSIONS.labels(self.protocol, self.outcome).inc()


def _cap_event(message: str, retry_after_s: float) -> dict:
    return {
        "type": "error",
        "code": "session_cap",
        "message": message,
        "retryable": True,
        "retry_after_s": retry_after_s,
    }


def _key_event(code: str, message: str, retry_after_s: float | None) -> dict:
    """A refused key (``missing_api_key``, ``invalid_api_key``) or rate (``rate_limited``)."""
    event = error_event(code, message, retryable=retry_after_s is not None)
    if retry_after_s is not None:
        event["retry_after_s"] = retry_after_s
    return event


def error_event(code: str, message: str, retryable: bool) -> dict:
    """The native protocol's ``error`` event."""
    return {"type": "error", "code": code, "message": message, "retryable": retryable}


@router.websocket("/v1/stream")
async def stream(
    websocket: WebSocket,
    language: str | None = Query(None, max_length=32),
    detector: bool = Query(True),
    step_s: float = Query(PolicyConfig.step_s),
    window_s: float = Query(PolicyConfig.max_window_s),
    context_s: float = Query(PolicyConfig.context_s),
    settle_s: float = Query(PolicyConfig.settle_s),
    beam_size: int | None = Query(None),
    resume_from: int = Query(0, ge=0),
    committed_until: int | None = Query(None, ge=0),
) -> None:
    """A live stream: PCM frames in, transcript events out (docs/api.md, "Streaming sessions")."""
    app = websocket.app
    settings: SessionSettings = app.state.session_settings
    gate: SessionGate = app.state.session_gate
    if not await gate.admit(websocket, "native", app.state.settings.allowed_origins, key_in_query=True):
        return
    sender = EventSender(websocket, settings.max_queued_events)
    run = SessionRun(websocket, "native", sender)
    try:
        try:
            options = SessionOptions(
                language=(language or "").strip().lower() or None,
                detector=detector,
                step_s=step_s,
                window_s=window_s,
                context_s=context_s,
                settle_s=settle_s,
                beam_size=settings.beam_size if beam_size is None else beam_size,
                resume_from=resume_from,
                committed_until=committed_until,
            )
            options.policy()  # validates the numbers
            if not 1.0 <= step_s <= 10.0:
                raise ValueError("step_s must be between 1 and 10 seconds")
        except ValueError as exc:
            metrics.SESSIONS_REFUSED.labels("bad_request").inc()
            await sender.emit(error_event("bad_option", str(exc), retryable=False))
            await end_connection(websocket, sender, CLOSE_POLICY, "bad session options")
            return
        session = StreamSession(
            ProxyBackend(app.state.upstreams, options.beam_size),
            sender.emit,
            options,
            settings.limits,
            "native",
            sender.on_session_error,
        )
        await run.serve(session, session.start, lambda: _receive(websocket, session, sender, settings))
    finally:
        await run.end()


async def _receive(websocket: WebSocket, session: StreamSession, sender: EventSender, settings: SessionSettings) -> str:
    """Frames in until ``stop`` or a disconnect; returns how the session ended."""
    while True:
        try:
            message = await asyncio.wait_for(websocket.receive(), timeout=settings.idle_timeout_s)
        except TimeoutError:
            await sender.emit(
                error_event(
                    "idle",
                    f"no audio or message for {settings.idle_timeout_s:g} s; the session is closed",
                    retryable=True,
                )
            )
            if not await finish_unless_gone(websocket, session):
                return "disconnected"
            await end_connection(websocket, sender, CLOSE_GOING_AWAY, "idle")
            return "finished"
        if message["type"] == "websocket.disconnect":
            return "disconnected"
        data = message.get("bytes")
        if data is not None:
            if len(data) > settings.max_frame_bytes:
                await sender.emit(
                    error_event(
                        "frame_too_large",
                        f"a frame may hold at most {settings.max_frame_bytes} bytes; send smaller frames",
                        retryable=False,
                    )
                )
                await end_connection(websocket, sender, CLOSE_TOO_BIG, "frame too large")
                return "error"
            if len(data) % 2:
                await sender.emit(
                    error_event(
                        "odd_frame",
                        "a frame of s16le PCM must hold an even number of bytes; this one was dropped",
                        retryable=False,
                    )
                )
                continue
            try:
                session.feed(np.frombuffer(data, dtype="<i2"))
            except TooFarBehindError as exc:
                await sender.emit(error_event("too_far_behind", str(exc), retryable=True))
                await end_connection(websocket, sender, CLOSE_TRY_AGAIN, "too far behind; resume later")
                return "too_far_behind"
            metrics.SESSION_AUDIO_SECONDS.inc(len(data) / 2 / SAMPLE_RATE)
            continue
        try:
            control = json.loads(message.get("text") or "")
            kind = control.get("type") if isinstance(control, dict) else None
        except ValueError:
            await sender.emit(
                error_event("bad_json", 'text frames must be JSON objects like {"type": "stop"}', retryable=False)
            )
            continue
        if kind == "stop":
            if not await finish_unless_gone(websocket, session):
                return "disconnected"
            await end_connection(websocket, sender, CLOSE_NORMAL, "done")
            return "finished"
        await sender.emit(
            error_event(
                "unknown_event", f'unknown message type {str(kind)[:40]!r}; the only one is "stop"', retryable=False
            )
        )


async def finish_unless_gone(websocket: WebSocket, session: StreamSession) -> bool:
    """Work off the audio the session still holds, unless the client hangs up meanwhile; True
    when it finished.

    Finishing can take long: the backlog of a session that fell behind, decoded while the
    backends are busy or restarting. A client that stops waiting (its own timeout, a lost
    connection, a kill) and resumes elsewhere sends the same audio again, so a session that
    went on finishing for nobody would decode everything twice; a few of those and a busy
    cluster never catches up. So the connection is watched while the session finishes, and a
    hang-up ends the session at once (the caller cancels it). Frames after ``stop`` mean
    nothing and are dropped."""
    finishing = asyncio.ensure_future(session.finish())
    gone = asyncio.ensure_future(_disconnected(websocket))
    try:
        await asyncio.wait({finishing, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if finishing.done():
        finishing.result()  # a failure of the session is the caller's to handle
        return True
    finishing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await finishing
    return False


async def _disconnected(websocket: WebSocket) -> None:
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


async def end_connection(websocket: WebSocket, sender: EventSender, code: int, reason: str) -> None:
    """Send the events still queued, then close with ``code``."""
    await sender.close()
    await close_websocket(websocket, code, reason)


async def close_websocket(websocket: WebSocket, code: int, reason: str, timeout: float = 5.0) -> None:
    """Close unless the client already has; a client that does not answer the close within
    ``timeout`` is left to the server's own teardown."""
    if websocket.application_state != WebSocketState.DISCONNECTED:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(websocket.close(code, reason), timeout)
