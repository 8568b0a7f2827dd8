"""Evaluate every PromQL expression of the Grafana dashboard and the alerting rules against a
real Prometheus, and fail when one errors or finds no series.

Why: a dashboard panel or an alert that names a metric or label that does not exist is not an
error to Prometheus or Grafana, it is just silently empty ("No data", an alert that can never
fire). The only way to catch a renamed metric, a wrong label or a typo is to ask a Prometheus
that scrapes the real services. The local-stack test (tests/monitoring) and the cluster
end-to-end test both run this module; the cluster one with nothing allowed to be missing.

What "finds series" means per kind of expression:

- dashboard targets and recording rules: the whole expression must return at least one series;
- alerting rules: an alert that is quiet returns nothing by design, so the whole expression is
  only checked for errors; its *signals* must have series. The expression is broken at its
  comparisons (``> 3``, ``== 0``) and set operators (``and``, ``unless``, ``or``) as the
  parser groups them, parentheses are unwrapped, and every operand that is not a number
  literal is evaluated on its own: both sides of ``and`` and of a comparison, the left side of
  ``unless``, at least one side of ``or``.

Before anything is sent to Prometheus, every expression is parsed with the ``promql-parser``
package (a port of Prometheus' own parser): one that does not parse fails with the parser's
message (``parse error: unclosed left parenthesis``), and the syntax tree, not a text scanner,
says where the signals are and which metrics an expression names (``--allow-missing-prefix``).
``syntax_check`` does the parsing alone, without a Prometheus.

Dashboard template variables are substituted first: ``$__rate_interval`` and ``$__interval``
become ``--rate-interval`` (1m), ``$__range`` becomes ``--range`` (1h), and query/custom
variables their ``allValue`` (or ``.*``, which also matches series without that label).

CLI::

    python -m monitoring.promql_check --prometheus http://127.0.0.1:9090 \\
        --dashboard charts/stt/files/grafana-dashboard.json --rules charts/stt/files/prometheus-rules.yml \\
        [--allow-missing-prefix stt_controller_] [--allow-missing-expr EXPR] [--wait 60]

Exit status 0 when every expression passed, 1 otherwise (the table printed says which and why).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import promql_parser
import yaml

GRAPH, ALERT, RECORD = "graph", "alert", "record"


@dataclass(frozen=True)
class Expression:
    """One PromQL expression and where it came from (shown in the report)."""

    source: str
    expr: str
    kind: str = GRAPH  # GRAPH (dashboard target or variable), ALERT or RECORD


@dataclass
class Result:
    """The verdict on one expression: ``problems`` empty means it passed."""

    expression: Expression
    problems: list[str] = field(default_factory=list)
    allowed_missing: bool = False  # no series, but its metrics are on the allow-list

    @property
    def ok(self) -> bool:
        return not self.problems


# --- reading the dashboard and the rules -------------------------------------------------------


def dashboard_expressions(path: Path | str, rate_interval: str = "1m", range_: str = "1h") -> list[Expression]:
    """Every target expression of every panel (rows and nested panels included) and every
    query variable, with the dashboard's template variables already substituted."""
    dashboard = json.loads(Path(path).read_text())
    variables = {**_variable_values(dashboard), "__rate_interval": rate_interval, "__interval": rate_interval}
    variables["__range"] = range_
    found: list[Expression] = []

    def walk(panels: Iterable[dict]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                expr = target.get("expr")
                if expr and not target.get("hide"):
                    source = f"dashboard panel {panel.get('title', '?')!r} target {target.get('refId', '?')}"
                    found.append(Expression(source, substitute(expr, variables)))

    walk(dashboard.get("panels", []))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        promql = _grafana_function_to_promql(query)
        if promql:
            found.append(Expression(f"dashboard variable {var.get('name')!r}", substitute(promql, variables)))
    return found


def rules_expressions(path: Path | str) -> list[Expression]:
    """Every ``expr`` of a plain Prometheus rules file (``groups:``)."""
    document = yaml.safe_load(Path(path).read_text()) or {}
    found: list[Expression] = []
    for group in document.get("groups", []):
        for rule in group.get("rules", []):
            if "alert" in rule:
                found.append(Expression(f"rules alert {rule['alert']}", str(rule["expr"]).strip(), ALERT))
            elif "record" in rule:
                found.append(Expression(f"rules record {rule['record']}", str(rule["expr"]).strip(), RECORD))
    return found


def _variable_values(dashboard: dict) -> dict[str, str]:
    values: dict[str, str] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") in ("query", "custom", "textbox", "constant", "interval"):
            values[var["name"]] = var.get("allValue") or ".*"
    return values


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace Grafana's template variables (``$x``, ``${x}``, ``${x:fmt}``, ``[[x]]``)."""
    values = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h", **variables}
    for name in sorted(values, key=len, reverse=True):  # $namespace_x before $namespace
        value = values[name]
        # A replacement function, not a string: re.sub would read backslashes in the value.
        expr = re.sub(r"\$\{" + re.escape(name) + r"(:[^}]*)?\}", _constant(value), expr)
        expr = expr.replace(f"[[{name}]]", value)
        expr = re.sub(r"\$" + re.escape(name) + r"(?![A-Za-z0-9_])", _constant(value), expr)
    return expr


def _constant(value: str) -> Callable[[re.Match[str]], str]:
    """A ``re.sub`` replacement that inserts ``value`` verbatim."""
    return lambda _match: value


def _grafana_function_to_promql(query: str) -> str | None:
    """Grafana's Prometheus variable functions, as a PromQL query that has series when they do."""
    query = query.strip()
    match = re.fullmatch(r"label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)", query, re.DOTALL)
    if match:
        return f"count by ({match.group(2)}) ({match.group(1)})"
    match = re.fullmatch(r"query_result\((.*)\)", query, re.DOTALL)
    if match:
        return match.group(1)
    return None  # label_values(label) and metrics(...) need no series to be useful


# --- parsing: the signals an alert compares, the metrics an expression names -----------------

# Binary operators at which an alert is broken into signals: comparisons and the set operators.
# Arithmetic (``a / b``) stays one signal: its operands are meaningless on their own.
_COMPARISONS = frozenset({"==", "!=", ">=", "<=", ">", "<"})
_SET_OPERATORS = frozenset({"and", "or", "unless"})
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class PromQLSyntaxError(ValueError):
    """An expression the PromQL parser rejects; the message is the parser's."""


def parse(expr: str) -> promql_parser.Expr:
    """The expression's syntax tree, from the ``promql-parser`` package (a port of Prometheus'
    own parser): operator precedence, strings, ``on()``/``bool`` modifiers and function
    signatures are its business, not a scanner's here.

    Raises :class:`PromQLSyntaxError` with the parser's message when the expression is invalid.
    """
    try:
        return promql_parser.parse(expr)
    except ValueError as exc:
        raise PromQLSyntaxError(f"parse error: {exc}") from exc


def syntax_error(expr: str) -> str | None:
    """The parser's complaint about ``expr``, or None when it parses."""
    try:
        parse(expr)
    except PromQLSyntaxError as exc:
        return str(exc)
    return None


def _unparen(node: promql_parser.Expr) -> promql_parser.Expr:
    """The expression inside any parentheses that enclose all of it."""
    while isinstance(node, promql_parser.ParenExpr):
        node = node.expr
    return node


def _is_number(node: promql_parser.Expr) -> bool:
    """A number literal, possibly parenthesised or signed (``(3)``, ``-1e3``)."""
    node = _unparen(node)
    while isinstance(node, promql_parser.UnaryExpr):
        node = _unparen(node.expr)
    return isinstance(node, promql_parser.NumberLiteral)


def is_literal(expr: str) -> bool:
    """True for a number literal: an alert's threshold, which needs no series. False for
    anything else, an expression that does not parse included."""
    try:
        return _is_number(parse(expr))
    except PromQLSyntaxError:
        return False


@dataclass
class Signal:
    """A tree of the operands an alert compares: a leaf is one expression to evaluate."""

    op: str | None  # None for a leaf
    expr: str
    children: list[Signal] = field(default_factory=list)
    literal: bool = False  # a number literal: nothing to evaluate


def signals(expr: str) -> Signal:
    """Break an expression at its comparisons and set operators, as the parser groups them
    (``or`` binds loosest, then ``and``/``unless``, then comparisons); enclosing parentheses
    are dropped and each operand is rendered back into PromQL to be queried on its own.

    Raises :class:`PromQLSyntaxError` when the expression does not parse.
    """
    return _signal(parse(expr))


def _signal(node: promql_parser.Expr) -> Signal:
    node = _unparen(node)
    if isinstance(node, promql_parser.BinaryExpr):
        op = str(node.op).lower()
        if op in _COMPARISONS or op in _SET_OPERATORS:
            return Signal(op, render(node), [_signal(node.lhs), _signal(node.rhs)])
    return Signal(None, render(node), literal=_is_number(node))


def identifiers(expr: str) -> set[str]:
    """The metric names an expression selects: the name of every vector selector, and the
    value of every positive ``__name__`` matcher. Function, label and aggregation names are not
    metrics and are left out, and so is everything inside strings.

    Raises :class:`PromQLSyntaxError` when the expression does not parse.
    """
    names: set[str] = set()
    for node in _nodes(parse(expr)):
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            groups = [node.matchers.matchers, *(node.matchers.or_matchers or [])]
            for matcher in (m for group in groups for m in group):
                if matcher.name == "__name__" and matcher.op in (promql_parser.MatchOp.Equal, promql_parser.MatchOp.Re):
                    names.add(matcher.value)
    return names


def _nodes(node: promql_parser.Expr) -> Iterator[promql_parser.Expr]:
    """Every node of the tree, depth first (written out rather than ``promql_parser.walk``,
    which older releases of the package lack)."""
    yield node
    if isinstance(node, promql_parser.BinaryExpr):
        yield from _nodes(node.lhs)
        yield from _nodes(node.rhs)
    elif isinstance(node, promql_parser.AggregateExpr):
        if isinstance(node.param, promql_parser.Expr):
            yield from _nodes(node.param)
        yield from _nodes(node.expr)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from _nodes(arg)
    elif isinstance(node, promql_parser.MatrixSelector):
        yield from _nodes(node.vector_selector)
    elif isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)):
        yield from _nodes(node.expr)


