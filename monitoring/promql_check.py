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
  only checked for errors; its *signals* must have series. The expression is split at its
  top-level comparison (``> 3``, ``== 0``) and set operators (``and``, ``unless``, ``or``),
  parentheses are unwrapped, and every operand that is not a number literal is evaluated on its
  own: both sides of ``and`` and of a comparison, the left side of ``unless``, at least one side
  of ``or``.

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
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

GRAPH, ALERT, RECORD = "graph", "alert", "record"

_LITERAL = re.compile(r"[-+]?((\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?|0x[0-9a-fA-F]+|inf|nan)", re.IGNORECASE)
_IDENT_CHARS = re.compile(r"[A-Za-z0-9_:]")
# Modifiers that may follow a binary operator before its right operand.
_MODIFIER = re.compile(r"\s*(bool\b|(on|ignoring)\s*\([^)]*\)|(group_left|group_right)\s*(\([^)]*\))?)", re.IGNORECASE)
_COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")
# PromQL precedence, lowest first: or < and/unless < comparisons < arithmetic.
_LEVELS: tuple[tuple[str, ...], ...] = (("or",), ("and", "unless"), _COMPARISONS)


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
        expr = re.sub(r"\$\{" + re.escape(name) + r"(:[^}]*)?\}", lambda _m, v=value: v, expr)
        expr = expr.replace(f"[[{name}]]", value)
        expr = re.sub(r"\$" + re.escape(name) + r"(?![A-Za-z0-9_])", lambda _m, v=value: v, expr)
    return expr


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


# --- splitting an expression into the signals an alert compares ------------------------------


def _scan(expr: str) -> Iterable[tuple[int, str]]:
    """Yield (index, char) for characters at nesting depth 0 outside string literals."""
    depth = 0
    quote: str | None = None
    i = 0
    while i < len(expr):
        char = expr[i]
        if quote:
            if char == "\\" and quote != "`":
                i += 2
                continue
            if char == quote:
                quote = None
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0:
            yield i, char
        i += 1


def _split_top_level(expr: str, operators: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``expr`` at the given top-level binary operators; returns (operands, operators)."""
    cuts: list[tuple[int, int, str]] = []
    skip_until = -1
    for i, _char in _scan(expr):
        if i < skip_until:
            continue
        for op in operators:
            if op.isalpha():
                end = i + len(op)
                word = expr[i:end]
                before = expr[i - 1] if i else " "
                after = expr[end] if end < len(expr) else " "
                if word.lower() == op and not _IDENT_CHARS.match(before) and not _IDENT_CHARS.match(after):
                    cuts.append((i, end, op))
                    skip_until = end
                    break
            elif expr.startswith(op, i):
                # '>' must not be the tail of '>=' etc.; '=' and '!' alone are not operators here.
                cuts.append((i, i + len(op), op))
                skip_until = i + len(op)
                break
    operands, ops, start = [], [], 0
    for begin, end, op in cuts:
        operands.append(expr[start:begin])
        ops.append(op)
        start = end
    operands.append(expr[start:])
    cleaned = []
    for index, operand in enumerate(operands):
        if index:
            while True:  # drop `bool`, `on(...)`, `group_left(...)` that belong to the operator
                match = _MODIFIER.match(operand)
                if not match or not match.group(0).strip():
                    break
                operand = operand[match.end() :]
        cleaned.append(operand.strip())
    return cleaned, ops


def _unwrap(expr: str) -> str:
    """Strip parentheses that enclose the whole expression."""
    expr = expr.strip()
    while expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, char in enumerate(expr):
            depth += char == "("
            depth -= char == ")"
            if depth == 0 and i < len(expr) - 1:
                return expr  # the first parenthesis closes before the end: "(a) / (b)"
        expr = expr[1:-1].strip()
    return expr


def is_literal(expr: str) -> bool:
    return bool(_LITERAL.fullmatch(_unwrap(expr)))


@dataclass
class Signal:
    """A tree of the operands an alert compares: a leaf is one expression to evaluate."""

    op: str | None  # None for a leaf
    expr: str
    children: list[Signal] = field(default_factory=list)


def signals(expr: str) -> Signal:
    """Break an expression at its lowest-precedence top-level comparison or set operator."""
    expr = _unwrap(expr)
    for level in _LEVELS:
        operands, ops = _split_top_level(expr, level)
        if ops:
            # Mixed operators of one level ("a > 1 and b == 0" is split at "and" first anyway).
            return Signal(ops[0], expr, [signals(o) for o in operands])
    return Signal(None, expr)


def identifiers(expr: str) -> set[str]:
    """Metric-like names in an expression (outside strings and label matchers)."""
    outside = []
    depth_braces, quote = 0, None
    for char in expr:
        if quote:
            if char == quote:
                quote = None
            continue
        if char in "\"'`":
            quote = char
            outside.append(" ")
            continue
        if char == "{":
            depth_braces += 1
        elif char == "}":
            depth_braces -= 1
        outside.append(char if depth_braces == 0 else " ")
    return set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", "".join(outside)))


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
        if is_literal(node.expr):
            return True
        count, error = prom.query(node.expr)
        if error or not count:
            missing.append(node.expr)
            return False
        return True
    children = [c for c in node.children if not (c.op is None and is_literal(c.expr))]
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


def check(
    prom: Prometheus,
    expressions: Iterable[Expression],
    allow_missing_prefixes: Sequence[str] = (),
    allow_missing_exprs: Iterable[str] = (),
) -> list[Result]:
    """Evaluate each expression once; see the module docstring for what passes."""
    allowed_exprs = {" ".join(e.split()) for e in allow_missing_exprs}
    results = []
    for expression in expressions:
        result = Result(expression)
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
        results.append(result)
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
