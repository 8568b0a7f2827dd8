"""Work that ends when the caller hangs up: the one rule both the proxy and the base service
apply to a request whose answer takes long.

Starlette does not cancel a handler whose caller went away, so without this a service waits
out work nobody will read: the base service would run queued chunks for a closed connection,
and the proxy would wait for the backend's answer (up to its chunk or upstream timeout) while
the backend computes it. Cancelling the work instead removes the base's queued chunks unrun
(``stt_queue_cancelled_total``) and closes the proxy's backend call, whose backend then sees
its own caller leave.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.types import Receive

from core.errors import ApiError

T = TypeVar("T")


async def caller_gone(receive: Receive) -> None:
    """Return when the caller hangs up. Called once its body has been read: the server's next
    message is then ``http.disconnect``, sent when the connection closes (or once the answer is
    complete, when nobody waits for this any more)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_caller_leaves(
    receive: Receive, work: Awaitable[T], message: str, on_hangup: Callable[[], None] | None = None
) -> T:
    """Await ``work``; if the caller hangs up first, cancel it, call ``on_hangup`` (a counter)
    and answer 499 ``client_closed_request`` with ``message``, to nobody."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(caller_gone(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if on_hangup is not None:
                on_hangup()
            raise ApiError(499, "client_closed_request", message)
        return task.result()
    finally:
        for pending in (task, watcher):
            pending.cancel()