# --- rendering a syntax tree back into PromQL ---------------------------------------------------
# Why not ``str(node)``: the package's own printing is for reading, not for Prometheus. It writes
# ``a{}`` for ``a``, prints label values without escaping (``"b\d"`` for ``"b\\d"``, which
# Prometheus rejects) and has changed between releases. An operand of an alert is sent to
# Prometheus as it is rendered here, so this renders exactly what was parsed, parentheses
# included (the tree keeps them), and quotes every string.


def render(node: promql_parser.Expr) -> str:
    """PromQL text that parses back into ``node``."""
    if isinstance(node, promql_parser.NumberLiteral):
        return _number(node.val)
    if isinstance(node, promql_parser.StringLiteral):
        return _string(node.val)
    if isinstance(node, promql_parser.ParenExpr):
        return f"({render(node.expr)})"
    if isinstance(node, promql_parser.UnaryExpr):
        return f"-{render(node.expr)}"
    if isinstance(node, promql_parser.VectorSelector):
        return _selector(node) + _offset_at(node.offset, node.at)
    if isinstance(node, promql_parser.MatrixSelector):
        selector = node.vector_selector
        return f"{_selector(selector)}[{_duration(node.range)}]" + _offset_at(selector.offset, selector.at)
    if isinstance(node, promql_parser.SubqueryExpr):
        step = _duration(node.step) if node.step else ""
        return f"{render(node.expr)}[{_duration(node.range)}:{step}]" + _offset_at(node.offset, node.at)
    if isinstance(node, promql_parser.Call):
        return f"{node.func.name}({', '.join(render(arg) for arg in node.args)})"
    if isinstance(node, promql_parser.AggregateExpr):
        grouping = ""
        if node.modifier is not None:
            keyword = "by" if node.modifier.type == promql_parser.AggModifierType.By else "without"
            grouping = f" {keyword} ({_labels(node.modifier.labels)}) "
        args = [render(node.param)] if isinstance(node.param, promql_parser.Expr) else []
        return f"{node.op}{grouping}({', '.join([*args, render(node.expr)])})"
    if isinstance(node, promql_parser.BinaryExpr):
        return f"{render(node.lhs)} {str(node.op).lower()}{_bin_modifier(node.modifier)} {render(node.rhs)}"
    raise TypeError(f"cannot render PromQL node {type(node).__name__}: {node!r}")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def _string(value: str) -> str:
    # A JSON string is a valid PromQL (Go) double-quoted string: same escapes, \uXXXX included.
    return json.dumps(value, ensure_ascii=False)


