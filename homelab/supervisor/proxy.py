"""Request parsing, filters, the headers both ways, and the forwarder through aiohttp's client.

JSON inference requests to a local backend take the lean relay (:mod:`.relay`) instead of
:func:`forward`; peers, TLS, host names and ``/upstream`` come here. Both drop the same headers
(:data:`HOP_BY_HOP`, and the client's credentials where the backend has its own): this one with
:func:`upstream_headers` and :func:`response_headers`, the lean relay with :func:`upstream_fields`
and while it parses the answer's head.

The forwarder never holds a whole response: it copies the backend's body chunk by chunk as it
arrives (``iter_any``), so SSE tokens reach the client as soon as the backend writes them.
Only copies of the first and last 64 KiB of a long JSON answer (and of an SSE stream's tail
once ``usage`` shows up) are kept, to read ``usage`` for the metrics.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .config import Filters, ModelConfig, Timeouts
from .http_errors import RequestError, end_stream_with_error, error_response
from .multipart import UploadRefused, find_model, replace_model

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


def parse_body(content_type: str, body: bytes, max_depth: int = 64) -> tuple[dict[str, Any] | None, str | None]:
    """The JSON payload (if the body is a JSON object) and the requested model name. A body
    that is meant as JSON (by its type, or a ``{`` from ``curl -d``) but is not valid, or is
    nested deeper than ``max_depth``, raises :class:`RequestError` (400)."""
    if not body:
        return None, None
    if content_type.startswith("multipart/form-data"):
        return None, _multipart_model(content_type, body)
    if content_type.split(";")[0].strip() in ("application/json", "") or body.lstrip()[:1] in (b"{", b"["):
        payload = parse_json(body, max_depth)
        if isinstance(payload, dict):
            model = payload.get("model")
            return payload, model if isinstance(model, str) else None
    return None, None


LARGE_BODY = 1 << 20
"""Bodies above this are parsed in a thread: the event loop keeps relaying other streams."""


async def parse_body_off_loop(
    content_type: str, body: bytes, max_depth: int = 64
) -> tuple[dict[str, Any] | None, str | None]:
    if len(body) <= LARGE_BODY:
        return parse_body(content_type, body, max_depth)
    return await asyncio.to_thread(parse_body, content_type, body, max_depth)


def parse_json(body: bytes, max_depth: int) -> Any:
    """The body's JSON value, read by orjson (every proxied request pays this: a 116-byte chat
    body 3.6 -> 0.7 us, a 600 KB long-context one 510 -> 220 us). What orjson refuses goes to the
    standard library, which decides and words the error: it also takes what orjson does not
    (NaN, a number beyond a double, an unpaired surrogate escape, nesting past 1024), as before.
    One difference: an integer beyond 64 bits becomes a float (sent on unchanged unless a filter
    rewrites the body)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            payload = json.loads(body)
        except RecursionError:
            raise _too_deep(max_depth) from None
        except ValueError as exc:
            raise RequestError(400, f"the request body is not valid JSON: {exc}", "invalid_json") from None
    # A JSON value cannot nest deeper than it has brackets: most bodies need no further look.
    if body.count(b"{") + body.count(b"[") > max_depth and json_depth(body, max_depth + 1) > max_depth:
        raise _too_deep(max_depth)
    return payload


def _too_deep(max_depth: int) -> RequestError:
    return RequestError(
        400,
        f"the request body's JSON is nested more than {max_depth} levels deep (x-security.maxJsonDepth)",
        "json_too_deep",
    )


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_INNERMOST = re.compile(rb"\{[^{}\[\]]*\}|\[[^{}\[\]]*\]")


def json_depth(body: bytes, stop_at: int) -> int:
    """How deeply valid JSON text nests (counted up to ``stop_at``): strings removed, then the
    innermost brackets peeled one level per pass (in the regex engine, not byte by byte)."""
    text = _JSON_STRING.sub(b'""', body)
    depth = 0
    while depth < stop_at:
        text, peeled = _INNERMOST.subn(b"", text)
        if not peeled:
            return depth
        depth += 1
    return depth


def _multipart_model(content_type: str, body: bytes) -> str | None:
    found = find_model(content_type, body)
    return found.value if found else None


def multipart_with_model(content_type: str, body: bytes, model: str) -> bytes:
    """The multipart body with its ``model`` field's value replaced, every other byte as it was."""
    return replace_model(content_type, body, model)


def apply_filters(
    payload: dict[str, Any], filters: Filters, requested: str, model_name: str | None, body: bytes
) -> bytes:
    """stripParams, setParams, then setParamsByID[requested]; the model field becomes
    ``model_name`` (useModelName, a peer's name) when given. Returns the original bytes when unchanged."""
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
    # Without useModelName the model field goes out as the name it was routed by, as llama-swap
    # does: the client's own (an alias stays the alias), or the target a selector or profile pin
    # chose in its place. A backend that must see one fixed name gets useModelName.
    sent = payload.get("model")
    routed = requested if sent is not None and sent != requested else None
    return apply_filters(payload, model.filters, requested, model.use_model_name or routed, body)


