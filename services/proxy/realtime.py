"""OpenAI Realtime *transcription* sessions: ``GET /v1/realtime?intent=transcription`` as a WebSocket.

Why: programs written for OpenAI's Realtime API (the official SDKs, browser pages, telephony
bridges) transcribe live audio here by changing only their base URL. The wire format is
OpenAI's; the work is the native streaming session's (:class:`~services.proxy.sessions.StreamSession`:
detector steps, the LocalAgreement commit policy, routed backends, backpressure), so both
protocols share one pipeline, one session cap (:class:`~services.proxy.stream_ws.SessionGate`)
and one bounded event queue (:class:`~services.proxy.stream_ws.EventSender`).

What the adapter does on top:

- audio: ``input_audio_buffer.append`` carries base64 PCM16 (24 kHz unless the session says
  otherwise) or G.711; it is decoded and resampled to the session's 16 kHz by a streaming
  polyphase filter (:class:`StreamResampler`) that keeps its state from one append to the
  next, so append boundaries leave no clicks for the detector or Whisper to hear;
- items: one conversation item per utterance. With server VAD (OpenAI's default) the
  detector's ``speech.started`` opens an item (``input_audio_buffer.speech_started``), every
  *committed* word is sent as ``conversation.item.input_audio_transcription.delta`` (partial
  words are not: a delta cannot be taken back), and the utterance's end (the session's
  ``utterance.ended``) sends ``speech_stopped``, ``committed``, ``conversation.item.created``
  and ``...transcription.completed``. With ``turn_detection: null`` the client's
  ``input_audio_buffer.commit`` ends the item (:meth:`StreamSession.flush`), and its words
  go out after ``committed``, as OpenAI sends them;
- errors: a client event that cannot be used is answered with an ``error`` event
  (``invalid_request_error``) and the session goes on, as OpenAI's does.

Fields and the differences from OpenAI's service are in docs/api.md ("OpenAI Realtime
transcription").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
import math
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
from fastapi import APIRouter, Query, WebSocket

from core.commit_policy import Word, join_words
from core.g711 import ALAW_TO_PCM16, ULAW_TO_PCM16
from services.proxy import metrics
from services.proxy.sessions import (
    SAMPLE_RATE,
    Limits,
    ProxyBackend,
    SessionBackend,
    SessionOptions,
    StreamSession,
    TooFarBehindError,
)
from services.proxy.stream_ws import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    EventSender,
    SessionGate,
    SessionRun,
    SessionSettings,
    end_connection,
    finish_unless_gone,
)

router = APIRouter()

PROTOCOL = "openai-realtime"  # the ``protocol`` label of the session metrics
MIN_COMMIT_MS = 100  # OpenAI refuses to commit less audio than this
DEFAULT_RATE = 24_000  # OpenAI's PCM16 rate
G711_RATE = 8_000
MIN_RATE, MAX_RATE = 8_000, 48_000
DEFAULT_MODEL = "whisper-1"  # echoed back; the proxy's routed Whisper backend transcribes whatever is asked
MAX_PROMPT_CHARS = 2000
ITEM_CONTENT_INDEX = 0  # an input-audio item has one content part

Send = Callable[[dict], Awaitable[None]]


# ---------------------------------------------------------------------------------------------
# Audio


class StreamResampler:
    """A rational-ratio polyphase FIR resampler that keeps its state between calls.

    Why not resample each append on its own: every call would start and end its filter on
    silence, so each append edge would carry a small step (a click at 10 Hz for 100 ms
    appends) that the detector and Whisper hear. Here the input history the filter needs
    (``taps`` samples) is kept, so cutting the stream into pieces of any length gives the
    same samples as resampling it whole.

    The filter is a Kaiser-windowed sinc at 90 % of the lower Nyquist frequency (7.2 kHz when
    going down to 16 kHz), about 80 dB down in the stop band; its delay is compensated (output
    sample ``n`` is the input at time ``n / rate_out``), so stream times stay those of the
    input. The last few input samples (half the filter) come out with the next call.
    """

    def __init__(self, rate_in: int, rate_out: int = SAMPLE_RATE, attenuation_db: float = 80.0) -> None:
        if rate_in <= 0 or rate_out <= 0:
            raise ValueError("sample rates must be positive")
        self.rate_in, self.rate_out = rate_in, rate_out
        g = math.gcd(rate_in, rate_out)
        self.up, self.down = rate_out // g, rate_in // g
        self.identity = self.up == self.down
        # Enough taps per phase for a ~1 kHz transition band at the input rate (more when decimating).
        self.taps = 2 * math.ceil(32 * max(1.0, rate_in / rate_out))
        length = self.taps * self.up - 1  # odd, so the centre (the delay) is a whole sample
        self._centre = (length - 1) // 2
        cutoff = 0.45 * min(rate_in, rate_out) / (rate_in * self.up)  # cycles per upsampled sample
        beta = 0.1102 * (attenuation_db - 8.7)
        n = np.arange(length) - self._centre
        prototype = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(length, beta)
        prototype *= self.up / prototype.sum()  # unity gain at DC after zero-stuffing by ``up``
        h = np.concatenate([prototype, [0.0]])
        self._phases = h.reshape(self.taps, self.up).T.copy()  # [phase, j] = h[phase + j * up]
        self._history = np.zeros(self.taps - 1)  # input before the stream: silence
        self._history_start = -(self.taps - 1)  # input index of _history[0]
        self._next = 0  # index of the next output sample

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Resample the next piece of the stream (int16 in, int16 out)."""
        if self.identity:
            return samples.astype(np.int16, copy=False)
        buffer = np.concatenate([self._history, samples.astype(np.float64)])
        available = self._history_start + buffer.size  # input samples received so far
        # Output n needs input up to floor((n * down + centre) / up).
        end = (available * self.up - 1 - self._centre) // self.down + 1
        out = np.empty(max(0, end - self._next), np.float64)
        lags = np.arange(self.taps)
        for lo in range(0, out.size, 8192):  # bounded temporaries for a long append
            n = np.arange(self._next + lo, self._next + min(lo + 8192, out.size))
            m = n * self.down + self._centre
            newest = m // self.up - self._history_start
            out[lo : lo + n.size] = np.einsum("ij,ij->i", buffer[newest[:, None] - lags], self._phases[m % self.up])
        self._next = max(self._next, end)
        keep_from = (self._next * self.down + self._centre) // self.up - self.taps + 1
        self._history = buffer[keep_from - self._history_start :]
        self._history_start = keep_from
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


