"""Detector recall per category: chunking, counting, the goal and the report (fast: a stand-in
detector on synthetic clips; the real one runs in ``python -m bench.recall``)."""

from pathlib import Path

import numpy as np
import pytest

from bench import recall
from bench.goals import check
from bench.report import markdown
from corpus.fetch import Clip, write_wav
from services.tiny.detectors import Detection

SR = 16_000


class LoudnessDetector:
    """Calls a chunk speech when any 32 ms frame is louder than -40 dBFS."""

    threshold = 0.5
    min_speech_ms = 250

    def frame_probabilities(self, samples: np.ndarray) -> np.ndarray:
        frames = np.pad(samples, (0, (-samples.size) % 512)).reshape(-1, 512)
        level = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
        return np.clip((level + 50) / 20, 0, 1).astype(np.float32)  # -40 dBFS -> 0.5

    def detect(self, samples: np.ndarray) -> Detection:
        probs = self.frame_probabilities(samples)
        return Detection(bool((probs >= self.threshold).any()), float(probs.max()))


def _clip(tmp_path: Path, name: str, samples: np.ndarray, speech, category="read", held_out=False) -> Clip:
    path = tmp_path / f"{name}.wav"
    write_wav(path, samples)
    return Clip(name, path, "", "speech", category=category, held_out=held_out, speech=tuple(speech))


def test_windows_are_the_clients_chunks() -> None:
    starts = [start for start, _ in recall.windows(np.zeros(int(7.5 * SR), np.float32))]
    assert starts == [0.0, 2.0, 4.0, 4.5]  # 3 s every 2 s, then the tail extended back to 3 s
    assert all(chunk.size == 3 * SR for _, chunk in recall.windows(np.zeros(int(7.5 * SR), np.float32)))


def test_speech_seconds_counts_only_the_part_inside_the_chunk() -> None:
    regions = [(0.5, 1.5), (2.5, 4.0), (6.0, 9.0)]
    assert recall.speech_seconds(regions, 0.0, 3.0) == pytest.approx(1.5)
    assert recall.speech_seconds(regions, 3.0, 6.0) == pytest.approx(1.0)
    assert recall.speech_seconds([], 0.0, 3.0) == 0


def test_measure_clip_counts_chunks_with_over_a_second_of_speech(tmp_path: Path) -> None:
    x = np.zeros(9 * SR, np.float32)
    t = np.arange(3 * SR) / SR
    x[SR // 2 : 7 * SR // 2] = 0.1 * np.sin(2 * np.pi * 300 * t)  # loud speech at 0.5-3.5 s
    x[6 * SR : 8 * SR] = 0.001 * np.sin(2 * np.pi * 300 * t[: 2 * SR])  # -63 dBFS: the detector misses it
    clip = _clip(tmp_path, "c", x, [(0.5, 3.5), (6.0, 8.0)])
    m = recall.measure_clip(LoudnessDetector(), clip)
    rows = {r["start_s"]: r for r in m["rows"]}
    assert sorted(rows) == [0.0, 2.0, 6.0]  # chunk 4-7 s holds exactly 1 s: not counted
    assert rows[0.0]["speech"] and rows[2.0]["speech"] and not rows[6.0]["speech"]
    assert rows[6.0]["speech_dbfs"] == pytest.approx(-63.0, abs=0.5)
    assert rows[6.0]["max_prob"] == 0.0
    assert m["speech_s"] == pytest.approx(5.0, abs=0.02)
    assert m["lost_s"] == pytest.approx(2.0, abs=0.02)  # 6-8 s is in no chunk called speech


def test_run_reports_per_category_split_and_false_positives(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    loud = (0.1 * rng.standard_normal(6 * SR)).astype(np.float32)
    faint = (0.001 * rng.standard_normal(6 * SR)).astype(np.float32)
    clips = [
        _clip(tmp_path, "a", loud, [(0.0, 6.0)], "read", held_out=False),
        _clip(tmp_path, "b", loud, [(0.0, 6.0)], "read", held_out=True),
        _clip(tmp_path, "c", faint, [(0.0, 6.0)], "quiet", held_out=False),
    ]
    noise = Clip("hum", _clip(tmp_path, "hum", loud * 0.5, []).path, "", "music")
    result = recall.run(clips, [noise], detector=LoudnessDetector())
    cats = result["categories"]
    assert list(cats) == ["read", "quiet"]  # in the corpus's category order
    # 6 s clips: chunks at 0, 2 and (the tail, extended back) 3 s
    assert cats["read"]["recall"] == 1.0 and cats["read"]["dev"]["chunks"] == cats["read"]["held_out"]["chunks"] == 3
    assert cats["quiet"]["recall"] == 0.0 and len(cats["quiet"]["misses"]) == 3
    assert cats["quiet"]["speech_lost_s"] == pytest.approx(6.0, abs=0.05)
    assert result["nonspeech"] == result["nonspeech"] | {"chunks": 3, "false_positives": 3}
    assert result["nonspeech"]["false_positives_by_kind"] == {"music": 3}
    verdict = {v["goal"]: v for v in check({"detector_recall": result})}
    goal = verdict["default detector, dev set: recall >= 99 % in every category, no false positive"]
    assert not goal["pass"]
    assert "quiet 0.0%" in goal["value"] and "3 false positives" in goal["value"]
    text = markdown({"detector_recall": result})
    assert "## Speech detector recall by category (dev set)" in text
    assert "| quiet | 0.00% |" in text and "quiet/clean 0.0% of 3" in text
    assert "recall" in recall.table(result)


def test_recall_goal_passes_only_when_every_category_is_at_99_percent() -> None:
    def results(read: float, tel: float, fp: int) -> dict:
        cat = lambda r: {"recall": r, "chunks": 100}  # noqa: E731
        return {
            "detector_recall": {
                "categories": {"read": cat(read), "telephone": cat(tel)},
                "nonspeech": {"false_positives": fp, "chunks": 145},
            }
        }

    name = "default detector, dev set: recall >= 99 % in every category, no false positive"
    assert {v["goal"]: v["pass"] for v in check(results(1.0, 0.99, 0))}[name]
    assert not {v["goal"]: v["pass"] for v in check(results(1.0, 0.98, 0))}[name]
    assert not {v["goal"]: v["pass"] for v in check(results(1.0, 1.0, 1))}[name]
    missing = {v["goal"]: v for v in check({})}[name]
    assert not missing["pass"] and "not measured" in missing["value"]


def test_an_unavailable_dev_set_is_reported_not_measured() -> None:
    results = {"detector_recall": {"status": "not measured", "reason": "dev set unavailable: RuntimeError: offline"}}
    goal = next(v for v in check(results) if "dev set" in v["goal"])
    assert not goal["pass"] and "offline" in goal["value"]
    assert "Not measured: dev set unavailable" in markdown(results)
