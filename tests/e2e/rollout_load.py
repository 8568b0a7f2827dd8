"""Steady load on the proxy from inside the cluster, for the rollout test (stdlib only).

It runs in a pod of the proxy's own image, so it reaches the proxy Service the way an app in
the cluster would (a new connection per request, spread by kube-proxy over the ready pods)
and survives the proxy's own rollout, which a ``kubectl port-forward`` (tied to one pod) would
not. Each worker asks ``/detect`` and then ``/transcribe`` for the same speech clip, like the
live client; a 429 or 503 with ``Retry-After`` is waited out and sent again (what clients are
told to do), and anything else that is not a 200 is a failure. It stops when ``/tmp/stop``
appears and prints one JSON line per request, then ``DONE``. Each line holds the request's
wall-clock span (``start``, ``end``, epoch seconds; the pod shares the node's clock), so the test
can check that requests were in flight through the whole rollout however slow the node is.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request

STOP = "/tmp/stop"
AUDIO = "/load/clip.wav"
RETRYABLE = (429, 503)


def post(url: str, body: bytes) -> tuple[int, bytes, float | None]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "audio/wav"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=170) as response:
            return response.status, response.read(), None
    except urllib.error.HTTPError as exc:
        retry = exc.headers.get("Retry-After")
        return exc.code, exc.read(), float(retry) if retry else None


def call(url: str, body: bytes) -> dict:
    """One request, retried while the answer says to retry later; never raises."""
    attempts, start = 0, time.time()

    def result(ok: bool, **fields: object) -> dict:
        span = {"start": round(start, 3), "end": round(time.time(), 3)}
        return {"path": url.rsplit("/", 1)[1], "ok": ok, "attempts": attempts, **span, **fields}

    while True:
        attempts += 1
        try:
            status, payload, retry_after = post(url, body)
        except Exception as exc:  # a connection refused or reset is exactly what must not happen
            return result(False, error=repr(exc))
        if status == 200:
            return result(True, text=json.loads(payload).get("text", ""))
        if status in RETRYABLE and retry_after is not None and attempts < 30:
            time.sleep(retry_after)
            continue
        return result(False, error=f"{status} {payload[:300]!r}")


def worker(base: str, body: bytes, lock: threading.Lock) -> None:
    while not os.path.exists(STOP):
        for path in ("/detect", "/transcribe?language=en"):
            result = call(base + path, body)
            with lock:
                print(json.dumps(result), flush=True)
        time.sleep(0.5)


def main() -> int:
    host, port = os.environ["STT_PROXY_SERVICE_HOST"], os.environ["STT_PROXY_SERVICE_PORT"]
    base = f"http://{host}:{port}"
    with open(AUDIO, "rb") as f:
        body = f.read()
    lock = threading.Lock()
    threads = [threading.Thread(target=worker, args=(base, body, lock)) for _ in range(int(sys.argv[1]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
