"""What the bench listens to: a fixed, seeded selection from :mod:`corpus`.

Fixed so that two runs (or two machines) score the same audio: a seeded sample of the
Asterisk prompts, all LibriVox sentences, multi-minute files made by concatenating prompts
(the realistic case for a live stream: pauses, many sentences, prompts carried across
chunks), and the non-speech set cut into the 3 s chunks a client would send. The broader
dev set (read, continuous, spontaneous, telephone, noisy, quiet and other-language speech,
with a fixed held-out third) comes from :func:`recall_set`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.vocabulary import SAMPLE_RATE
from corpus import Clip, long_recording, nonspeech_clips, speech_clips
from corpus.fetch import Split

SELECTION_SEED = 2026


@dataclass(frozen=True)
class Item:
    """One file to transcribe and what is said in it."""

    name: str
    samples: np.ndarray
    text: str
    language: str = "en"
    category: str = ""  # the dev set's category (corpus.devset); "" for the IVR selection
    held_out: bool = False

    @property
    def seconds(self) -> float:
        return self.samples.size / SAMPLE_RATE


@dataclass(frozen=True)
class Sizes:
    """How much audio each measurement uses (``--quick`` shrinks every one)."""

    prompts: int  # Asterisk prompts in the WER set
    long_files: int  # multi-minute files in the WER set
    long_seconds: float  # length of each
    design_seconds: float  # audio for seed-vs-this (real time, one stream each)
    detector_speech_chunks: int
    whisper_tiny_speech: int  # speech chunks also scored by the dear detector
    whisper_tiny_nonspeech: int  # non-speech chunks also scored by it (spread over every kind)
    proxy_pairs: int
    step_seconds: float  # audio per stream in one capacity step
    max_streams: int
    first_streams: int = 1  # where the capacity search starts
    accuracy_seconds: float = 100.0  # dev-set audio per (category, split) in the accuracy passes


FULL = Sizes(40, 2, 120, 60, 120, 30, 60, 300, 30, 16)
QUICK = Sizes(8, 1, 45, 20, 30, 10, 24, 80, 10, 12, first_streams=2, accuracy_seconds=20.0)


def wer_set(sizes: Sizes) -> list[Item]:
    """Prompts + LibriVox sentences + long files: the same list for offline and streamed runs."""
    clips = speech_clips()
    prompts = sorted((c for c in clips if c.name.startswith("asterisk-")), key=lambda c: c.name)
    rng = np.random.default_rng(SELECTION_SEED)
    picked = sorted(rng.choice(len(prompts), size=min(sizes.prompts, len(prompts)), replace=False))
    items = [Item(prompts[i].name, prompts[i].samples(), prompts[i].text) for i in picked]
    items += [Item(c.name, c.samples(), c.text) for c in clips if c.name.startswith("librivox-")]
    items += long_files(sizes.long_files, sizes.long_seconds)
    return items


def long_files(count: int, seconds: float, first_seed: int = 0) -> list[Item]:
    out = []
    for seed in range(first_seed, first_seed + count):
        clip = long_recording(seconds, seed=seed)
        out.append(Item(clip.name, clip.samples(), clip.text))
    return out


def chunks_of(samples: np.ndarray, chunk_s: float = 3.0, min_tail_s: float = 1.0) -> list[np.ndarray]:
    """Consecutive ``chunk_s`` windows; a tail of at least ``min_tail_s`` is padded with silence
    to full length (as a client's last chunk of a short sound would be)."""
    size = int(chunk_s * SAMPLE_RATE)
    out = []
    for start in range(0, samples.size, size):
        piece = samples[start : start + size]
        if piece.size < size:
            if piece.size < min_tail_s * SAMPLE_RATE and start > 0:
                break
            piece = np.pad(piece, (0, size - piece.size))
        out.append(piece.astype(np.float32))
    return out


def detector_chunks(sizes: Sizes) -> tuple[list[np.ndarray], list[tuple[str, np.ndarray]]]:
    """Speech chunks (3 s windows of long recordings, every one holding more than 2 s of
    prompt audio) and every non-speech clip cut into 3 s chunks, labelled by category."""
    speech: list[np.ndarray] = []
    seed = 100
    while len(speech) < sizes.detector_speech_chunks:
        clip = long_recording(60, seed=seed)
        speech += chunks_of(clip.samples(), min_tail_s=3.0)
        seed += 1
    nonspeech = [(c.kind, chunk) for c in nonspeech_clips() for chunk in chunks_of(c.samples())]
    return speech[: sizes.detector_speech_chunks], nonspeech


def recall_set(split: Split = "all") -> list[Clip]:
    """The dev set (:mod:`corpus.devset`, fetched and built on first use) for detector recall per
    category: by default dev and held-out both, reported apart. Measuring the held-out part is
    what it is for; choosing settings by it is not."""
    from corpus.devset import dev_set

    return dev_set(split)


def stream_audio(index: int, seconds: float) -> np.ndarray:
    """Audio for the ``index``-th concurrent stream: different recordings and offsets, so that
    streams neither say the same thing nor pause at the same moments."""
    clip = long_recording(120, seed=200 + index % 6)
    samples = clip.samples()
    size = int(seconds * SAMPLE_RATE)
    start = (index * 7 * SAMPLE_RATE) % max(1, samples.size - size)
    return samples[start : start + size]
