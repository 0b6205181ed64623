"""The supervisor's one error shape: as a JSON answer, and as the last event of a started stream.

Before the status line is sent, an error is an HTTP status with OpenAI's body
``{"error": {"message", "type", "code", "source", ...}}`` (``source`` says whether the
supervisor or a backend failed). Once a 200 ``text/event-stream`` has begun (loading messages,
or a backend that fails in the middle of its stream), the status can no longer change: the same
body goes out as one SSE ``data:`` event and the stream ends.

A stream that ends in an error gets no ``data: [DONE]``: ``[DONE]`` tells a client the answer is
complete, and a client that reads until it (rather than parsing every event for ``error``) must
not take a failed answer for a whole one. It is also foreign to streams that are not OpenAI's
(``/v1/messages``, ``/completion``), which reach the same code. llama-swap sends ``[DONE]``
after a failed load; a client that parses events meets the error first either way.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    421: "permission_error",
    429: "rate_limit_error",
    502: "server_error",
    503: "server_error",
}


class RequestError(Exception):
    """A request the supervisor cannot take (bad body, ...): raised anywhere below a handler,
    answered by the guard middleware as the JSON error, never as a 500."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _error_body(status: int, message: str, code: str, *, source: str = "supervisor", **extra: Any) -> dict[str, Any]:
    """``{"error": {"message", "type", "code", "source"}}`` like OpenAI, plus where it came from."""
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "server_error"),
            "code": code,
            "source": source,
            **extra,
        }
    }


def error_response(
    status: int, message: str, code: str, *, source: str = "supervisor", retry_after: int | None = None, **extra: Any
) -> web.Response:
    """The error as a JSON answer (``Retry-After`` when a retry can succeed)."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response(_error_body(status, message, code, source=source, **extra), status=status, headers=headers)


def error_event(message: str, code: str) -> bytes:
    """The error as an SSE event. Its ``type`` is always ``server_error``: the 200 already sent
    says nothing about the cause, and OpenAI's clients raise on any ``error`` event."""
    return b"data: " + json.dumps(_error_body(500, message, code)).encode() + b"\n\n"


async def end_stream_with_error(response: web.StreamResponse, message: str, code: str) -> web.StreamResponse:
    """Send the error as the stream's last event and end the stream (no ``[DONE]``: see above)."""
    await response.write(error_event(message, code))
    await response.write_eof()
    return response
