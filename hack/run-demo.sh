#!/usr/bin/env bash
# `make run`: start the local stack, then transcribe the microphone if this machine has one,
# otherwise a sample of real speech (30 s of Asterisk and LibriVox prompts) with its reference.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
trap '$PY -m services.local_stack down >/dev/null' EXIT
url=$($PY -m services.local_stack up | tail -n 1)
if $PY -c 'import sounddevice as sd, sys; sys.exit(0 if sd.query_devices(kind="input") else 1)' 2>/dev/null; then
  echo "Listening on the default microphone; Ctrl-C to stop." >&2
  .venv/bin/stt-client --url "$url"
else
  sample=$($PY -m corpus --long 30 | tail -n 1)
  echo "No microphone found; transcribing the sample $sample" >&2
  echo "Reference: $(cat "${sample%.wav}.txt")" >&2
  .venv/bin/stt-client --url "$url" --file "$sample"
fi
