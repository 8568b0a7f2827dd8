"""The detector's settings (``tiny``): one typed model, read once at start-up by ``services.tiny.app``.

The fields are the ``STT_*`` environment variables; ``docs/configuration.md``'s table is
generated from them (``hack/config_docs.py``).
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, field_validator, model_validator

from core.audio import AudioLimits
from core.vocabulary import DEFAULT_DETECTOR, DETECTORS, WHISPER_WINDOW_S
from services.common.limits import DEFAULT_MAX_CONCURRENCY
from services.common.memory import DEFAULT_BODY_BYTES_IN_FLIGHT
from services.common.settings import BODY_BUDGET_HELP, CONCURRENCY_HELP, CommaList, ModelCacheSettings, ServiceSettings


def _known_detectors(value: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [d for d in value if d not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {', '.join(unknown)}; choose from {', '.join(DETECTORS)}")
    return value


class DetectorSettings(ServiceSettings, ModelCacheSettings):
    """Everything the speech detector can be told (see the module docstring)."""

    max_concurrency: int = Field(
        default=DEFAULT_MAX_CONCURRENCY["tiny"],
        ge=1,
        description=CONCURRENCY_HELP
        + " (tiny: a detection takes milliseconds, so 64 waiting is already seconds of backlog)",
    )
    max_body_bytes_in_flight: int = Field(
        default=DEFAULT_BODY_BYTES_IN_FLIGHT["tiny"],
        ge=1,
        description=BODY_BUDGET_HELP,
    )
    detector: str = Field(
        default=DEFAULT_DETECTOR,
        description=f"detector used when a request names none ({', '.join(f'`{d}`' for d in DETECTORS)})",
    )
    detectors: CommaList = Field(
        default=DETECTORS,
        description="comma-separated detectors loaded at start-up (the default detector is always loaded); "
        "leave out `whisper-tiny` to save its memory and load time",
    )
    tiny_model: str = Field(
        default="tiny.en", description="model for `whisper-tiny`: known name, directory, or hub name"
    )
    vad_threshold: float = Field(
        default=0.5, ge=0.0, description="Silero frame probability that counts as speech (higher: fewer false alarms)"
    )
    vad_min_speech_ms: int = Field(
        default=250, ge=0, description='confident speech needed to say "speech" (longer: ignores clicks and coughs)'
    )
    max_chunk_seconds: float = Field(default=WHISPER_WINDOW_S, ge=1.0, description="longest chunk accepted")

    _check_detector = field_validator("detector")(lambda v: _known_detectors((v,))[0])
    _check_detectors = field_validator("detectors")(_known_detectors)

    @model_validator(mode="after")
    def _default_is_loaded(self) -> Self:
        """The default detector must be loaded, whatever ``STT_DETECTORS`` lists."""
        if self.detector not in self.detectors:
            object.__setattr__(self, "detectors", (*self.detectors, self.detector))
        return self

    @property
    def limits(self) -> AudioLimits:
        return AudioLimits(max_seconds=self.max_chunk_seconds)
