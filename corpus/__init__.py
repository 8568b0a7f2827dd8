"""Real audio for tests, benchmarks and demos, fetched from Debian packages at run time.

Nothing here is committed: ``fetch()`` downloads pinned Debian packages with apt's own client
(``apt-get download``), checks each file's sha256, unpacks them into a cache outside git,
and converts what it needs to 16 kHz mono WAV.

- speech: Asterisk's studio prompts (one US-English speaker, with transcripts) and five
  LibriVox sentences read by a second speaker (pocketsphinx test data);
- non-speech: music on hold, desktop sounds, real keyboard clicks, and generated noise,
  tones and silence — the set a speech detector must say "no" to.
"""

from corpus.fetch import Clip, fetch, long_recording, nonspeech_clips, speech_clips

__all__ = ["Clip", "fetch", "long_recording", "nonspeech_clips", "speech_clips"]
