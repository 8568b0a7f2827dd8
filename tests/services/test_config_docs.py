"""docs/configuration.md's tables are what the settings models say (hack/config_docs.py), as the
Grafana dashboard JSON is what its generator writes: a setting added, renamed or re-defaulted in
a model without regenerating the doc fails here, not in a user's deployment."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from services.base.settings import TranscriberSettings
from services.common.settings import ServiceSettings, SettingsError, env_name, load_settings
from services.proxy.settings import ProxySettings
from services.tiny.settings import DetectorSettings

ROOT = Path(__file__).resolve().parents[2]
MODELS = (TranscriberSettings, DetectorSettings, ProxySettings)


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("config_docs", ROOT / "hack" / "config_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_configuration_doc_is_what_the_generator_writes() -> None:
    docs = generator()
    current = docs.DOC.read_text()
    assert current == docs.render(current), "run: .venv/bin/python hack/config_docs.py"


def test_every_field_has_a_description_and_a_variable() -> None:
    for model in MODELS:
        for field, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{field} has no description"
            assert re.fullmatch(r"[A-Z][A-Z0-9_]+", env_name(model, field))


def test_every_service_variable_the_chart_sets_is_a_setting() -> None:
    """The chart sets variables by name: a model field renamed away from one would silently
    ignore it."""
    known = {env_name(m, f) for m in MODELS for f in m.model_fields}
    chart = (ROOT / "charts" / "stt" / "templates").glob("*.yaml")
    operator_only = {"STT_CPU_DEPLOYMENT", "STT_GPU_DEPLOYMENT", "STT_DETECTOR_DEPLOYMENT", "STT_DETECTOR_CONTAINER"}
    set_by_chart = {n for path in chart for n in re.findall(r"\b(STT_[A-Z0-9_]+)\b", path.read_text())}
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for name in sorted(set_by_chart - known - operator_only):
        assert f"`{name}`" in doc, f"the chart sets {name}, which no settings model nor the doc knows"


def test_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "ns")
    assert load_settings(ProxySettings).pod_namespace == "ns"  # an alias keeps its name
    monkeypatch.setenv("STT_BATCH_MAX", "0")
    with pytest.raises(SettingsError, match=r"STT_BATCH_MAX='0': .*greater than or equal to 1"):
        load_settings(TranscriberSettings)
    monkeypatch.setenv("STT_DETECTOR", "nope")
    with pytest.raises(SettingsError, match=r"STT_DETECTOR='nope': unknown detector"):
        load_settings(DetectorSettings)
    monkeypatch.setenv("STT_ROUTING_MODE", "sideways")
    with pytest.raises(SettingsError, match=r"STT_ROUTING_MODE='sideways'"):
        load_settings(ProxySettings)


def test_empty_means_the_default_and_lists_keep_their_comma_syntax(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STT_MAX_CONCURRENCY", "")
    monkeypatch.setenv("STT_DETECTORS", " whisper-tiny ,")
    monkeypatch.setenv("STT_ROUTING_MODE", "GPU")
    assert load_settings(ServiceSettings).max_concurrency == 64
    assert load_settings(DetectorSettings).detectors == ("whisper-tiny", "silero")  # the default is loaded too
    assert load_settings(ProxySettings).routing_mode == "gpu"