def _label(name: str) -> str:
    return name if _LABEL.fullmatch(name) else _string(name)  # Prometheus 3 quotes UTF-8 names


def _labels(names: Iterable[str]) -> str:
    return ", ".join(_label(n) for n in names)


_MATCH_OPS = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}


def _matcher(matcher: promql_parser.Matcher) -> str:
    op = _MATCH_OPS[str(matcher.op).rsplit(".", 1)[-1]]
    return f"{_label(matcher.name)}{op}{_string(matcher.value)}"


def _selector(node: promql_parser.VectorSelector) -> str:
    """``name{matchers}`` without offset or ``@``, which follow a range when there is one."""
    name = node.name or ""
    inside: list[str] = []
    if name and not _NAME.fullmatch(name):
        inside.append(_string(name))  # a UTF-8 metric name goes inside the braces, quoted
        name = ""
    groups = [g for g in [node.matchers.matchers, *(node.matchers.or_matchers or [])] if g]
    if groups:
        inside.append(" or ".join(", ".join(_matcher(m) for m in group) for group in groups))
    return f"{name}{{{', '.join(inside)}}}" if inside or not name else name


def _duration(delta: timedelta | None) -> str:
    """Prometheus' duration syntax (``1h30m``, ``250ms``)."""
    if delta is None:
        return ""
    ms = round(delta / timedelta(milliseconds=1))
    if ms == 0:
        return "0s"
    sign, ms = ("-", -ms) if ms < 0 else ("", ms)
    parts = []
    for unit, size in (("y", 31_536_000_000), ("w", 604_800_000), ("d", 86_400_000), ("h", 3_600_000)):
        count, ms = divmod(ms, size)
        parts.append(f"{count}{unit}" if count else "")
    for unit, size in (("m", 60_000), ("s", 1000), ("ms", 1)):
        count, ms = divmod(ms, size)
        parts.append(f"{count}{unit}" if count else "")
    return sign + "".join(parts)


