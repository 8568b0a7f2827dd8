"""STT_COMPUTE_TYPE=auto: the start-up probe that times the supported compute types.

The choice is a pure function of candidates and a timing function (fake timings here); the
``slow`` test runs the real probe on the real base model (``make models``)."""

from __future__ import annotations

import time

import ctranslate2
import pytest

from services.base import transcriber
from services.base.app import Engine
from services.base.transcriber import DeviceInfo, auto_candidates, choose_compute_type


class Timer:
    """measure/release pair with fixed timings; remembers which models it "holds"."""

    def __init__(self, timings: dict[str, float | Exception]):
        self.timings = timings
        self.held: set[str] = set()
        self.most_held = 0
        self.measured: list[str] = []
        self.released: list[str] = []

    def measure(self, compute_type: str) -> float:
        self.measured.append(compute_type)
        self.held.add(compute_type)
        self.most_held = max(self.most_held, len(self.held))
        value = self.timings[compute_type]
        if isinstance(value, Exception):
            raise value
        return value

    def release(self, compute_type: str) -> None:
        assert compute_type in self.held, f"{compute_type} released twice or never measured"
        self.held.discard(compute_type)
        self.released.append(compute_type)


def test_the_fastest_type_wins_and_every_other_is_released() -> None:
    timer = Timer({"int8": 0.40, "float32": 0.30, "bfloat16": 0.35})
    probe = choose_compute_type(["int8", "float32", "bfloat16"], timer.measure, timer.release, margin=0.1)
    assert probe.chosen == "float32"
    assert probe.timings == {"int8": 0.40, "float32": 0.30, "bfloat16": 0.35}
    assert timer.measured == ["int8", "float32", "bfloat16"]
    assert sorted(timer.released) == ["bfloat16", "int8"]
    assert timer.held == {"float32"}  # only the winner is still loaded...
    assert timer.most_held == 2  # ...and never more than the best so far plus the one measured


def test_the_default_stays_unless_another_is_faster_by_more_than_the_margin() -> None:
    # float32 is 5 % faster: within a 10 % margin, so the default (first) keeps its place.
    timer = Timer({"int8": 0.42, "float32": 0.40})
    assert choose_compute_type(["int8", "float32"], timer.measure, timer.release, margin=0.1).chosen == "int8"
    assert timer.released == ["float32"]
    # 20 % faster is worth switching for.
    timer = Timer({"int8": 0.50, "float32": 0.40})
    assert choose_compute_type(["int8", "float32"], timer.measure, timer.release, margin=0.1).chosen == "float32"
    # Without a margin the strictly fastest wins.
    timer = Timer({"int8": 0.42, "float32": 0.40})
    assert choose_compute_type(["int8", "float32"], timer.measure, timer.release, margin=0.0).chosen == "float32"
    # The margin favours only the default: between two others the faster one wins outright.
    timer = Timer({"int8": 1.0, "float32": 0.42, "bfloat16": 0.40})
    probe = choose_compute_type(["int8", "float32", "bfloat16"], timer.measure, timer.release, margin=0.1)
    assert probe.chosen == "bfloat16"


def test_a_failing_candidate_is_skipped_and_recorded_but_a_failing_default_is_an_error() -> None:
    timer = Timer({"float16": 0.2, "bfloat16": RuntimeError("bf16 not supported here"), "int8": 0.1})
    probe = choose_compute_type(["float16", "bfloat16", "int8"], timer.measure, timer.release, margin=0.1)
    assert probe.chosen == "int8"
    assert probe.timings == {"float16": 0.2, "int8": 0.1}
    assert probe.errors == {"bfloat16": "RuntimeError: bf16 not supported here"}
    assert timer.held == {"int8"}

    timer = Timer({"float16": RuntimeError("out of memory"), "int8": 0.1})
    with pytest.raises(RuntimeError, match="out of memory"):
        choose_compute_type(["float16", "int8"], timer.measure, timer.release)
    with pytest.raises(ValueError):
        choose_compute_type([], timer.measure)


def test_candidates_are_the_supported_ones_default_first(monkeypatch) -> None:
    supported = {"cpu": {"float32", "int8_float32", "int8"}, "cuda": {"float16", "int8", "int8_float16", "float32"}}
    monkeypatch.setattr(transcriber.ctranslate2, "get_supported_compute_types", lambda device: supported[device])
    assert auto_candidates("cpu") == ["int8", "float32"]
    assert auto_candidates("cuda") == ["float16", "int8_float16", "int8"]
    supported["cpu"] |= {"bfloat16", "int8_bfloat16"}
    assert auto_candidates("cpu") == ["int8", "float32", "int8_bfloat16", "bfloat16"]

    def broken(device):
        raise RuntimeError("CUDA driver version is insufficient")

    monkeypatch.setattr(transcriber.ctranslate2, "get_supported_compute_types", broken)
    assert auto_candidates("cuda") == ["float16"]


