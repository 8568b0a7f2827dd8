"""Record the commit-policy fixtures in ``tests/client/data/`` (run by hand; tests only read them).

``python -m tests.client.record_policy_fixtures --url http://127.0.0.1:5001`` (a running local
stack: ``python -m services.local_stack up``; the corpus: ``python -m corpus``) writes:

- ``agreement-120s.json``: the 124 s recording ``corpus.long_recording(120, seed=0)`` (the
  stitcher's fixture recording, whose offline words are in ``offline-120s.json``) streamed
  step by step through :class:`~core.commit_policy.CommitPolicy` with its default
  settings: for every step the detector's verdict, the window the policy asked for and the
  real ``/transcribe`` answer for it (segments as the service returned them, times from the
  window's start);
- ``agreement-60s-window6.json``: the same for ``long_recording(60, seed=1)`` with
  LocalAgreement alone (:meth:`~core.commit_policy.PolicyConfig.local_agreement`) and the
  tightest bound (6 s), where words are forced out by the bound;
- ``thank-you.json``: real speech that says "Thank you." (Asterisk's ``priv-introsaved``),
  music, and "Thank you for your patience", streamed with the detector on; plus the service's
  answer for the music alone with the detector off, where Whisper writes "Thank you.";
- ``collapsed-timestamps.json``: Asterisk's ``conf-usermenu-162`` (a dev-set clip, 18.6 s of
  "Please press 1 to mute or unmute yourself, 4 or 6 ...") streamed with the default
  settings; one decode piles "2 3 4 5 5 5 5 5 5 5 5 5" onto one instant (``--only collapsed``);
- ``cjk-words.json``: how Whisper's own tokenizer (the base model's) splits Korean and Chinese
  sentences into word pieces, once with the sentence's language and once with a
  character-splitting language (Whisper does that to a Korean window decoded as Chinese or
  Japanese: " 시청" "해주" "셔서"). No Korean or Chinese speech is in the corpus, so these hold
  the real pieces with times spread over the text, not a service's answer.

The policy is deterministic given the answers, so the tests replay these and must ask for the
same windows; a change to the policy that moves windows needs a new recording (this script).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np

from core.audio import to_wav_bytes
from core.commit_policy import CommitPolicy, PolicyConfig, Segment
from corpus import long_recording, nonspeech_clips, speech_clips
from corpus.devset import dev_set
from corpus.fetch import read_wav

DATA = Path(__file__).parent / "data"
SR = 16_000


def slim(segments: list[dict]) -> list[dict]:
    """The fields the policy reads (the rest of the answer only makes the fixture bigger)."""
    keep = ("start", "end", "no_speech_prob", "avg_logprob")
    return [
        {
            **{k: seg[k] for k in keep if k in seg},
            "words": [{k: w[k] for k in ("start", "end", "word", "probability")} for w in seg.get("words", [])],
        }
        for seg in segments
    ]


def transcribe(client: httpx.Client, samples: np.ndarray, language: str | None) -> list[dict]:
    params = {"word_timestamps": "true", **({"language": language} if language else {})}
    response = client.post(
        "/transcribe", content=to_wav_bytes(samples), params=params, headers={"content-type": "audio/wav"}
    )
    response.raise_for_status()
    return slim(response.json()["segments"])


def detect(client: httpx.Client, samples: np.ndarray) -> bool:
    response = client.post("/detect", content=to_wav_bytes(samples), headers={"content-type": "audio/wav"})
    response.raise_for_status()
    return bool(response.json()["speech"])


def record_stream(
    client: httpx.Client, samples: np.ndarray, config: PolicyConfig, language: str | None = "en", detector: bool = True
) -> dict:
    """Steps of ``config.step_s`` (the last one shorter), as the client's AgreementDispatcher cuts them."""
    policy = CommitPolicy(config)
    step = round(config.step_s * SR)
    steps = []
    ends = list(range(step, samples.size, step))
    if samples.size - (ends[-1] if ends else 0) >= round(0.3 * SR) or not ends:
        ends.append(samples.size)
    for end in ends:
        speech = detect(client, samples[max(0, end - step) : end]) if detector else True
        policy.advance(end, speech)
        span = policy.window()
        record: dict = {"end": end, "speech": speech, "window": list(span) if span else None, "segments": None}
        if span:
            record["segments"] = transcribe(client, samples[span[0] : span[1]], language)
            policy.update(Segment.parse(record["segments"], span[0] / SR), span[0] / SR)
        steps.append(record)
    policy.finish()
    print(f"  {len(steps)} steps, {policy.windows} windows, {policy.forced_words} forced: {policy.text()[:100]}...")
    return {"config": asdict(config), "language": language, "steps": steps}