def _offset_at(offset: timedelta | None, at: promql_parser.AtModifier | None) -> str:
    text = f" offset {_duration(offset)}" if offset else ""
    if at is not None:
        kind = str(at.type).rsplit(".", 1)[-1]
        if kind == "Start":
            text += " @ start()"
        elif kind == "End":
            text += " @ end()"
        elif at.at is not None:
            text += f" @ {at.at.timestamp():.3f}"
    return text


def _bin_modifier(modifier: promql_parser.BinModifier | None) -> str:
    if modifier is None:
        return ""
    text = " bool" if modifier.return_bool else ""
    if modifier.matching is not None:
        keyword = "on" if modifier.matching.type == promql_parser.LabelModifierType.Include else "ignoring"
        text += f" {keyword} ({_labels(modifier.matching.labels)})"
    card = str(modifier.card).rsplit(".", 1)[-1]
    if card in ("ManyToOne", "OneToMany"):
        text += " group_left" if card == "ManyToOne" else " group_right"
        text += f" ({_labels(modifier.group_labels or [])})"
    fill = getattr(modifier, "fill_values", None)  # Prometheus 3's fill() modifiers, newer releases
    lhs, rhs = (fill.lhs, fill.rhs) if fill is not None else (None, None)
    if lhs is not None and lhs == rhs:
        text += f" fill ({_number(lhs)})"
    else:
        text += f" fill_left ({_number(lhs)})" if lhs is not None else ""
        text += f" fill_right ({_number(rhs)})" if rhs is not None else ""
    return text


# --- asking Prometheus -----------------------------------------------------------------------


class Prometheus:
    """The slice of Prometheus' HTTP API the check needs."""

    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.client = httpx.Client(timeout=timeout)

    def query(self, expr: str) -> tuple[int | None, str | None]:
        """Instant query now; returns (number of series, error message)."""
        try:
            response = self.client.post(f"{self.url}/api/v1/query", data={"query": expr})
        except httpx.HTTPError as exc:
            return None, f"Prometheus unreachable: {exc}"
        try:
            body = response.json()
        except ValueError:
            return None, f"HTTP {response.status_code}: {response.text[:200]}"
        if body.get("status") != "success":
            return None, f"{body.get('errorType', 'error')}: {body.get('error', response.text[:200])}"
        data = body["data"]
        if data["resultType"] in ("scalar", "string"):
            return 1, None
        return len(data["result"]), None

    def close(self) -> None:
        self.client.close()


def _evaluate_signal(prom: Prometheus, node: Signal, missing: list[str]) -> bool:
    """True when the signal has series; leaves without series are appended to ``missing``."""
    if node.op is None:
        if node.literal:
            return True
        count, error = prom.query(node.expr)
        if error or not count:
            missing.append(node.expr)
            return False
        return True
    children = [c for c in node.children if not c.literal]
    if node.op == "or":
        trial: list[str] = []
        if any(_evaluate_signal(prom, c, trial) for c in children):
            return True
        missing.extend(trial)
        return False
    if node.op == "unless":
        children = children[:1]  # the right side is the exception; empty is normal
    results = [_evaluate_signal(prom, c, missing) for c in children]
    return all(results)