class FakeModel:
    built: list[str] = []

    def __init__(self, path, device, compute_type, cpu_threads, num_workers=1):
        FakeModel.built.append(f"{device}/{compute_type}")
        self.compute_type = compute_type

    def transcribe(self, samples, **kwargs):
        return iter(()), None


@pytest.fixture
def fake_models(monkeypatch):
    FakeModel.built = []
    monkeypatch.setattr(transcriber, "WhisperModel", FakeModel)
    monkeypatch.setattr(transcriber, "auto_candidates", lambda device: ["int8", "float32"])
    return FakeModel


def test_auto_keeps_the_faster_model_loaded_and_reports_the_timings(monkeypatch, fake_models) -> None:
    monkeypatch.setattr(transcriber, "time_model", lambda model, **_: {"int8": 0.5, "float32": 0.3}[model.compute_type])
    model, info = transcriber.load_model("unused", "cpu", "auto", cpu_threads=0)
    assert fake_models.built == ["cpu/int8", "cpu/float32"]
    assert model.compute_type == "float32"  # the measured winner is the model served
    assert info.compute_type == "float32"
    assert info.compute_type_timings == {"int8": 0.5, "float32": 0.3}

    fake_models.built = []
    monkeypatch.setattr(transcriber, "time_model", lambda model, **_: {"int8": 0.3, "float32": 0.5}[model.compute_type])
    model, info = transcriber.load_model("unused", "cpu", "auto", cpu_threads=0)
    assert model.compute_type == info.compute_type == "int8"


def test_a_named_compute_type_is_not_probed(monkeypatch, fake_models) -> None:
    def no_probe(model, **_):
        raise AssertionError("a named compute type must not be timed")

    monkeypatch.setattr(transcriber, "time_model", no_probe)
    _model, info = transcriber.load_model("unused", "cpu", "float32", cpu_threads=0)
    assert fake_models.built == ["cpu/float32"]
    assert (info.compute_type, info.compute_type_timings) == ("float32", {})


def test_a_probe_that_cannot_time_the_default_serves_the_default(monkeypatch, fake_models) -> None:
    def broken(model, **_):
        raise RuntimeError("probe broke")

    monkeypatch.setattr(transcriber, "time_model", broken)
    model, info = transcriber.load_model("unused", "cpu", "auto", cpu_threads=0)
    assert fake_models.built == ["cpu/int8"]
    assert (model.compute_type, info.compute_type, info.compute_type_timings) == ("int8", "int8", {})


def test_the_cpu_probe_counts_its_own_cpu_seconds_not_time_spent_waiting(monkeypatch) -> None:
    # A probe run that waits 50 ms (as one does while other processes hold the cores) and
    # computes for a moment: wall time counts the wait, the CPU probe's clock does not.
    def run() -> None:
        time.sleep(0.05)
        sum(i * i for i in range(20_000))

    monkeypatch.setattr(transcriber, "probe_run", lambda model: run)
    waited = transcriber.time_model(object(), clock=transcriber.probe_clock("cuda"))
    computed = transcriber.time_model(object(), clock=transcriber.probe_clock("cpu"))
    assert waited >= 0.05
    assert 0 < computed < 0.04


def test_describe_shows_the_probe_timings_only_when_there_was_a_probe() -> None:
    engine = Engine.__new__(Engine)  # describe() reads only these two attributes
    engine.model_name = "base"
    engine.device = DeviceInfo("cpu", "cpu", "float32", None, {"int8": 0.43210, "float32": 0.3})
    described = engine.describe()
    assert described["compute_type"] == "float32"
    assert described["compute_type_probe_ms"] == {"int8": 432.1, "float32": 300.0}
    engine.device = DeviceInfo("cpu", "cpu", "int8")
    assert "compute_type_probe_ms" not in engine.describe()


@pytest.mark.slow
def test_auto_on_the_real_model_times_every_supported_candidate() -> None:
    from services.common.models import provision

    model, info = transcriber.load_model(str(provision("base")), "cpu", "auto", cpu_threads=0)
    supported = ctranslate2.get_supported_compute_types("cpu")
    candidates = auto_candidates("cpu")
    assert info.device == "cpu" and info.compute_type in supported
    assert list(info.compute_type_timings) == candidates  # every candidate measured, in order
    assert all(seconds > 0 for seconds in info.compute_type_timings.values())
    fastest = min(info.compute_type_timings, key=info.compute_type_timings.get)
    default = candidates[0]
    if info.compute_type == default:
        assert info.compute_type_timings[default] <= info.compute_type_timings[fastest] * (1 + transcriber.PROBE_MARGIN)
    else:
        assert info.compute_type == fastest
    # The model served is the chosen type (CTranslate2 resolves int8 on CPU to int8_float32).
    assert model.model.compute_type == {"int8": "int8_float32"}.get(info.compute_type, info.compute_type)
    print(f"auto chose {info.compute_type}: {info.compute_type_timings}")