def key_headers(api_key: str | None) -> dict[str, str]:
    """A peer's API key, sent both ways as llama-swap does."""
    return {"Authorization": f"Bearer {api_key}", "x-api-key": api_key} if api_key else {}


AUTH_HEADERS = frozenset({"authorization", "x-api-key"})
_DROPPED_RAW = frozenset(name.encode() for name in HOP_BY_HOP)
_DROPPED_RAW_AUTH = _DROPPED_RAW | {name.encode() for name in AUTH_HEADERS}


def upstream_headers(request: web.Request, *, drop_auth: bool, api_key: str | None = None) -> CIMultiDict[str]:
    """The client's headers as the backend gets them: hop-by-hop ones dropped, and with
    ``drop_auth`` the client's credentials too; ``api_key``: the backend's own, sent instead."""
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in request.headers.items():
        lower = key.lower()
        if lower in HOP_BY_HOP or (drop_auth and lower in AUTH_HEADERS):
            continue
        headers.add(key, value)
    headers.update(key_headers(api_key))
    return headers


def upstream_fields(request: web.Request, *, drop_auth: bool, api_key: str | None = None) -> bytes:
    """:func:`upstream_headers` as the header lines of a request head, for the lean relay: the
    client's raw bytes as they came (aiohttp's parser refused any with a line break), with no
    mapping built and no text decoded and encoded again."""
    dropped = _DROPPED_RAW_AUTH if drop_auth else _DROPPED_RAW
    fields = b"".join([b"%s: %s\r\n" % pair for pair in request.raw_headers if pair[0].lower() not in dropped])
    return fields + _key_fields(api_key) if api_key else fields


@functools.lru_cache(maxsize=64)
def _key_fields(api_key: str) -> bytes:
    """:func:`key_headers` as header lines (a backend's key is the same for its every request)."""
    return "".join(f"{key}: {value}\r\n" for key, value in key_headers(api_key).items()).encode("latin-1")


