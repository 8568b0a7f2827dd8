"""G.711, the telephone network's audio codec (ITU-T G.711 µ-law and A-law), in one place.

Two roles need it: the proxy decodes it (OpenAI Realtime clients send ``g711_ulaw`` and
``g711_alaw``, as telephony bridges carry them), and the dev set encodes and decodes µ-law to
make its telephone-band condition (``corpus/augment.py``). Both use these tables, so the audio
the bench tunes on and the audio a phone line sends through the proxy are decoded alike.

The tables follow the ITU reference code (``g711.c``): µ-law on the 14-bit scale with bias 0x84
and clip 32635; A-law with its even bits inverted on the wire and sign bit 1 meaning positive.
They equal Python's ``audioop`` and FFmpeg's decoders byte for byte (tests/services/test_g711.py).
"""

from __future__ import annotations

import numpy as np

_BIAS = 0x84
_CLIP = 32635


def _ulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    magnitude = ((((u & 0x0F) << 3) + _BIAS) << exponent) - _BIAS
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = (a & 0x0F) << 4
    magnitude = np.where(exponent == 0, mantissa + 8, (mantissa + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


# Code byte -> 16-bit sample: decoding is one table lookup (``ULAW_TO_PCM16[codes]``).
ULAW_TO_PCM16 = _ulaw_table()
ALAW_TO_PCM16 = _alaw_table()


def ulaw_encode(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] → µ-law code bytes (uint8), as a phone line carries them."""
    pcm = np.clip(np.round(np.asarray(samples, np.float64) * 32768.0), -32768, 32767).astype(np.int32)
    sign = np.where(pcm < 0, 0x80, 0x00)
    magnitude = np.minimum(np.abs(pcm), _CLIP) + _BIAS
    exponent = np.clip(np.floor(np.log2(magnitude)).astype(np.int32) - 7, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def ulaw_decode(codes: np.ndarray) -> np.ndarray:
    """µ-law code bytes → float32 samples in [-1, 1]."""
    return (ULAW_TO_PCM16[np.asarray(codes, np.uint8)] / 32768.0).astype(np.float32)