def syntax_check(expressions: Iterable[Expression]) -> list[Result]:
    """Parse every expression, no Prometheus needed: a result per expression, failed with the
    parser's message when it does not parse. The static tests run this on the shipped rules and
    dashboard; :func:`check` runs it before asking Prometheus anything."""
    results = []
    for expression in expressions:
        result = Result(expression)
        error = syntax_error(expression.expr)
        if error:
            result.problems.append(error)
        results.append(result)
    return results


def check(
    prom: Prometheus,
    expressions: Iterable[Expression],
    allow_missing_prefixes: Sequence[str] = (),
    allow_missing_exprs: Iterable[str] = (),
) -> list[Result]:
    """Evaluate each expression once; see the module docstring for what passes. An expression
    that does not parse fails with the parser's message and is not sent to Prometheus, nor
    excused by the allowances (those are for series that are missing, not for broken queries)."""
    allowed_exprs = {" ".join(e.split()) for e in allow_missing_exprs}
    results = []
    for result in syntax_check(expressions):
        results.append(result)
        if result.problems:
            continue
        expression = result.expression
        count, error = prom.query(expression.expr)
        if error:
            result.problems.append(error)
        elif expression.kind == ALERT:
            missing: list[str] = []
            if not _evaluate_signal(prom, signals(expression.expr), missing):
                result.problems.extend(f"no series for {m!r}" for m in dict.fromkeys(missing))
        elif not count:
            result.problems.append("no series")
        if result.problems and not error:
            names = identifiers(expression.expr)
            by_prefix = any(n.startswith(p) for n in names for p in allow_missing_prefixes if p)
            if by_prefix or " ".join(expression.expr.split()) in allowed_exprs:
                result.allowed_missing = True
                result.problems = []
    return results


def report(results: Sequence[Result]) -> str:
    lines = []
    for r in results:
        status = "FAIL" if not r.ok else ("allowed-missing" if r.allowed_missing else "ok")
        lines.append(f"{status:16} {r.expression.source}")
        for problem in r.problems:
            lines.append(f"{'':16}   {problem}")
            lines.append(f"{'':16}   expr: {' '.join(r.expression.expr.split())}")
    failed = sum(not r.ok for r in results)
    allowed = sum(r.allowed_missing for r in results)
    lines.append(
        f"{len(results)} expressions: {len(results) - failed} passed ({allowed} allowed missing), {failed} failed"
    )
    return "\n".join(lines)


def check_until(
    prom: Prometheus,
    expressions: Sequence[Expression],
    wait_s: float = 0.0,
    interval_s: float = 2.0,
    **kwargs,
) -> list[Result]:
    """Re-check until everything passes or ``wait_s`` has gone by (series appear a scrape or
    two after the traffic that creates them)."""
    deadline = time.monotonic() + wait_s
    while True:
        results = check(prom, expressions, **kwargs)
        if all(r.ok for r in results) or time.monotonic() >= deadline:
            return results
        time.sleep(interval_s)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monitoring.promql_check",
        description="Evaluate every PromQL expression of the dashboard and rules against a live Prometheus.",
    )
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--dashboard", action="append", default=[], type=Path, help="Grafana dashboard JSON")
    parser.add_argument("--rules", action="append", default=[], type=Path, help="Prometheus rules file (groups:)")
    parser.add_argument(
        "--allow-missing-prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help="expressions naming a metric with this prefix may have no series (repeatable)",
    )
    parser.add_argument(
        "--allow-missing-expr", action="append", default=[], metavar="EXPR", help="this exact expression may be empty"
    )
    parser.add_argument("--wait", type=float, default=0.0, help="retry for up to this many seconds until all pass")
    parser.add_argument("--rate-interval", default="1m", help="value for $__rate_interval / $__interval (1m)")
    args = parser.parse_args(argv)
    if not args.dashboard and not args.rules:
        parser.error("give at least one --dashboard or --rules file")

    expressions: list[Expression] = []
    for path in args.dashboard:
        expressions += dashboard_expressions(path, rate_interval=args.rate_interval)
    for path in args.rules:
        expressions += rules_expressions(path)
    prom = Prometheus(args.prometheus)
    try:
        results = check_until(
            prom,
            expressions,
            wait_s=args.wait,
            allow_missing_prefixes=args.allow_missing_prefix,
            allow_missing_exprs=args.allow_missing_expr,
        )
    finally:
        prom.close()
    print(report(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
