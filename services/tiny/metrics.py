"""Metrics of the speech detector service."""

from prometheus_client import Counter, Histogram

from core.vocabulary import DETECTORS

DECISIONS = Counter(
    "stt_detector_decisions_total", "Detection answers by outcome (speech, no_speech, error)", ["detector", "outcome"]
)
DETECT_SECONDS = Histogram(
    "stt_detector_processing_seconds",
    "Model time per detection (decoding excluded)",
    ["detector"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
AUDIO_SECONDS = Counter("stt_detector_audio_seconds_total", "Seconds of audio examined", ["detector"])

# Create the known series at 0 so that rate()/increase() also see the first event.
for _detector in DETECTORS:
    for _outcome in ("speech", "no_speech", "error"):
        DECISIONS.labels(_detector, _outcome)
