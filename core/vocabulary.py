"""The names and numbers every role agrees on, written once.

The CRD (``charts/stt/crds``), the chart's values schema and the services' settings are tested
against these (``tests/k8s/test_vocabulary.py``), so a rename here that misses one of them fails
a test instead of a rollout.
"""

from __future__ import annotations

from enum import StrEnum

SAMPLE_RATE = 16_000  # Hz: what Whisper and Silero take; every chunk on the wire is 16 kHz mono
WHISPER_WINDOW_S = 30.0  # Whisper's encoder sees at most 30 s; longer audio must be cut
# The widest beam search a caller may ask of the base service for one chunk (``beam_size`` on
# /transcribe-chunk, a session's ``beam_size``): faster-whisper's own default, and a bound on
# what one request can make a decode cost.
MAX_BEAM_SIZE = 5
# What a streaming session decodes its windows with unless it asks otherwise: a window hears a few
# seconds, where a beam search misses fewer words than greedy decoding (docs/client.md, "Beam
# search for session windows"). Whole files and plain chunks stay greedy, as offline faster-whisper.
SESSION_BEAM_SIZE = 5


class RoutingMode(StrEnum):
    """``spec.routing`` of the SttConfig, ``/gpu-toggle``'s argument, the proxy's mode."""

    CPU = "cpu"
    GPU = "gpu"
    AUTO = "auto"  # the GPU while one is ready, else the CPU: the GPU autoscaler's mode


ROUTING_MODES: tuple[str, ...] = tuple(m.value for m in RoutingMode)

# Transcriber backends: one Deployment each, the proxy routes between them.
CPU, GPU = "cpu", "gpu"
BACKENDS: tuple[str, ...] = (GPU, CPU)

# Speech detectors the detector service can load (``spec.detector``, ``STT_DETECTOR``).
DETECTORS: tuple[str, ...] = ("silero", "whisper-tiny")
DEFAULT_DETECTOR = "silero"

# The SttConfig custom resource.
GROUP = "stt.platform.io"
VERSION = "v1alpha1"
KIND = "SttConfig"
PLURAL = "sttconfigs"


def routes_to_gpu(mode: RoutingMode | str) -> bool:
    """Whether the mode may send work to the GPU side: ``gpu`` and ``auto``. GPU pods are wanted
    (``spec.gpuReplicas``, the GPU autoscaler) only then; under ``cpu`` routing they idle."""
    return RoutingMode(mode) is not RoutingMode.CPU


def serving_backend(mode: RoutingMode | str, cpu_ready: bool, gpu_ready: bool) -> str | None:
    """The backend that answers now: the one rule the proxy routes by and the operator reports
    as ``status.activeBackend``. A ready GPU serves under ``gpu``/``auto`` routing, and under
    ``cpu`` routing only while no CPU pod is ready (fallback); None: nothing is ready."""
    if gpu_ready and (routes_to_gpu(mode) or not cpu_ready):
        return GPU
    if cpu_ready:
        return CPU
    return None
