"""Make the repository's ``monitoring`` package importable under a bare ``pytest`` too.

``make test`` runs ``python -m pytest`` from the repository root, which already puts the root on
``sys.path``; the installed project (``pyproject.toml``'s package list) does not include
``monitoring/``, so a plain ``pytest`` would fail to import it without this.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
