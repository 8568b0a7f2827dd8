"""What every role shares: the platform's vocabulary and its pure libraries.

The client, the services (detector, transcriber, proxy) and the operator all import from here;
this package imports none of them (``make lint`` checks it with import-linter), and needs only
NumPy and PyAV, so ``pip install '.[client]'`` stays small.

Modules: ``vocabulary`` (names and numbers every role agrees on: sample rate, Whisper's window,
routing modes, detectors, the SttConfig API, which backend serves), ``audio`` (decode untrusted
audio to 16 kHz mono, WAV encoding), ``errors`` (the one error shape), ``commit_policy`` (the
streaming commit policy: state in, words out), ``language_lock`` (one language per stream),
``subtitles``.
"""
