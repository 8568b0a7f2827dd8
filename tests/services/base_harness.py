"""The real base app (``services.base.app``) with a stand-in engine, called in process: for the
tests of its admission, deadlines and hang watch, which need a model that waits when told to."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from services.base import app as base
from services.base.settings import TranscriberSettings
from services.common.settings import load_settings


@asynccontextmanager
async def serving(engine: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the base app with ``engine`` in place of the loaded model's, ready and with
    the default settings; the app's state is put back afterwards."""
    state = base.app.state
    saved = {name: getattr(state, name, None) for name in ("settings", "engine", "decoded")}
    state.settings = load_settings(TranscriberSettings)
    state.decoded = base.decoded_budget(state.settings)
    state.engine = engine
    state.readiness.set_ready()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=base.app), base_url="http://base") as client:
            yield client
    finally:
        state.readiness.set_not_ready("starting")
        for name, value in saved.items():
            setattr(state, name, value)