def response_headers(items: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """A backend's answer headers as the client gets them (:func:`passed_to_client`)."""
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in items:
        if passed_to_client(key.lower()):
            headers.add(key, value)
    return headers


def passed_to_client(lower_name: str) -> bool:
    """Whether a backend's answer header (its name in lower case) goes on to the client: not a
    hop-by-hop one (aiohttp sets the framing itself), and not the backend's own CORS: a page may
    use this server only as the guard allows (:func:`.guard.cors_on_prepare` adds ours)."""
    return lower_name not in HOP_BY_HOP and not lower_name.startswith("access-control-")


async def failed_before_answer(
    url: str | URL, result: ForwardResult, exc: BaseException | str, prepared: web.StreamResponse | None
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
    url: str | URL, result: ForwardResult, prepared: web.StreamResponse | None
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


Body = bytes | AsyncIterator[bytes]
"""A request body to forward: whole, or streamed from the client (an upload)."""

RETRYABLE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
SEND_ATTEMPTS = 3


@functools.lru_cache(maxsize=256)
def client_timeout(timeouts: Timeouts, https: bool, connect_cap: float | None = None) -> aiohttp.ClientTimeout:
    """llama-swap's ``timeouts`` for one request: ``connect`` bounds the TCP connect (and, capped
    by ``connect_cap``, never exceeds the peer monitor's own); for https the TLS handshake gets
    ``tlsHandshake`` more. 0 disables a limit. No total limit: a load or a long answer may take long."""
    connect: float | None = float(timeouts.connect) or None
    if connect_cap is not None:
        connect = min(connect, connect_cap) if connect is not None else connect_cap
    whole = connect
    if https and connect is not None:
        whole = connect + timeouts.tls_handshake if timeouts.tls_handshake else None
    return aiohttp.ClientTimeout(total=None, sock_connect=connect, connect=whole)


class ResponseHeaderTimeout(aiohttp.ClientError):
    """No response headers within ``timeouts.responseHeader``."""


async def _send(
    session: aiohttp.ClientSession,
    method: str,
    url: str | URL,
    body: Body,
    headers: CIMultiDict[str],
    same_backend: Callable[[], bool] | None,
    timeouts: Timeouts | None = None,
    connect_cap: float | None = None,
) -> aiohttp.ClientResponse:
    """Retries when a pooled keep-alive connection turns out to be closed by the backend
    before it answered, and only while the same backend process is alive (after a crash the
    port may already belong to its replacement). A refused fresh connection is not retried.
    ``timeouts``: the model's or peer's (connect; responseHeader from sending to the headers)."""
    options: dict[str, Any] = {}
    header_limit: float | None = None
    if timeouts is not None:
        options["timeout"] = client_timeout(timeouts, str(url).startswith("https:"), connect_cap)
        header_limit = float(timeouts.response_header) or None
    for attempt in range(1, SEND_ATTEMPTS + 1):
        try:
            sending = session.request(
                method, url, data=body if body else None, headers=headers, allow_redirects=False, **options
            )
            if header_limit is None:
                return await sending
            try:
                async with asyncio.timeout(header_limit):
                    return await sending
            except TimeoutError:
                message = f"no response headers within {header_limit:g}s (timeouts.responseHeader)"
                raise ResponseHeaderTimeout(message) from None
        except aiohttp.ClientConnectorError:
            raise
        except RETRYABLE as exc:
            log.debug("retrying %s %s after a closed keep-alive connection: %s", method, url, exc)
            # a streamed upload (multipart.StreamedForm) was consumed by the failed attempt
            replayable = isinstance(body, bytes)
            if attempt == SEND_ATTEMPTS or same_backend is None or not replayable or not same_backend():
                raise
    raise AssertionError("unreachable")


def join_url(base: str, path: str | URL) -> str | URL:
    """The backend URL: ``base`` + a path, or + an already-encoded path (kept byte for byte)."""
    if isinstance(path, URL):
        return URL(base.rstrip("/") + str(path), encoded=True)
    return base + path


class ForwardResult:
    def __init__(self) -> None:
        self.status = 0
        self.upstream_error: str | None = None
        self._usage: dict[str, Any] | None = None
        self._usage_in: bytes | None = None
        self.client_stalled: str | None = None
        """Why the client's connection was closed: it stopped reading (``x-security.writeTimeout``)."""

    @property
    def usage(self) -> dict[str, Any] | None:
        """The answer's token counts (:func:`usage_from`), for the metrics and the activity log."""
        if self._usage_in is not None:
            self._usage, self._usage_in = usage_from(self._usage_in), None
        return self._usage

    @usage.setter
    def usage(self, value: dict[str, Any] | None) -> None:
        self._usage, self._usage_in = value, None

    def usage_in(self, body: bytes) -> None:
        """``usage`` is read from ``body`` when first asked: after a short answer has gone out."""
        self._usage, self._usage_in = None, body


WRITE_TIMEOUT_REASON = "write_timeout"
"""The ``reason`` label of ``homelab_errors_total`` for a client cut off by :func:`cut_off_stalled_client`."""


def cut_off_stalled_client(request: web.Request, result: ForwardResult, write_timeout: float | None) -> None:
    """A client left the answer unread for ``write_timeout`` seconds: drop its connection at once
    (``abort``: a ``close`` would wait for the unread bytes to leave) so that it holds no model.
    The caller closes the backend's connection, and the request's owner logs and counts it."""
    result.client_stalled = f"it read nothing for {write_timeout:g}s (x-security.writeTimeout)"
    if request.transport is not None:
        request.transport.abort()


async def write_bounded(
    response: web.StreamResponse, chunk: bytes, transport: asyncio.Transport | None, write_timeout: float | None
) -> None:
    """``response.write(chunk)``, given at most ``write_timeout`` seconds when the client's socket
    is full. Only a write that may pause the transport (something is queued already, or the chunk
    alone is half its high-water mark) gets the timer: a token to a client that reads costs none."""
    if transport is None or write_timeout is None:
        await response.write(chunk)
    elif transport.get_write_buffer_size() or 2 * len(chunk) > transport.get_write_buffer_limits()[1]:
        async with asyncio.timeout(write_timeout):
            await response.write(chunk)
    else:
        await response.write(chunk)


async def forward(
    request: web.Request,
    session: aiohttp.ClientSession,
    url: str | URL,
    body: Body,
    headers: CIMultiDict[str],
    result: ForwardResult,
    *,
    prepared: web.StreamResponse | None = None,
    same_backend: Callable[[], bool] | None = None,
    timeouts: Timeouts | None = None,
    connect_cap: float | None = None,
    write_timeout: float | None = None,
) -> web.StreamResponse:
    """Send the request to ``url`` and stream the answer back chunk by chunk.

    ``prepared``: an SSE response already started (loading-state messages); the backend's body
    is appended to it. A backend that fails before answering gives 502; one that dies in the
    middle of a stream gets a final SSE error event. ``same_backend`` says whether the process
    the request was admitted to still runs (stale-connection retries and answers depend on it).
    ``write_timeout``: how long a client that stops reading may hold the answer (and the backend).
    """
    try:
        upstream = await _send(session, request.method, url, body, headers, same_backend, timeouts, connect_cap)
    except (aiohttp.ClientError, OSError) as exc:
        if isinstance(exc.__cause__, UploadRefused) and prepared is None:
            raise exc.__cause__ from None  # the client's fault, answered 413/408 (inference._dispatch_form)
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
                result.usage_in(data)
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
        sink = request.transport
        while True:
            try:
                chunk = await content.readany()
            except (aiohttp.ClientError, OSError) as exc:
                result.upstream_error = f"{type(exc).__name__}: {exc}"
                break
            if not chunk:
                break
            try:
                await write_bounded(response, chunk, sink, write_timeout)
            except TimeoutError:
                upstream.close()
                cut_off_stalled_client(request, result, write_timeout)
                return response
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
        try:
            async with asyncio.timeout(write_timeout):
                await response.write_eof()
        except TimeoutError:
            cut_off_stalled_client(request, result, write_timeout)
        return response


Relay = Callable[..., Awaitable[web.StreamResponse]]
"""What passes an admitted exchange on: :func:`forward` (HTTP), or the websocket relay of
:mod:`.upstream`; called as ``relay(request, session, url, body, headers, result, **options)``."""
