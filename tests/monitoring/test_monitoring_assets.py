"""Static checks of the monitoring assets: promtool on the rules and their unit tests, the
dashboard JSON against its generator and Grafana's expectations, every expression through the
PromQL parser, and the signal splitting and rendering that the live check relies on. No
services are started; promtool runs as a process (Debian package, installed when missing)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import promql_parser
import pytest
import yaml

from monitoring import dashboard as dashboard_module
from monitoring.local_prometheus import ensure_installed
from monitoring.promql_check import (
    ALERT,
    Expression,
    Prometheus,
    PromQLSyntaxError,
    dashboard_expressions,
    identifiers,
    is_literal,
    parse,
    render,
    rules_expressions,
    signals,
    substitute,
    syntax_check,
)
from monitoring.promql_check import check as check_expressions

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "charts" / "stt" / "files"
DASHBOARD = FILES / "grafana-dashboard.json"
RULES = FILES / "prometheus-rules.yml"
RULES_TEST = FILES / "prometheus-rules.test.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    ensure_installed()
    return "promtool"


def test_promtool_check_rules(promtool: str) -> None:
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout  # promtool read every rule of the file


def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = subprocess.run([promtool, "test", "rules", str(RULES_TEST)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_catch_a_wrong_threshold(promtool: str, tmp_path: Path) -> None:
    """The unit tests bite: loosen one threshold (5% → 50%) and the error-ratio test must fail."""
    mutated = RULES.read_text().replace("> 0.05", "> 0.5")
    assert mutated != RULES.read_text()
    (tmp_path / "prometheus-rules.yml").write_text(mutated)
    (tmp_path / "prometheus-rules.test.yml").write_text(RULES_TEST.read_text())
    result = subprocess.run(
        [promtool, "test", "rules", str(tmp_path / "prometheus-rules.test.yml")], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "SttHighErrorRatio" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    alerts = {e.source.removeprefix("rules alert ") for e in rules_expressions(RULES) if e.kind == ALERT}
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - fires == set(), "alerts without a test that makes them fire"
    assert alerts - quiet == set(), "alerts without a test that keeps them quiet"
    assert (fires | quiet) - alerts == set(), "tests for alerts that do not exist"


def test_every_alert_has_severity_summary_and_description() -> None:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_dashboard_json_is_what_the_generator_writes() -> None:
    assert DASHBOARD.read_text() == dashboard_module.render(), "run: python -m monitoring.dashboard --write"


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def test_dashboard_uses_the_templated_datasource_everywhere() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = _panels(json.loads(DASHBOARD.read_text()))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))


def test_dashboard_covers_what_the_issue_asks_for() -> None:
    exprs = " ".join(e.expr for e in dashboard_expressions(DASHBOARD))
    for metric in (
        "stt_http_requests_total",  # traffic, errors
        "stt_proxy_upstream_duration_seconds_bucket",  # latency per backend
        "stt_transcription_realtime_factor_bucket",  # RTF
        "stt_proxy_routed_total",  # CPU vs GPU share
        "stt_proxy_fallbacks_total",
        "stt_detector_decisions_total",  # speech ratio
        "stt_controller_gpu_replicas_desired",
        "stt_controller_gpu_replicas_ready",
        "stt_queue_depth",
        "stt_batch_size_bucket",
        "stt_ready",
        "stt_device_info",
        "stt_proxy_admin_actions_total",
        "stt_client_lag_seconds",
        "process_resident_memory_bytes",
        "stt_proxy_sessions_active",  # streaming sessions: open, refused, lag, latencies
        "stt_proxy_sessions_refused_total",
        "stt_proxy_session_max_lag_seconds",
        "stt_proxy_session_first_partial_seconds_bucket",
        "stt_proxy_session_commit_seconds_bucket",
        "stt_chunks_decoded_total",  # beams kept, and dropped under load
        "stt_chunks_greedy_under_load_total",
    ):
        assert metric in exprs, metric


# --- the PromQL helpers of monitoring/promql_check.py ---------------------------------------


def test_substitute_grafana_variables() -> None:
    expr = 'rate(x{namespace=~"$namespace", a="${namespace:regex}"}[$__rate_interval]) + y[[namespace]]'
    assert substitute(expr, {"namespace": ".*"}) == 'rate(x{namespace=~".*", a=".*"}[1m]) + y.*'
    assert substitute("$ns_x $ns", {"ns": "a", "ns_x": "b"}) == "b a"


def test_signals_split_comparisons_and_keep_arithmetic() -> None:
    tree = signals("sum(rate(a[5m])) / sum(rate(b[5m])) > 0.5")
    assert tree.op == ">"
    assert [c.expr for c in tree.children] == ["sum(rate(a[5m])) / sum(rate(b[5m]))", "0.5"]
    assert signals("(a or b * 0) / b").op is None  # `or` inside parentheses is part of the signal


def test_signals_split_and_with_modifiers_and_unwrap_parentheses() -> None:
    tree = signals('(max(m{mode="gpu"}) == 1)\nand on()\n(max(r{backend="gpu"}) == 0)')
    assert tree.op == "and"
    left, right = tree.children
    assert (left.op, [c.expr for c in left.children]) == ("==", ['max(m{mode="gpu"})', "1"])
    assert (right.op, [c.expr for c in right.children]) == ("==", ['max(r{backend="gpu"})', "0"])


def test_signals_ignore_operators_inside_strings_braces_and_names() -> None:
    assert signals('x{route!~"/a|/b", code=~"5.."}').op is None
    assert signals("sum by (handler) (stand_and_deliver)").op is None
    tree = signals("a >= bool 3")
    assert tree.op == ">=" and [c.expr for c in tree.children] == ["a", "3"]


def test_signals_follow_the_parsers_precedence() -> None:
    tree = signals("a and b unless c")  # same level, left to right: (a and b) unless c
    assert tree.op == "unless"
    assert [(c.op, c.expr) for c in tree.children] == [("and", "a and b"), (None, "c")]
    tree = signals("a > 1 or b < 2 and c")  # `or` binds loosest, then `and`, then comparisons
    assert tree.op == "or" and [c.op for c in tree.children] == [">", "and"]
    assert [c.literal for c in signals("a > -(1)").children] == [False, True]


def test_literals_and_identifiers() -> None:
    assert is_literal("0.05") and is_literal("(3)") and is_literal("-1e3") and is_literal("Inf")
    assert not is_literal("vector(1)") and not is_literal("(")
    names = identifiers('sum(rate(stt_client_lag_seconds{job="stt_controller_x"}[5m]))')
    assert "stt_client_lag_seconds" in names and "stt_controller_x" not in names
    expr = (
        'sum by (stt_label) (rate(a_total[5m])) / on() group_left {__name__="b"} + label_replace(c, "d", "e", "f", "g")'
    )
    assert identifiers(expr) == {"a_total", "b", "c"}  # no functions, labels or strings


# Operands are sent to Prometheus as render() writes them, so it must give back exactly what
# was parsed, escapes, modifiers, durations and parentheses included.
RENDER_SAMPLES = [
    'x{a="b\\\\d\\"q", c!~"é\\n"}',
    "a offset -5m",
    "a @ 100 offset 1h30m",
    "rate(a[5m] offset 1m @ start())",
    "max_over_time((a + b)[1h:5m] offset 1m)",
    "max_over_time(a[1h:])",
    "topk without (a, b) (3, x)",
    "sum(x) by (a)",
    "sum without () (x)",
    "a / on() group_left b",
    "a * ignoring(x) group_right(y, z) b",
    "a > bool 1",
    "-a ^ 2",
    "-(a + b)",
    'label_replace(a, "x", "$1", "y", "(.*)\\\\.svc")',
    '{__name__=~"x.*", j="1"}',
    '{job="x" or job="y", a!="b"}',
    'count_values("v", x)',
    "a @ 1.5",
    "1e-7 + 1.5e20 + 0x1f",
    "Inf > bool -Inf",
    "rate(a[250ms]) or rate(a[2w1d])",
    "vector(1) unless on() a",
    "time() - 3",
]


def _shipped() -> list[Expression]:
    return rules_expressions(RULES) + dashboard_expressions(DASHBOARD)


@pytest.mark.parametrize("expr", RENDER_SAMPLES + [e.expr for e in _shipped()])
def test_render_gives_back_what_was_parsed(expr: str) -> None:
    tree = parse(expr)
    assert str(parse(render(tree))) == str(tree)


def test_operands_keep_their_escapes() -> None:
    tree = signals('max(x{path=~"/a\\\\.b|\\"q\\""}) > 1')
    assert tree.children[0].expr == 'max(x{path=~"/a\\\\.b|\\"q\\""})'


def test_every_shipped_expression_parses() -> None:
    failed = [(r.expression.source, r.problems) for r in syntax_check(_shipped()) if not r.ok]
    assert not failed


class _Unreachable(Prometheus):
    """A Prometheus that must not be asked: a query that does not parse never reaches it."""

    def __init__(self) -> None:
        pass

    def query(self, expr: str) -> tuple[int | None, str | None]:
        raise AssertionError(f"queried {expr!r}")


def test_malformed_rule_is_reported_with_the_parsers_message(tmp_path: Path) -> None:
    broken = "sum(rate(stt_http_requests_total[5m]) > 1"
    rules = {"groups": [{"name": "g", "rules": [{"alert": "Broken", "expr": broken}]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    with pytest.raises(ValueError) as parser_says:
        promql_parser.parse(broken)
    expected = [f"parse error: {parser_says.value}"]

    (result,) = syntax_check(rules_expressions(path))
    assert (result.ok, result.problems) == (False, expected)
    # check() reports the same without asking Prometheus, and no allowance excuses it.
    (result,) = check_expressions(_Unreachable(), rules_expressions(path), allow_missing_prefixes=["stt_"])
    assert (result.ok, result.allowed_missing, result.problems) == (False, False, expected)
    with pytest.raises(PromQLSyntaxError, match="parse error"):
        signals(broken)


def test_rules_and_dashboard_are_read_completely() -> None:
    rules = rules_expressions(RULES)
    alerts = [rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert len(alerts) >= 14 and all(r.kind == ALERT for r in rules)
    assert [r.source.removeprefix("rules alert ") for r in rules] == alerts
    graph = dashboard_expressions(DASHBOARD)
    assert all("$" not in e.expr for e in graph), "unsubstituted template variable"
    assert any(e.source.startswith("dashboard variable") for e in graph)
