"""A backend that answers at once, for measuring the proxy alone (``bench.sessions``).

``/detect`` says "speech"; ``/transcribe-chunk`` returns two words per second of the audio it
got, at fixed places, so a session's commit policy agrees, commits and trims as on real speech.
Never used by the services or the tests: it exists so a benchmark can take the model out.
"""

from __future__ import annotations

from fastapi import FastAPI, Request

app = FastAPI(title="stt-bench-stub")
SR = 16_000


@app.get("/readyz")
async def readyz() -> dict:
    return {"status": "ready"}


@app.post("/detect")
async def detect(request: Request) -> dict:
    await request.body()
    return {"speech": True, "probability": 0.99}


@app.post("/transcribe-chunk")
async def transcribe(request: Request) -> dict:
    seconds = len(await request.body()) / 2 / SR  # raw 16 kHz s16le from a session
    words = [
        {"start": t / 2, "end": t / 2 + 0.4, "word": f" w{t}", "probability": 0.9} for t in range(int(seconds * 2))
    ]
    segment = {"start": 0.0, "end": seconds, "text": "", "words": words, "no_speech_prob": 0.0, "avg_logprob": -0.1}
    return {"text": "", "language": "en", "segments": [segment] if words else []}
