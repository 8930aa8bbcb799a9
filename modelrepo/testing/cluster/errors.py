"""Kubernetes ``Status`` errors, shaped like the real API server's.

Clients branch on ``reason`` and ``code`` (``kubectl`` prints ``message``; the ``kubernetes``
client raises ``ApiException`` with the body), so these must match what a real server sends.
"""

from __future__ import annotations

from typing import Any

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "AlreadyExists",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    504: "Timeout",
}


class StatusError(Exception):
    """An API error answered as a ``Status`` object with an HTTP code."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code, "Unknown")
        self.details = details
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        """The ``Status`` body a real server sends with this error."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def not_found(group: str, plural: str, name: str) -> StatusError:
    """404 for a missing object, worded like the real server (``pods "x" not found``)."""
    what = f"{plural}.{group}" if group else plural
    return StatusError(
        404,
        f'{what} "{name}" not found',
        details={"name": name, "group": group, "kind": plural}
        if group
        else {"name": name, "kind": plural},
    )


def already_exists(group: str, plural: str, name: str) -> StatusError:
    """409 AlreadyExists for a create of an existing name."""
    what = f"{plural}.{group}" if group else plural
    details: dict[str, Any] = {"name": name, "kind": plural}
    if group:
        details["group"] = group
    return StatusError(409, f'{what} "{name}" already exists', details=details)


def conflict(group: str, plural: str, name: str, why: str) -> StatusError:
    """409 Conflict (a stale resourceVersion, an object being deleted)."""
    what = f"{plural}.{group}" if group else plural
    details: dict[str, Any] = {"name": name, "kind": plural}
    if group:
        details["group"] = group
    return StatusError(
        409,
        f'Operation cannot be fulfilled on {what} "{name}": {why}',
        reason="Conflict",
        details=details,
    )


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str, str]]) -> StatusError:
    """422 Invalid with ``details.causes`` (reason, field, message) as the real server lists."""
    parts = [f"{field}: {message}" for _, field, message in causes]
    summary = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    qualified = f"{kind}.{group}" if group else kind
    details: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "causes": [{"reason": r, "message": m, "field": f} for r, f, m in causes],
    }
    if group:
        details["group"] = group
    return StatusError(422, f'{qualified} "{name}" is invalid: {summary}', details=details)


def bad_request(message: str) -> StatusError:
    """400 BadRequest."""
    return StatusError(400, message)
