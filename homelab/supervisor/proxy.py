"""Request parsing, filters, the headers both ways, and the forwarder through aiohttp's client.

JSON inference requests to a local backend take the lean relay (:mod:`.relay`) instead of
:func:`forward`; peers, TLS, host names and ``/upstream`` come here. Both build the backend's
request headers with :func:`upstream_headers` and filter its answer's with :func:`response_headers`.

The forwarder never holds a whole response: it copies the backend's body chunk by chunk as it
arrives (``iter_any``), so SSE tokens reach the client as soon as the backend writes them.
Only copies of the first and last 64 KiB of a long JSON answer (and of an SSE stream's tail
once ``usage`` shows up) are kept, to read ``usage`` for the metrics.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, cast

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .config import Filters, ModelConfig
from .http_errors import end_stream_with_error, error_response

log = logging.getLogger("homelab.supervisor")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
USAGE_KEEP = 1 << 16
SMALL_BODY = 256 * 1024
"""Answers with a Content-Length up to this are read whole and sent in one write."""


def parse_body(content_type: str, body: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """The JSON payload (if the body is a JSON object) and the requested model name."""
    if not body:
        return None, None
    if content_type.startswith("multipart/form-data"):
        return None, _multipart_model(content_type, body)
    if content_type.split(";")[0].strip() in ("application/json", "") or body[:1] in (b"{", b" ", b"\n"):
        try:
            payload = json.loads(body)
        except ValueError:
            return None, None
        if isinstance(payload, dict):
            model = payload.get("model")
            return payload, model if isinstance(model, str) else None
    return None, None


def _multipart_model(content_type: str, body: bytes) -> str | None:
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not message.is_multipart():
        return None
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "model":
            # decode=True gives bytes (or None) for a non-multipart part
            value = cast(bytes, part.get_payload(decode=True) or b"")
            return value.decode(errors="replace").strip()
    return None


def multipart_with_model(content_type: str, body: bytes, model: str) -> bytes:
    """The multipart body with its ``model`` field's value replaced, every other byte as it was
    (audio or image parts are never re-encoded). Unchanged when there is no such field."""
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        return body
    delimiter = b"--" + boundary.encode()
    parts = body.split(delimiter)
    for index, part in enumerate(parts):
        head, separator, value = part.partition(b"\r\n\r\n")
        if separator and _MODEL_FIELD.search(head):
            parts[index] = head + separator + model.encode() + (b"\r\n" if value.endswith(b"\r\n") else b"")
            return delimiter.join(parts)
    return body


_MODEL_FIELD = re.compile(rb'(?im)^content-disposition:[^\r\n]*;\s*name="?model"?\s*(?:;|$)')


def apply_filters(
    payload: dict[str, Any], filters: Filters, requested: str, model_name: str | None, body: bytes
) -> bytes:
    """stripParams, setParams, then setParamsByID[requested]; the model field becomes
    ``model_name`` (the model's ID or useModelName). Returns the original bytes when unchanged."""
    changed = False
    if model_name is not None and payload.get("model") != model_name:
        payload["model"] = model_name
        changed = True
    for key in filters.strip_params:
        if key != "model" and key in payload:
            del payload[key]
            changed = True
    updates = {**filters.set_params, **filters.set_params_by_id.get(requested, {})}
    for key, value in updates.items():
        if payload.get(key, _MISSING) != value:
            payload[key] = value
            changed = True
    return json.dumps(payload).encode() if changed else body


_MISSING = object()


def model_body(
    model: ModelConfig, requested: str, payload: dict[str, Any] | None, body: bytes, content_type: str = ""
) -> bytes:
    if payload is None:
        if model.use_model_name and content_type.startswith("multipart/form-data"):
            return multipart_with_model(content_type, body, model.use_model_name)
        return body
    return apply_filters(payload, model.filters, requested, model.use_model_name or model.id, body)


def key_headers(api_key: str | None) -> dict[str, str]:
    """A peer's API key, sent both ways as llama-swap does."""
    return {"Authorization": f"Bearer {api_key}", "x-api-key": api_key} if api_key else {}


def upstream_headers(request: web.Request, *, drop_auth: bool, api_key: str | None = None) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in request.headers.items():
        lower = key.lower()
        if lower in HOP_BY_HOP or (drop_auth and lower in ("authorization", "x-api-key")):
            continue
        headers.add(key, value)
    headers.update(key_headers(api_key))
    return headers


def response_headers(items: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """A backend's answer headers as the client gets them: hop-by-hop ones dropped (aiohttp sets
    the framing itself)."""
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in items:
        if key.lower() not in HOP_BY_HOP:
            headers.add(key, value)
    return headers


async def failed_before_answer(
    url: str, result: ForwardResult, exc: BaseException | str, prepared: web.StreamResponse | None
) -> web.StreamResponse:
    """The backend could not be reached, or broke off before its answer's head: 502, or the last
    event of a started stream."""
    result.status = 502
    result.upstream_error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    message = f"backend at {url} failed before answering: {result.upstream_error}"
    if prepared is not None:
        return await end_stream_with_error(prepared, message, "backend_failed")
    return error_response(502, message, "backend_failed")


async def exited_before_answer(
    url: str, result: ForwardResult, prepared: web.StreamResponse | None
) -> web.StreamResponse:
    """The process the request was admitted to is gone, so whoever answered on its port is its
    replacement (possibly still loading): not an answer to this request."""
    result.status = 502
    result.upstream_error = "backend exited before answering"
    message = f"the backend at {url} exited before answering; retry"
    if prepared is not None:
        return await end_stream_with_error(prepared, message, "backend_failed")
    return error_response(502, message, "backend_failed")


_DECODER = json.JSONDecoder()
_COUNT = re.compile(rb'"tokens_(?:predicted|evaluated)"\s*:\s*(\d+)')


def usage_from(data: bytes) -> dict[str, Any] | None:
    """The last ``usage`` object (OpenAI) in a body or SSE tail, else llama.cpp's
    ``tokens_evaluated`` / ``tokens_predicted`` (/completion). Searched from the end and only
    that small object is parsed: an embeddings answer runs to megabytes, and parsing it all a
    second time would cost more than relaying it."""
    end = len(data)
    while (at := data.rfind(b'"usage"', 0, end)) != -1:
        end = at
        rest = data[at + 7 : at + 71]
        colon = rest.find(b":")
        brace = rest.find(b"{")
        if colon == -1 or brace < colon or rest[:colon].strip() or rest[colon + 1 : brace].strip():
            continue  # "usage": null, or the word inside a string
        start = at + 7 + brace
        for size in (4096, len(data)):  # a usage object is small; grow only when it was cut
            try:
                usage, _ = _DECODER.raw_decode(data[start : start + size].decode("utf-8", "replace"))
            except ValueError:
                continue
            if isinstance(usage, dict):
                return usage
            break
    predicted = data.rfind(b'"tokens_predicted"')
    if predicted == -1:
        return None
    found = _COUNT.match(data, predicted)
    if found is None:
        return None
    evaluated = data.rfind(b'"tokens_evaluated"')
    prompt = _COUNT.match(data, evaluated) if evaluated != -1 else None
    return {"prompt_tokens": int(prompt.group(1)) if prompt else 0, "completion_tokens": int(found.group(1))}


RETRYABLE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
SEND_ATTEMPTS = 3


async def _send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes,
    headers: CIMultiDict[str],
    same_backend: Callable[[], bool] | None,
) -> aiohttp.ClientResponse:
    """Retries when a pooled keep-alive connection turns out to be closed by the backend
    before it answered, and only while the same backend process is alive (after a crash the
    port may already belong to its replacement). A refused fresh connection is not retried."""
    for attempt in range(1, SEND_ATTEMPTS + 1):
        try:
            return await session.request(
                method, url, data=body if body else None, headers=headers, allow_redirects=False
            )
        except aiohttp.ClientConnectorError:
            raise
        except RETRYABLE as exc:
            log.debug("retrying %s %s after a closed keep-alive connection: %s", method, url, exc)
            if attempt == SEND_ATTEMPTS or same_backend is None or not same_backend():
                raise
    raise AssertionError("unreachable")


class ForwardResult:
    def __init__(self) -> None:
        self.status = 0
        self.upstream_error: str | None = None
        self.usage: dict[str, Any] | None = None


async def forward(
    request: web.Request,
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: CIMultiDict[str],
    result: ForwardResult,
    *,
    prepared: web.StreamResponse | None = None,
    same_backend: Callable[[], bool] | None = None,
) -> web.StreamResponse:
    """Send the request to ``url`` and stream the answer back chunk by chunk.

    ``prepared``: an SSE response already started (loading-state messages); the backend's body
    is appended to it. A backend that fails before answering gives 502; one that dies in the
    middle of a stream gets a final SSE error event. ``same_backend`` says whether the process
    the request was admitted to still runs (stale-connection retries and answers depend on it).
    """
    try:
        upstream = await _send(session, request.method, url, body, headers, same_backend)
    except (aiohttp.ClientError, OSError) as exc:
        return await failed_before_answer(url, result, exc, prepared)
    if same_backend is not None and not same_backend():
        upstream.close()
        return await exited_before_answer(url, result, prepared)
    async with upstream:
        result.status = upstream.status
        content_type = upstream.headers.get("Content-Type", "")
        streaming = content_type.startswith("text/event-stream")
        if prepared is not None:
            response = prepared
            if upstream.status >= 400:
                text = (await upstream.read())[:4000].decode(errors="replace")
                return await end_stream_with_error(
                    response, f"backend answered {upstream.status}: {text}", "backend_error"
                )
        elif not streaming and upstream.content_length is not None and upstream.content_length <= SMALL_BODY:
            # A short answer: read it and send headers and body in one write (fewer syscalls
            # and wake-ups than streaming it; this is most non-streaming API answers).
            try:
                data = await upstream.read()
            except (aiohttp.ClientError, OSError) as exc:
                result.status = 502
                result.upstream_error = f"{type(exc).__name__}: {exc}"
                return error_response(
                    502, f"backend at {url} failed while answering: {result.upstream_error}", "backend_failed"
                )
            small = web.Response(body=data, status=upstream.status, reason=upstream.reason)
            small.headers.extend(response_headers(upstream.headers.items()))
            if "json" in content_type:
                result.usage = usage_from(data)
            return small
        else:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            response.headers.extend(response_headers(upstream.headers.items()))
            if upstream.content_length is not None and not streaming:
                response.content_length = upstream.content_length
            if streaming:
                response.headers["X-Accel-Buffering"] = "no"
                response.headers["Cache-Control"] = "no-cache"
            await response.prepare(request)
        keep = not streaming and "json" in content_type
        head = b""  # a long JSON answer: its first and last 64 KiB hold "usage" (key order varies)
        tail = b""
        content = upstream.content
        while True:
            try:
                chunk = await content.readany()
            except (aiohttp.ClientError, OSError) as exc:
                result.upstream_error = f"{type(exc).__name__}: {exc}"
                break
            if not chunk:
                break
            await response.write(chunk)
            if keep:
                if len(head) < USAGE_KEEP:
                    head += chunk[: USAGE_KEEP - len(head)]
                tail = (tail + chunk)[-USAGE_KEEP:]
            elif streaming and (b'"usage"' in chunk or b'"tokens_predicted"' in chunk or tail):
                tail = (tail + chunk)[-USAGE_KEEP:]
        if streaming:
            # llama-server closes the connection after a stream although it announces keep-alive;
            # never hand such a connection back to the pool (requests that did not say
            # "stream": true can still get an SSE answer, e.g. through /upstream).
            upstream.close()
        if result.upstream_error is None and upstream.content_length is not None and not content.is_eof():
            result.upstream_error = "backend closed the connection early"
        if result.upstream_error is not None:
            log.warning("backend at %s failed mid-response: %s", url, result.upstream_error)
            if streaming or prepared is not None:
                return await end_stream_with_error(
                    response, f"backend failed in the middle of the response: {result.upstream_error}", "backend_failed"
                )
            # The status line is gone already; closing the connection without the final
            # chunk tells the client the body is incomplete.
            if request.transport:
                request.transport.close()
            return response
        result.usage = usage_from(tail) or (usage_from(head) if keep else None)
        await response.write_eof()
        return response