@dataclass(frozen=True)
class AudioFormat:
    """The session's input format: ``pcm16`` (s16le mono at ``rate``), ``g711_ulaw`` or ``g711_alaw`` (8 kHz)."""

    encoding: str = "pcm16"
    rate: int = DEFAULT_RATE

    @property
    def bytes_per_second(self) -> int:
        return self.rate * (2 if self.encoding == "pcm16" else 1)

    def decode(self, data: bytes) -> np.ndarray:
        if self.encoding == "pcm16":
            if len(data) % 2:
                raise ClientError(
                    "invalid_value", "pcm16 audio must hold whole 16-bit samples (an even number of bytes)", "audio"
                )
            return np.frombuffer(data, dtype="<i2")
        table = ULAW_TO_PCM16 if self.encoding == "g711_ulaw" else ALAW_TO_PCM16
        return table[np.frombuffer(data, dtype=np.uint8)]

    def beta(self) -> str:
        return self.encoding

    def ga(self) -> dict:
        if self.encoding == "pcm16":
            return {"type": "audio/pcm", "rate": self.rate}
        return {"type": "audio/pcmu" if self.encoding == "g711_ulaw" else "audio/pcma"}


# ---------------------------------------------------------------------------------------------
# Session configuration


class ClientError(Exception):
    """A client event that cannot be used: answered with an ``invalid_request_error`` event."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


SERVER_VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}
SEMANTIC_VAD = {"type": "semantic_vad", "eagerness": "auto"}
_LANGUAGE = re.compile(r"[a-z]{2,3}")


@dataclass
class TranscriptionConfig:
    """What a client may set (``transcription_session.update`` or ``session.update``), and how it
    is shown back in both of OpenAI's shapes (the beta one and the GA one)."""

    format: AudioFormat = field(default_factory=AudioFormat)
    model: str = DEFAULT_MODEL
    language: str | None = None
    prompt: str = ""  # accepted and shown back; not used (docs/api.md)
    turn_detection: dict | None = field(default_factory=lambda: dict(SERVER_VAD))
    noise_reduction: dict | None = None  # accepted and shown back; not applied
    include: list[str] | None = None

    @property
    def server_vad(self) -> bool:
        return self.turn_detection is not None

    def _transcription(self) -> dict:
        return {"model": self.model, "language": self.language, "prompt": self.prompt}

    def beta(self, session_id: str) -> dict:
        return {
            "id": session_id,
            "object": "realtime.transcription_session",
            "modalities": ["text"],
            "input_audio_format": self.format.beta(),
            "input_audio_transcription": self._transcription(),
            "turn_detection": copy.deepcopy(self.turn_detection),
            "input_audio_noise_reduction": copy.deepcopy(self.noise_reduction),
            "include": list(self.include) if self.include is not None else None,
        }

    def ga(self, session_id: str) -> dict:
        return {
            "object": "realtime.session",
            "type": "transcription",
            "id": session_id,
            "audio": {
                "input": {
                    "format": self.format.ga(),
                    "transcription": self._transcription(),
                    "noise_reduction": copy.deepcopy(self.noise_reduction),
                    "turn_detection": copy.deepcopy(self.turn_detection),
                }
            },
            "include": list(self.include) if self.include is not None else None,
        }

    # -- updates: validated into a copy, so a refused update changes nothing ------------------

    def updated_beta(self, session: dict, where: str = "session") -> TranscriptionConfig:
        """``transcription_session.update`` (fields of the beta transcription session)."""
        new = copy.deepcopy(self)
        if "input_audio_format" in session:
            value = session["input_audio_format"]
            formats = {"pcm16": AudioFormat(), "g711_ulaw": AudioFormat("g711_ulaw", G711_RATE)}
            formats["g711_alaw"] = AudioFormat("g711_alaw", G711_RATE)
            if value not in formats:
                raise ClientError(
                    "invalid_value",
                    f"Invalid value: {_shown(value)}. Supported values are: 'pcm16', 'g711_ulaw' and 'g711_alaw'.",
                    f"{where}.input_audio_format",
                )
            new.format = formats[value]
        if "input_audio_transcription" in session:
            new._set_transcription(session["input_audio_transcription"], f"{where}.input_audio_transcription")
        if "turn_detection" in session:
            new.turn_detection = _turn_detection(session["turn_detection"], f"{where}.turn_detection")
        if "input_audio_noise_reduction" in session:
            new.noise_reduction = _noise_reduction(
                session["input_audio_noise_reduction"], f"{where}.input_audio_noise_reduction"
            )
        if "include" in session:
            new.include = _include(session["include"], f"{where}.include")
        return new

    def updated_ga(self, session: dict) -> TranscriptionConfig:
        """``session.update`` with a transcription session (GA: ``audio.input.*``). Beta field
        names at the top level are taken too, for clients that mix the two."""
        kind = session.get("type", "transcription")
        if kind != "transcription":
            raise ClientError(
                "invalid_value",
                f"Invalid value: {_shown(kind)}. This endpoint serves transcription sessions only: "
                "'session.type' must be 'transcription'.",
                "session.type",
            )
        new = self.updated_beta(session)
        audio = session.get("audio")
        if audio is None:
            return new
        _expect(audio, dict, "session.audio")
        audio_input = audio.get("input")
        if audio_input is None:
            return new
        _expect(audio_input, dict, "session.audio.input")
        if "format" in audio_input:
            new.format = _ga_format(audio_input["format"])
        if "transcription" in audio_input:
            new._set_transcription(audio_input["transcription"], "session.audio.input.transcription")
        if "turn_detection" in audio_input:
            new.turn_detection = _turn_detection(audio_input["turn_detection"], "session.audio.input.turn_detection")
        if "noise_reduction" in audio_input:
            new.noise_reduction = _noise_reduction(
                audio_input["noise_reduction"], "session.audio.input.noise_reduction"
            )
        return new

    def _set_transcription(self, value: object, where: str) -> None:
        if value is None:  # OpenAI: transcription off. Here transcribing is the point: back to the defaults.
            self.model, self.language, self.prompt = DEFAULT_MODEL, None, ""
            return
        _expect(value, dict, where)
        assert isinstance(value, dict)
        if "model" in value:
            model = value["model"]
            if model is not None and (not isinstance(model, str) or len(model) > 128):
                raise ClientError("invalid_value", "model must be a string of at most 128 characters", f"{where}.model")
            self.model = model or DEFAULT_MODEL
        if "language" in value:
            self.language = _language(value["language"], f"{where}.language")
        if "prompt" in value:
            prompt = value["prompt"]
            if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS):
                raise ClientError(
                    "invalid_value",
                    f"prompt must be a string of at most {MAX_PROMPT_CHARS} characters",
                    f"{where}.prompt",
                )
            self.prompt = prompt or ""


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _expect(value: object, kind: type, where: str) -> None:
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        name = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(kind, kind.__name__)
        raise ClientError("invalid_type", f"Invalid type for '{where}': expected {name}.", where)


