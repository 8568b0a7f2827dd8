"""One error shape for every service: ``{"error": {"code", "message"}}`` with a 4xx/5xx status.

Clients (and people reading curl output) get a machine-readable ``code`` and a ``message``
that says what was wrong and what to send instead. The class lives here, free of any web
framework, because shared code such as audio decoding raises it in the client too; the
services render it (:func:`services.common.errors.install_error_handlers`).
"""

from __future__ import annotations


class ApiError(Exception):
    """An error the caller can act on; rendered as JSON with its HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}
