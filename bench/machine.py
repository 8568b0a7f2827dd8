"""What the bench ran on, recorded with its results: CPU model and vector extensions (they
decide which CTranslate2 compute types are fast: int8 wants AVX-512 VNNI or AVX-VNNI, bf16
wants AVX512_BF16 or AMX), core count, CTranslate2's view of the CPU and GPU, and the load
average when the run began (other work on the machine skews every timing)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

# Reported in this order when present. x86 names as in /proc/cpuinfo "flags"; ARM as in "Features".
VECTOR_EXTENSIONS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "neon",
    "asimd",
    "asimddp",
    "i8mm",
    "bf16",
    "sve",
    "sve2",
)


def parse_cpuinfo(text: str) -> tuple[str | None, set[str]]:
    """The CPU's model name and feature flags from /proc/cpuinfo text (the first processor's
    block: every core of a machine reports the same). x86 says "model name" and "flags";
    ARM says "Features", and "model name" only on some kernels."""
    model: str | None = None
    flags: set[str] | None = None
    for line in text.splitlines():
        if not line.strip():
            if model is not None and flags is not None:
                break  # the end of the first block with both answers
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "model name" and model is None and value:
            model = value
        elif key in ("flags", "features") and flags is None:
            flags = set(value.split())
    return model, flags or set()


def vector_extensions(flags: set[str]) -> list[str]:
    """The extensions of :data:`VECTOR_EXTENSIONS` present in ``flags``, in that order."""
    return [name for name in VECTOR_EXTENSIONS if name in flags]


def _ctranslate2() -> dict:
    try:
        import ctranslate2
    except ImportError as exc:
        return {"ctranslate2_version": None, "ctranslate2_error": str(exc)}
    facts: dict = {
        "ctranslate2_version": ctranslate2.__version__,
        "cpu_compute_types": sorted(ctranslate2.get_supported_compute_types("cpu")),
    }
    try:
        devices = ctranslate2.get_cuda_device_count()
    except Exception:  # a CPU-only build raises instead of answering 0
        devices = 0
    facts["cuda_devices"] = devices
    facts["cuda_available"] = devices > 0
    facts["cuda_compute_types"] = []
    if devices:
        try:
            facts["cuda_compute_types"] = sorted(ctranslate2.get_supported_compute_types("cuda"))
        except Exception as exc:  # e.g. a driver older than CTranslate2's CUDA runtime
            facts["cuda_available"] = False
            facts["cuda_error"] = str(exc)
    return facts


def describe(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """The machine, as a JSON-ready dict (see the module docstring)."""
    try:
        model, flags = parse_cpuinfo(cpuinfo.read_text())
    except OSError:  # not Linux
        model, flags = None, set()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu_model": model or platform.processor() or platform.machine(),
        "logical_cores": os.cpu_count(),
        "vector_extensions": vector_extensions(flags),
        **_ctranslate2(),
        "python": platform.python_version(),
        "python_implementation": sys.implementation.name,
        "load_average": load,  # 1, 5 and 15 minutes, when describe() was called
    }


if __name__ == "__main__":
    import json

    print(json.dumps(describe(), indent=2))