def _language(value: object, where: str) -> str | None:
    """ISO-639-1 code (``en``); a region suffix (``en-US``) is dropped, since Whisper knows languages only."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    _expect(value, str, where)
    assert isinstance(value, str)
    code = re.split(r"[-_]", value.strip().lower(), maxsplit=1)[0]
    if not _LANGUAGE.fullmatch(code):
        raise ClientError("invalid_value", f"Invalid language {_shown(value)}: use an ISO-639-1 code like 'en'.", where)
    return code


def _turn_detection(value: object, where: str) -> dict | None:
    if value is None:
        return None
    _expect(value, dict, where)
    assert isinstance(value, dict)
    kind = value.get("type") or "server_vad"
    if kind not in ("server_vad", "semantic_vad"):
        raise ClientError(
            "invalid_value",
            f"Invalid value: {_shown(kind)}. Supported values are: 'server_vad' and 'semantic_vad'.",
            f"{where}.type",
        )
    out = dict(SERVER_VAD if kind == "server_vad" else SEMANTIC_VAD)
    for key, raw in value.items():
        if key == "type" or raw is None:
            continue
        if key == "threshold":
            if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0.0 <= raw <= 1.0:
                raise ClientError("invalid_value", "threshold must be a number from 0 to 1", f"{where}.threshold")
        elif key in ("prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms"):
            if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
                raise ClientError("invalid_value", f"{key} must be a whole number ≥ 0", f"{where}.{key}")
        elif key in ("create_response", "interrupt_response"):
            _expect(raw, bool, f"{where}.{key}")
        elif key == "eagerness":
            if raw not in ("low", "medium", "high", "auto"):
                raise ClientError(
                    "invalid_value", "eagerness must be 'low', 'medium', 'high' or 'auto'", f"{where}.eagerness"
                )
        else:
            continue  # a field this version does not know: ignored, as it would not change anything here
        out[key] = raw
    return out


def _noise_reduction(value: object, where: str) -> dict | None:
    if value is None:
        return None
    _expect(value, dict, where)
    assert isinstance(value, dict)
    if value.get("type") not in (None, "near_field", "far_field"):
        raise ClientError("invalid_value", "noise reduction type must be 'near_field' or 'far_field'", f"{where}.type")
    return {k: v for k, v in value.items() if k in ("type", "strength")}


def _include(value: object, where: str) -> list[str] | None:
    if value is None:
        return None
    _expect(value, list, where)
    assert isinstance(value, list)
    if not all(isinstance(v, str) for v in value):
        raise ClientError("invalid_type", "include must be an array of strings", where)
    return list(value)


def _ga_format(value: object) -> AudioFormat:
    where = "session.audio.input.format"
    _expect(value, dict, where)
    assert isinstance(value, dict)
    kind = value.get("type", "audio/pcm")
    if kind == "audio/pcmu":
        return AudioFormat("g711_ulaw", G711_RATE)
    if kind == "audio/pcma":
        return AudioFormat("g711_alaw", G711_RATE)
    if kind != "audio/pcm":
        raise ClientError(
            "invalid_value",
            f"Invalid value: {_shown(kind)}. Supported values are: 'audio/pcm', 'audio/pcmu' and 'audio/pcma'.",
            f"{where}.type",
        )
    rate = value.get("rate", DEFAULT_RATE)
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
        raise ClientError(
            "invalid_value", f"rate must be a whole number of Hz from {MIN_RATE} to {MAX_RATE}", f"{where}.rate"
        )
    return AudioFormat("pcm16", rate)


# ---------------------------------------------------------------------------------------------
# The adapter


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _samples(at_s: float) -> int:
    return round(at_s * SAMPLE_RATE)


def _ms(sample: int) -> int:
    return round(sample * 1000 / SAMPLE_RATE)


@dataclass
class _Item:
    """The conversation item being filled: one utterance (or, without VAD, one commit)."""

    id: str
    start: int  # stream sample (16 kHz) where its audio begins
    announced: bool  # input_audio_buffer.speech_started was sent for it
    words: list[Word] = field(default_factory=list)
    sent: str = ""  # text sent in deltas so far (always a prefix of join_words(words))


class RealtimeTranscription:
    """One OpenAI Realtime transcription session over a :class:`StreamSession`.

    ``handle`` takes each client event (a text frame); events for the client go to ``send``
    (every one with an ``event_id``), from ``handle`` and from the session's task. Kept free of
    WebSocket details so that the mapping can be tested with a scripted backend.
    """

    def __init__(
        self,
        backend: SessionBackend,
        send: Send,
        *,
        beta: bool = False,
        limits: Limits | None = None,
        max_append_s: float = 8.0,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.send = send
        self.beta = beta  # the client asked for the beta protocol (OpenAI-Beta: realtime=v1)
        self.config = TranscriptionConfig()
        self.max_append_s = max_append_s
        self.session = StreamSession(
            backend,
            self._on_session_event,
            SessionOptions(),
            limits,
            PROTOCOL,
            on_error,
            utterance_events=True,
        )
        self.id = "sess_" + self.session.id
        self.resampler = StreamResampler(self.config.format.rate)
        self._fed = 0  # 16 kHz samples handed to the session
        self._buffer_from = 0  # where the input buffer (audio not yet in an item) begins
        self._drop_before = 0  # words before this sample were cleared by the client
        self._last_end = 0  # where the last item (or a clear) ended: a commit's item begins here
        self._item: _Item | None = None
        self._previous_item_id: str | None = None
        self._stopped_at: int | None = None  # the detector's speech.stopped for the open item

    @property
    def max_message_chars(self) -> int:
        """The longest text frame taken: an append of ``max_append_s`` of audio in base64, plus room."""
        return 4 * math.ceil(self.max_append_s * self.config.format.bytes_per_second / 3) + 8192

    async def start(self) -> None:
        """``session.created`` (or, for a beta client, ``transcription_session.created``) comes first."""
        if self.beta:
            await self._send("transcription_session.created", session=self.config.beta(self.id))
        else:
            await self._send("session.created", session=self.config.ga(self.id))
        await self.session.start()

    # -- client events --------------------------------------------------------------------------

    async def handle(self, text: str) -> None:
        """One client event. An unusable one gets an ``error`` event; the session goes on.
        Raises :class:`TooFarBehindError` when the backends cannot keep up (the caller closes)."""
        event_id = None
        try:
            try:
                event = json.loads(text)
            except ValueError:
                raise ClientError("invalid_json", "The client event is not valid JSON.") from None
            if not isinstance(event, dict):
                raise ClientError("invalid_json", "A client event must be a JSON object with a 'type'.")
            if isinstance(event.get("event_id"), str):
                event_id = event["event_id"][:128]
            kind = event.get("type")
            handler = self._handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                if isinstance(kind, str) and kind in _CONVERSATION_EVENTS:
                    raise ClientError("invalid_value", f"'{kind}' is not supported in a transcription session.", "type")
                if kind is None:
                    raise ClientError("missing_required_parameter", "Missing required parameter: 'type'.", "type")
                raise ClientError(
                    "invalid_value",
                    f"Invalid value: {_shown(kind)}. Supported values are: " + ", ".join(sorted(self._handlers)) + ".",
                    "type",
                )
            await handler(self, event)
        except ClientError as exc:
            await self._error("invalid_request_error", exc.code, exc.message, exc.param, event_id)

    async def _append(self, event: dict) -> None:
        audio = event.get("audio")
        if audio is None:
            raise ClientError("missing_required_parameter", "Missing required parameter: 'audio'.", "audio")
        _expect(audio, str, "audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise ClientError(
                "invalid_value", "Invalid 'audio': expected base64-encoded audio bytes.", "audio"
            ) from None
        if len(data) > self.max_append_s * self.config.format.bytes_per_second:
            raise ClientError(
                "invalid_value",
                f"One append may carry at most {self.max_append_s:g} s of audio; send smaller pieces.",
                "audio",
            )
        samples = self.config.format.decode(data)
        if samples.size == 0:
            return
        out = self.resampler.process(samples)
        metrics.SESSION_AUDIO_SECONDS.inc(samples.size / self.config.format.rate)
        self._fed += out.size
        self.session.feed(out)

    async def _commit(self, event: dict) -> None:
        buffered = self._fed - self._buffer_from
        if buffered < MIN_COMMIT_MS * SAMPLE_RATE // 1000:
            raise ClientError(
                "input_audio_buffer_commit_empty",
                f"Error committing input audio buffer: buffer too small. Expected at least {MIN_COMMIT_MS}ms "
                f"of audio, but buffer only has {buffered * 1000 / SAMPLE_RATE:.2f}ms of audio.",
            )
        self._buffer_from = self._fed
        self.session.flush()  # its utterance.ended (reason "flush") closes the item

    async def _clear(self, event: dict) -> None:
        self._buffer_from = self._drop_before = self._last_end = self._fed
        if self._item is not None and not self._item.announced:
            self._item = None  # nothing of it was sent: it never was
        await self._send("input_audio_buffer.cleared")

    async def _update_beta(self, event: dict) -> None:
        await self._apply(self.config.updated_beta(self._session_field(event)), "transcription_session.updated")

    async def _update_ga(self, event: dict) -> None:
        await self._apply(self.config.updated_ga(self._session_field(event)), "session.updated")

    @staticmethod
    def _session_field(event: dict) -> dict:
        session = event.get("session")
        if session is None:
            raise ClientError("missing_required_parameter", "Missing required parameter: 'session'.", "session")
        _expect(session, dict, "session")
        return session

    async def _apply(self, config: TranscriptionConfig, answer: str) -> None:
        if config.format != self.config.format:
            # A new rate starts a new filter; what the old one still held (a millisecond) is dropped.
            self.resampler = StreamResampler(config.format.rate)
        self.config = config
        self.session.options.language = config.language  # read at every decode
        view = config.beta(self.id) if answer.startswith("transcription_session") else config.ga(self.id)
        await self._send(answer, session=view)

    _handlers: dict[str, Callable[[RealtimeTranscription, dict], Awaitable[None]]] = {
        "input_audio_buffer.append": _append,
        "input_audio_buffer.commit": _commit,
        "input_audio_buffer.clear": _clear,
        "transcription_session.update": _update_beta,
        "session.update": _update_ga,
    }

    # -- session events -------------------------------------------------------------------------

    async def _on_session_event(self, event: dict) -> None:
        kind = event["type"]
        if kind == "speech.started":
            self._stopped_at = None
            if self.config.server_vad and self._item is None:
                await self._open(_samples(event["at_s"]))
        elif kind == "speech.stopped":
            self._stopped_at = _samples(event["at_s"])
        elif kind == "transcript.committed":
            await self._words(event["words"])
        elif kind == "utterance.ended":
            await self._utterance_ended(event["reason"], int(event["end_sample"]))
        elif kind == "error":
            await self._error("server_error", event.get("code"), event.get("message", "backend error"))
        # session.started, transcript.partial, session.lag and session.ended have no OpenAI counterpart.

    async def _open(self, start: int) -> _Item:
        announced = self.config.server_vad
        self._item = _Item(_id("item"), max(start, 0), announced)
        if announced:
            await self._send(
                "input_audio_buffer.speech_started", audio_start_ms=_ms(self._item.start), item_id=self._item.id
            )
        return self._item

    async def _words(self, raw: list[dict]) -> None:
        words = [Word(w["start"], w["end"], w["text"]) for w in raw]
        words = [w for w in words if _samples(w.mid) >= self._drop_before]
        if not words:
            return
        item = self._item or await self._open(_samples(words[0].start) if self.config.server_vad else self._last_end)
        item.words += words
        if self.config.server_vad:
            await self._send_delta(item)

    async def _send_delta(self, item: _Item) -> None:
        text = join_words(item.words)
        delta = text[len(item.sent) :] if text.startswith(item.sent) else text  # join_words only appends
        if delta:
            item.sent = text
            await self._send(
                "conversation.item.input_audio_transcription.delta",
                item_id=item.id,
                content_index=ITEM_CONTENT_INDEX,
                delta=delta,
            )

    async def _utterance_ended(self, reason: str, end: int) -> None:
        if reason == "flush":  # the client committed: an item even without words (OpenAI's too)
            item = self._item or _Item(_id("item"), min(self._last_end, end), False)
            if self._item is not None or not self.config.server_vad:
                await self._close(item, end)
        elif self._item is not None and (reason == "finish" or (reason == "silence" and self.config.server_vad)):
            await self._close(self._item, end)

    async def _close(self, item: _Item, end: int) -> None:
        self._item = None
        if item.announced:
            stopped = self._stopped_at if self._stopped_at is not None and self._stopped_at >= item.start else end
            await self._send("input_audio_buffer.speech_stopped", audio_end_ms=_ms(stopped), item_id=item.id)
        self._stopped_at = None
        previous, self._previous_item_id = self._previous_item_id, item.id
        self._buffer_from = max(self._buffer_from, end)
        self._last_end = max(self._last_end, end)
        await self._send("input_audio_buffer.committed", previous_item_id=previous, item_id=item.id)
        await self._send(
            "conversation.item.created",
            previous_item_id=previous,
            item={
                "id": item.id,
                "object": "realtime.item",
                "type": "message",
                "status": "completed",
                "role": "user",
                "content": [{"type": "input_audio", "transcript": None}],
            },
        )
        await self._send_delta(item)  # without VAD, the words were held until now
        await self._send(
            "conversation.item.input_audio_transcription.completed",
            item_id=item.id,
            content_index=ITEM_CONTENT_INDEX,
            transcript=join_words(item.words),
            usage={"type": "duration", "seconds": round(max(0, end - item.start) / SAMPLE_RATE, 3)},
        )

    # -- output -----------------------------------------------------------------------------

    async def _send(self, kind: str, **fields: object) -> None:
        await self.send({"type": kind, "event_id": _id("event"), **fields})

    async def _error(
        self, kind: str, code: str | None, message: str, param: str | None = None, event_id: str | None = None
    ) -> None:
        error = {"type": kind, "code": code, "message": message, "param": param, "event_id": event_id}
        await self._send("error", error=error)


# Client events of OpenAI's conversation sessions, which a transcription session does not take.
_CONVERSATION_EVENTS = frozenset(
    {
        "response.create",
        "response.cancel",
        "conversation.item.create",
        "conversation.item.delete",
        "conversation.item.retrieve",
        "conversation.item.truncate",
        "output_audio_buffer.clear",
    }
)


def error_event(kind: str, code: str, message: str, param: str | None = None) -> dict:
    """An OpenAI ``error`` event (for the endpoint, before or after a session exists)."""
    error = {"type": kind, "code": code, "message": message, "param": param, "event_id": None}
    return {"type": "error", "event_id": _id("event"), "error": error}


def _cap_event(message: str, retry_after_s: float) -> dict:
    return error_event("server_error", "session_cap", message)


def _key_event(code: str, message: str, retry_after_s: float | None) -> dict:
    """A refused API key or rate, typed as OpenAI types them (its SDKs key on ``error.type``)."""
    kind = "rate_limit_error" if retry_after_s is not None else "invalid_request_error"
    return error_event(kind, code, message)


# ---------------------------------------------------------------------------------------------
# The endpoint


@router.websocket("/v1/realtime")
async def realtime(
    websocket: WebSocket,
    intent: str | None = Query(None, max_length=64),
    model: str | None = Query(None, max_length=128),  # taken, as OpenAI's clients may send it; not used
) -> None:
    """OpenAI Realtime transcription (docs/api.md, "OpenAI Realtime transcription")."""
    app = websocket.app
    settings: SessionSettings = app.state.session_settings
    gate: SessionGate = app.state.session_gate
    if not await gate.admit(websocket, PROTOCOL, app.state.settings.allowed_origins, _cap_event, _key_event):
        return
    sender = EventSender(websocket, settings.max_queued_events)
    run = SessionRun(websocket, PROTOCOL, sender)
    try:
        if intent != "transcription":
            metrics.SESSIONS_REFUSED.labels("bad_request").inc()
            message = (
                f"intent={_shown(intent)} is not served here: this endpoint transcribes only. "
                "Connect with ?intent=transcription."
            )
            await sender.emit(error_event("invalid_request_error", "invalid_intent", message, "intent"))
            await end_connection(websocket, sender, CLOSE_POLICY, "only intent=transcription is served")
            return
        # Browser clients cannot set the header; they offer the subprotocol openai-beta.realtime-v1.
        beta = "realtime=v1" in websocket.headers.get("openai-beta", "").lower() or (
            "openai-beta.realtime-v1" in (websocket.scope.get("subprotocols") or [])
        )
        adapter = RealtimeTranscription(
            ProxyBackend(app.state.upstreams, settings.beam_size),
            sender.emit,
            beta=beta,
            limits=settings.limits,
            max_append_s=settings.max_frame_bytes / (2 * SAMPLE_RATE),  # as long as a native frame
            on_error=sender.on_session_error,
        )
        await run.serve(adapter.session, adapter.start, lambda: _receive(websocket, adapter, sender, settings))
    finally:
        await run.end()


async def _receive(
    websocket: WebSocket, adapter: RealtimeTranscription, sender: EventSender, settings: SessionSettings
) -> str:
    """Client events until the client closes; returns how the session ended. OpenAI's protocol
    has no "stop": a client that wants every transcript commits and waits for it before closing."""
    while True:
        try:
            message = await asyncio.wait_for(websocket.receive(), timeout=settings.idle_timeout_s)
        except TimeoutError:
            await sender.emit(
                error_event(
                    "invalid_request_error",
                    "idle_timeout",
                    f"no client event for {settings.idle_timeout_s:g} s; the session is closed",
                )
            )
            if not await finish_unless_gone(websocket, adapter.session):  # the open item is completed first
                return "disconnected"
            await end_connection(websocket, sender, CLOSE_GOING_AWAY, "idle")
            return "finished"
        if message["type"] == "websocket.disconnect":
            return "disconnected"
        text = message.get("text")
        if text is None:
            await sender.emit(
                error_event(
                    "invalid_request_error",
                    "invalid_event",
                    "Send client events as JSON text frames; audio goes base64-encoded in input_audio_buffer.append.",
                )
            )
            continue
        if len(text) > adapter.max_message_chars:
            await sender.emit(
                error_event(
                    "invalid_request_error",
                    "event_too_large",
                    f"A client event may be at most {adapter.max_message_chars} characters "
                    f"({adapter.max_append_s:g} s of audio per append); this one was dropped.",
                )
            )
            continue
        try:
            await adapter.handle(text)
        except TooFarBehindError as exc:
            await sender.emit(error_event("server_error", "too_far_behind", str(exc)))
            await end_connection(websocket, sender, CLOSE_TRY_AGAIN, "too far behind; reconnect later")
            return "too_far_behind"
