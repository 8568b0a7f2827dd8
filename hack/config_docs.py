"""Generate docs/configuration.md's tables of settings from the settings models.

The models (one per service, plus the operator's) are the single source of truth for every
environment variable: name, default, bounds and meaning. This script renders one markdown table
per model between marker comments in docs/configuration.md and leaves the prose around them as
it is, so the reference cannot drift from the code (``tests/services/test_config_docs.py`` fails
when it does).

    .venv/bin/python hack/config_docs.py           # rewrite the tables
    .venv/bin/python hack/config_docs.py --check   # exit 1 when the doc is out of date
"""

from __future__ import annotations

import argparse
import enum
import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: import the repository's packages
    sys.path.insert(0, str(ROOT))

from pydantic_settings import BaseSettings  # noqa: E402

from services.common.settings import ServiceSettings, env_name  # noqa: E402

DOC = ROOT / "docs" / "configuration.md"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Table:
    """One generated table: the marker ``key`` in the doc and the models it is rendered from.
    ``shared`` renders the fields every service has (:class:`ServiceSettings`), with each
    service's default; otherwise the fields of ``models[0]`` that are not shared."""

    key: str
    models: tuple[tuple[str, str], ...]  # (label, "module:Class")
    shared: bool = False


SERVICES = (
    ("base", "services.base.settings:TranscriberSettings"),
    ("tiny", "services.tiny.settings:DetectorSettings"),
    ("proxy", "services.proxy.settings:ProxySettings"),
)
TABLES = (
    Table("all", SERVICES, shared=True),
    Table("tiny", (SERVICES[1],)),
    Table("base", (SERVICES[0],)),
    Table("proxy", (SERVICES[2],)),
    # The operator's model (controller/settings.py, written separately). While it does not
    # import, its table in the doc is left as it is, neither rewritten nor checked.
    Table("controller", (("controller", "controller.settings:OperatorSettings"),)),
)


def begin_marker(key: str) -> str:
    return f"<!-- BEGIN GENERATED config-table:{key} (hack/config_docs.py; edit the model, not this table) -->"


def end_marker(key: str) -> str:
    return f"<!-- END GENERATED config-table:{key} -->"


def load_model(spec: str) -> type[BaseSettings] | None:
    """The model class named ``module:Class``, or None when it does not import (yet)."""
    module, _, name = spec.partition(":")
    try:
        model = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return model if isinstance(model, type) and issubclass(model, BaseSettings) else None


def render_default(model: type[BaseSettings], field: str) -> str:
    """The default as a deployment would write it, in code style; ``unset`` for an empty one."""
    info = model.model_fields[field]
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "doc_default" in extra:
        return f"`{extra['doc_default']}`"
    value: Any = info.get_default(call_default_factory=True)
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, tuple | list):
        text = ",".join(str(v) for v in value)
    elif value is None:
        text = ""
    else:
        text = str(value)
    if text == "":
        return "unset"
    rendered = f"`{text}`"
    if isinstance(value, int) and not isinstance(value, bool) and value >= MIB and value % MIB == 0:
        rendered += f" ({value // MIB} MiB)"
    return rendered


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def row(name: str, default: str, meaning: str) -> str:
    return f"| `{name}` | {default} | {cell(meaning)} |"


def render_table(table: Table) -> str | None:
    """The table's markdown, or None when one of its models does not import."""
    loaded = [(label, load_model(spec)) for label, spec in table.models]
    if any(model is None for _, model in loaded):
        return None
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    if table.shared:
        for field in ServiceSettings.model_fields:
            by_default: dict[str, list[str]] = {}
            for label, model in loaded:
                assert model is not None
                by_default.setdefault(render_default(model, field), []).append(label)
            if len(by_default) == 1:
                default = next(iter(by_default))
            else:
                default = ", ".join(f"{d} ({', '.join(sorted(labels))})" for d, labels in by_default.items())
            description = ServiceSettings.model_fields[field].description or ""
            lines.append(row(env_name(ServiceSettings, field), default, description))
        return "\n".join(lines)
    model = loaded[0][1]
    assert model is not None
    shared = set(ServiceSettings.model_fields)
    for field, info in model.model_fields.items():
        if field in shared:
            continue
        lines.append(row(env_name(model, field), render_default(model, field), info.description or ""))
    return "\n".join(lines)


def render(doc: str) -> str:
    """``doc`` with every generated table replaced by what the models say now."""
    for table in TABLES:
        begin, end = begin_marker(table.key), end_marker(table.key)
        pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.DOTALL)
        if not pattern.search(doc):
            raise SystemExit(f"{DOC}: no markers for table {table.key!r}; add\n{begin}\n{end}")
        rendered = render_table(table)
        if rendered is None:
            continue  # its model does not import yet: leave the hand-written table alone
        doc = pattern.sub(lambda _m: f"{begin}\n{rendered}\n{end}", doc, count=1)  # noqa: B023
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/configuration.md is out of date")
    args = parser.parse_args(argv)
    current = DOC.read_text()
    wanted = render(current)
    if args.check:
        if current != wanted:
            print(f"{DOC.relative_to(ROOT)} is out of date: run .venv/bin/python hack/config_docs.py", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        DOC.write_text(wanted)
        print(f"rewrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