def clip(name: str):
    return next(c for c in speech_clips() + nonspeech_clips() if c.name == name)


def cjk_words() -> dict:
    """Real word pieces from the base model's tokenizer, with times spread over the characters."""
    import tokenizers
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import merge_punctuations

    from services.base.transcriber import APPEND_PUNCTUATIONS, PREPEND_PUNCTUATIONS
    from services.common.models import provision

    hf = tokenizers.Tokenizer.from_file(str(Path(provision("base")) / "tokenizer.json"))
    sentences = {
        "ko": " 안녕하세요. 오늘 회의를 시작하겠습니다. 시청해주셔서 감사합니다.",
        "zh": "我们今天讨论一下新的项目计划。谢谢大家。",
    }
    out: dict = {}
    for lang, text in sentences.items():
        for split_as in (lang, "zh" if lang == "ko" else "ja"):
            tok = Tokenizer(hf, True, task="transcribe", language=split_as)
            pieces, groups = tok.split_to_word_tokens([*tok.encode(text), tok.eot])
            # As the service's word alignment does: punctuation joins the word next to it.
            alignment = [{"word": p, "tokens": g} for p, g in zip(pieces, groups, strict=True)]
            merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
            pieces = [a["word"] for a in alignment if a["word"]]
            t, words = 0.4, []
            for p in pieces:
                length = 0.12 * len(p.strip()) + (0.15 if p.startswith(" ") else 0.0)
                words.append({"start": round(t, 2), "end": round(t + length, 2), "word": p, "probability": 0.9})
                t += length + 0.02
            out[f"{lang}-split-as-{split_as}"] = {"text": text.strip(), "words": words}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:5001")
    p.add_argument("--only-cjk", action="store_true", help="only cjk-words.json (needs the model, not the stack)")
    p.add_argument("--only", choices=["collapsed"], help="only this recording")
    args = p.parse_args(argv)
    client = httpx.Client(base_url=args.url, timeout=300)

    if args.only_cjk:
        (DATA / "cjk-words.json").write_text(json.dumps(cjk_words(), ensure_ascii=False, indent=1))
        return 0
    print("collapsed-timestamps.json")
    usermenu = next(c for c in dev_set("dev") if c.name == "asterisk-conf-usermenu-162")
    data = record_stream(client, usermenu.samples(), PolicyConfig())
    data["reference"] = usermenu.text
    (DATA / "collapsed-timestamps.json").write_text(json.dumps(data))
    if args.only:
        return 0
    print("agreement-120s.json")
    data = record_stream(client, read_wav(long_recording(120, seed=0).path), PolicyConfig())
    (DATA / "agreement-120s.json").write_text(json.dumps(data))

    print("agreement-60s-window6.json")
    rec = long_recording(60, seed=1)
    data = record_stream(client, read_wav(rec.path), PolicyConfig.local_agreement(max_window_s=6.0))
    data["reference"] = rec.text
    (DATA / "agreement-60s-window6.json").write_text(json.dumps(data))

    print("thank-you.json")
    music = clip("music-macroform-robot_dity-2").samples()[: 5 * SR]
    pause = np.zeros(SR // 2, np.float32)
    pieces = [clip("asterisk-priv-introsaved").samples(), pause, music, clip("asterisk-queue-thankyou").samples()]
    stream = np.concatenate([*pieces, np.zeros(3 * SR, np.float32)])
    data = record_stream(client, stream, PolicyConfig())
    data["music_alone"] = transcribe(client, music, "en")
    if not data["music_alone"] and (DATA / "thank-you.json").exists():
        # The service wrote "Thank you." for this music when the fixture was first recorded and
        # writes nothing now; that recorded answer (the hallucination the tests need) is kept.
        data["music_alone"] = json.loads((DATA / "thank-you.json").read_text())["music_alone"]
    data["said"] = "Thank you. Please hold while I attempt to connect you with your party. Thank you for your patience."
    (DATA / "thank-you.json").write_text(json.dumps(data))

    print("cjk-words.json")
    (DATA / "cjk-words.json").write_text(json.dumps(cjk_words(), ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
