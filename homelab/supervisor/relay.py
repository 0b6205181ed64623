"""The lean relay: a local backend's answer copied to the client as raw bytes, in the event loop's
callbacks, without a coroutine step per token.

Why not aiohttp's client here: each streamed token crossed its response parser, a StreamReader,
a future, a task wake-up, then aiohttp's chunk writer on the way out. This module speaks HTTP/1.1
to the backend over plain TCP: a stream on a connection of its own (``Connection: close``, as
llama-server closes it after a stream anyway), other requests on a connection kept alive in the
backend's :class:`ConnectionPool` (a short answer on a new connection cost ~0.25 ms of the
supervisor's CPU and ~0.4 ms of added latency, 2026-12-03, docs/benchmarks.md):

- the request goes out in one write; the answer's head is split into its lines here (the
  standard library's email parser cost ~35 us per answer, more than the rest of a short answer);
- a chunked body (llama-server's SSE) is forwarded as the backend framed it: complete chunks go
  to the client's transport from :meth:`_Upstream.data_received` as they arrive, a partial chunk
  waits for its end, and the backend's last chunk is replaced by aiohttp's own end of body, so
  the client's stream is always at a chunk boundary where an error event can still be added;
- a body with a Content-Length up to :data:`~.proxy.SMALL_BODY` is read whole and answered in
  one write; a longer one (or one that ends at the close) is framed as chunks while it streams;
- only a bounded tail of the body is kept, to read the final ``usage`` for the metrics and the
  activity log, and only once ``"usage"`` (or llama.cpp's ``"tokens_predicted"``) shows up.

Measured (``homelab bench proxy --baseline``, docs/benchmarks.md): 0.2-0.3 ms less added latency
per request; the CPU per streamed token (~20 us) stayed within the run-to-run spread of the code
before: it goes to the event loop and the two system calls per token, not to Python.

A client that is gone closes the backend connection at the next write (llama-server then stops
generating); a full client socket pauses reading from the backend until it drains, for at most
``x-security.writeTimeout`` seconds (then both connections are closed). Peers, TLS,
host names and the ``/upstream`` pass-through keep aiohttp's client (:func:`.proxy.forward`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Any, cast

from aiohttp import HttpVersion11, web
from multidict import CIMultiDict
from yarl import URL

from .http_errors import end_stream_with_error, error_response
from .proxy import (
    SMALL_BODY,
    USAGE_KEEP,
    ForwardResult,
    cut_off_stalled_client,
    exited_before_answer,
    failed_before_answer,
    passed_to_client,
    usage_from,
)

log = logging.getLogger("homelab.supervisor")

HEAD_LIMIT = 1 << 16
"""A response head longer than this is refused (llama-server's are a few hundred bytes)."""
HIGH_WATER = 1 << 16
"""Client-side write buffer above which reading from the backend pauses until it drains."""
ERROR_PREVIEW = 4000


def _has_usage(payload: bytes) -> bool:
    """Whether token counts may start here: OpenAI's ``usage``, llama.cpp's ``tokens_predicted``
    (two plain tests, not a loop over markers: this runs for every chunk of a stream)."""
    return b'"usage"' in payload or b'"tokens_predicted"' in payload


CLIENT_GONE = "the client went away"
CLIENT_STALLED = "the client stopped reading"


class BackendFailed(Exception):
    """The backend could not be reached or broke off before its answer's head."""


class _Head:
    """Status, reason and the header fields of the backend's answer that go on to the client
    (:func:`~.proxy.passed_to_client`), with what the relay needs from those it drops: the
    framing and whether the backend keeps the connection."""

    __slots__ = ("status", "reason", "headers", "content_type", "chunked", "length", "keep_alive")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        *,
        content_type: str = "",
        chunked: bool = False,
        length: int | None = None,
        keep_alive: bool = True,
    ) -> None:
        self.status, self.reason, self.headers = status, reason, headers
        self.content_type, self.chunked, self.length = content_type, chunked, length
        self.keep_alive = keep_alive
        """The backend keeps the connection open after this answer (HTTP/1.1 without ``close``)."""


def _parse_head(raw: bytes) -> _Head:
    """The status line and header fields (RFC 9112 section 4 and 5), in one pass. Not the
    standard library's email parser: at ~35 us per answer it cost more than everything else the
    relay does for a short answer; a loopback backend's head is a handful of plain lines."""
    status_line, _, fields = raw.decode("latin-1").partition("\r\n")
    version, _, status_reason = status_line.partition(" ")
    code, _, reason = status_reason.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise BackendFailed(f"not an HTTP/1.x answer: {status_line[:80]!r}")
    head = _Head(int(code), reason.strip(), [], keep_alive=version == "HTTP/1.1")
    for line in fields.split("\r\n") if fields else ():
        key, colon, value = line.partition(":")
        if not colon or not key or key != key.strip():
            raise BackendFailed(f"malformed header line {line[:80]!r}")
        value = value.strip(" \t")
        lower = key.lower()
        if passed_to_client(lower):
            head.headers.append((key, value))
            if lower == "content-type":
                head.content_type = value
        elif lower == "transfer-encoding":
            head.chunked = "chunked" in value.lower()
        elif lower == "content-length":
            head.length = int(value) if value.isdigit() else None
        elif lower == "connection" and "close" in value.lower():
            head.keep_alive = False
    return head


class _Upstream(asyncio.Protocol):
    """One connection to the backend, and the exchange on it: a request and its answer. The head
    is handed to :func:`relay` through ``head``; once it has chosen where the body goes
    (:meth:`attach`), body bytes are written to the client's transport from here (or collected,
    for a short answer). ``done`` resolves with None (the body is complete) or the reason it broke
    off. A connection whose answer ended exactly at its length, with keep-alive on both sides, is
    ``reusable``: :class:`ConnectionPool` keeps it for the next exchange (:meth:`start`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, request: bytes, keep_alive: bool = False) -> None:
        self.transport: asyncio.Transport | None = None
        self._loop = loop
        self.pool: ConnectionPool | None = None
        """Set while the connection waits in a pool (idle): its loss takes it out."""
        self.reused = False
        """Taken from a pool: it was accepted by the process the pool belongs to."""
        self._begin(request, keep_alive)

    def _begin(self, request: bytes, keep_alive: bool) -> None:
        """The state of one exchange."""
        self.request = request
        self.keep_alive = keep_alive
        """The request did not ask to close the connection after its answer."""
        self.reusable = False
        self.received = False
        """Some of the answer arrived (a pooled connection that failed before that may be retried)."""
        self.head: asyncio.Future[_Head] = self._loop.create_future()
        self.done: asyncio.Future[str | None] = self._loop.create_future()
        self.paused = False
        """Reading stopped for a full client socket; :func:`relay` drains it and calls :meth:`resume`."""
        self._waiter: asyncio.Future[None] | None = None
        self._pending = b""
        self._head: _Head | None = None
        self._attached = False
        self._lost: tuple[Exception | None] | None = None
        """The connection closed before attach() (with this exception, if any)."""
        self._chunked = False
        self._sink: asyncio.Transport | None = None
        self._remaining: int | None = None
        self.body: list[bytes] = []
        """Without a sink: the body as received (chunk framing included)."""
        self._collected = 0
        self.tail = b""
        """The last :data:`USAGE_KEEP` payload bytes, once a usage marker has been seen."""

    def start(self, request: bytes, keep_alive: bool) -> None:
        """The next exchange on a kept-alive connection (taken from a pool)."""
        self._begin(request, keep_alive)
        self.reused = True
        assert self.transport is not None
        self.transport.write(request)

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.pool is not None:  # idle: nothing was asked, so this is not an answer
            self.pool.discard(self)
            return
        self.received = True
        if self._head is None:
            self._pending += data
            while self._head is None:
                end = self._pending.find(b"\r\n\r\n")
                if end == -1:
                    if len(self._pending) > HEAD_LIMIT:
                        self._fail_head(BackendFailed(f"answer head over {HEAD_LIMIT} bytes"))
                    return
                try:
                    head = _parse_head(self._pending[:end])
                except BackendFailed as exc:
                    self._fail_head(exc)
                    return
                self._pending = self._pending[end + 4 :]
                if not 100 <= head.status < 200:  # an interim answer (100 Continue) precedes the real one
                    self._head = head
            data, self._pending = self._pending, b""
            self.head.set_result(self._head)
        if self.done.done():
            return
        if not self._attached:  # relay() has not chosen where the body goes yet
            self._pending += data
            if len(self._pending) > HIGH_WATER and self.transport is not None:
                self.transport.pause_reading()
            return
        self._feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self.pool is not None:
            self.pool.discard(self)
            return
        if not self.head.done():
            self._fail_head(BackendFailed(f"{type(exc).__name__}: {exc}" if exc else "connection closed"))
        elif not self._attached:
            self._lost = (exc,)  # the whole answer may be in _pending already: decided in attach()
        else:
            self._ended(exc)

    def _ended(self, exc: Exception | None) -> None:
        """The connection closed after the head: the end of a body without a length, else too early."""
        if not self._chunked and self._remaining is None:
            self._finish(None)
        else:
            self._finish(f"{type(exc).__name__}: {exc}" if exc else "backend closed the connection early")

    # -- driven by relay()
    def attach(self, sink: asyncio.Transport | None) -> None:
        """Send the body to ``sink`` (chunk framing kept, or added), or collect it in ``body``."""
        assert self._head is not None
        self._attached, self._sink = True, sink
        self._chunked = self._head.chunked
        self._remaining = None if self._chunked else self._head.length
        pending, self._pending = self._pending, b""
        if self.transport is not None and self._lost is None:
            self.transport.resume_reading()
        if pending or self._remaining == 0:
            self._feed(pending)
        if self._lost is not None and not self.done.done():
            self._ended(self._lost[0])

    def wait(self) -> asyncio.Future[None]:
        """Resolves when the body is done or reading paused for a full client socket."""
        self._waiter = self._loop.create_future()
        if self.done.done() or self.paused:
            self._waiter.set_result(None)
        return self._waiter

    def resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self.done.done():
            self.transport.resume_reading()

    # -- body
    def _feed(self, data: bytes) -> None:
        if self._chunked:
            self._feed_chunked(self._pending + data if self._pending else data)
            return
        extra = False
        if self._remaining is not None:
            extra = len(data) > self._remaining
            data = data[: self._remaining]
            self._remaining -= len(data)
        if data:
            self._keep_tail(data)
            self._emit(b"%x\r\n%b\r\n" % (len(data), data) if self._sink is not None else data)
        if self._remaining == 0:
            # the answer ended at its length: the connection may carry the next request
            assert self._head is not None
            self._finish(None, reuse=self.keep_alive and self._head.keep_alive and not extra and self._lost is None)

    def _feed_chunked(self, buf: bytes) -> None:
        """Forward every complete chunk of ``buf`` as it is; keep a partial one for later."""
        pos, size, end = 0, -1, len(buf)
        while (eol := buf.find(b"\r\n", pos)) != -1:
            try:
                size = int(buf[pos:eol].split(b";", 1)[0], 16)
            except ValueError:
                self._finish(f"bad chunk header {buf[pos : pos + 40]!r}")
                return
            if size == 0:
                break
            stop = eol + 4 + size
            if stop > end:
                size = -1
                break
            if buf[stop - 2 : stop] != b"\r\n":
                self._finish("a chunk without its CRLF")
                return
            pos, size = stop, -1
        if pos:
            region = buf[:pos]
            if self.tail or _has_usage(region):
                self._keep_tail(_unchunk(region))
            self._emit(region)
        self._pending = buf[pos:]
        if size == 0:
            self._finish(None)  # the backend's last chunk: aiohttp's write_eof() sends ours

    def _keep_tail(self, payload: bytes) -> None:
        if self.tail or _has_usage(payload):
            self.tail = (self.tail + payload)[-USAGE_KEEP:]

    def _emit(self, data: bytes) -> None:
        sink = self._sink
        if sink is None:
            self.body.append(data)
            self._collected += len(data)
            if self._collected > SMALL_BODY:
                self._finish(None)  # only the start of an error answer is shown
            return
        if sink.is_closing():
            self._finish(CLIENT_GONE)
            return
        sink.write(data)
        if not self.paused and sink.get_write_buffer_size() > HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _finish(self, error: str | None, reuse: bool = False) -> None:
        if not self.done.done():
            self.done.set_result(error)
            self.reusable = reuse
        if self.transport is not None and not self.reusable:
            self.transport.close()
        self._wake()

    def _fail_head(self, exc: BackendFailed) -> None:
        if not self.head.done():
            self.head.set_exception(exc)
        self._finish(str(exc))

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class ConnectionPool:
    """Idle keep-alive connections to one backend process, for the next request to it.

    A short answer on a new connection cost a TCP connect and close on both sides and, in
    llama-server, an accept and a hand-over to a worker thread, on the request's critical path;
    clients that call a backend directly keep their connection. Only answers that ended exactly at
    their ``Content-Length`` leave a connection here (llama-server closes the connection after a
    stream anyway, and :func:`relay` asks for that). At most ``limit`` wait, the most recently used
    is taken first, and one idle for more than ``idle_max`` seconds is closed when met: cpp-httplib,
    which llama.cpp's servers use, closes idle connections after 5 s. The owner (the backend)
    closes the pool when it stops, so a connection never outlives its process."""

    def __init__(self, limit: int = 8, idle_max: float = 4.0) -> None:
        self.limit, self.idle_max = limit, idle_max
        self._idle: list[tuple[float, _Upstream]] = []
        self.closed = False

    def take(self, now: float) -> _Upstream | None:
        while self._idle:
            since, proto = self._idle.pop()
            proto.pool = None
            if now - since <= self.idle_max and proto.transport is not None and not proto.transport.is_closing():
                return proto
            proto.close()
        return None

    def give(self, proto: _Upstream, now: float) -> None:
        if self.closed or len(self._idle) >= self.limit or proto.transport is None or proto.transport.is_closing():
            proto.close()
            return
        proto.pool = self
        proto.transport.resume_reading()  # a close or stray bytes while idle must be seen
        self._idle.append((now, proto))

    def discard(self, proto: _Upstream) -> None:
        """An idle connection closed by the backend, or sent something unasked."""
        self._idle = [(since, p) for since, p in self._idle if p is not proto]
        proto.pool = None
        proto.close()

    def __len__(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        self.closed = True
        idle, self._idle = self._idle, []
        for _, proto in idle:
            proto.pool = None
            proto.close()


def _unchunk(region: bytes) -> bytes:
    """The payload of complete chunks (for the usage tail only)."""
    out = []
    pos = 0
    while (eol := region.find(b"\r\n", pos)) != -1:
        size = int(region[pos:eol].split(b";", 1)[0], 16)
        out.append(region[eol + 2 : eol + 2 + size])
        pos = eol + 4 + size
    return b"".join(out)


def relayable(request: web.Request, url: str) -> bool:
    """Where the relay speaks for aiohttp's client: plain HTTP to an IP address, for an HTTP/1.1
    client (the relayed chunks need chunked framing towards the client)."""
    return request.version >= HttpVersion11 and _plain_http_to_ip(url)


@lru_cache(maxsize=256)
def _plain_http_to_ip(url: str) -> bool:
    parsed = URL(url)
    if parsed.scheme != "http" or parsed.raw_host is None:
        return False
    try:
        ipaddress.ip_address(parsed.raw_host)
    except ValueError:
        return False
    return True


def _request_bytes(method: str, url: str, fields: bytes, body: bytes, keep_alive: bool) -> bytes:
    framing = b"Content-Length: %d\r\n" % len(body) if body or method in ("POST", "PUT", "PATCH") else b""
    if not keep_alive:
        framing += b"Connection: close\r\n"
    return b"".join((_request_line(method, url), fields, framing, b"\r\n", body))


@lru_cache(maxsize=256)
def _request_line(method: str, url: str) -> bytes:
    """The request line and ``Host`` (the same for every request to one backend route)."""
    target, host, port = _target(url)
    return f"{method} {target.raw_path_qs} HTTP/1.1\r\nHost: {host}:{port}\r\n".encode("latin-1")


@lru_cache(maxsize=256)
def _target(url: str) -> tuple[URL, str, int]:
    parsed = URL(url)
    assert parsed.raw_host is not None and parsed.port is not None  # relayable(url)
    return parsed, parsed.raw_host, parsed.port


async def _exchange(
    url: str,
    request: bytes,
    keep_alive: bool,
    pool: ConnectionPool | None,
    connect_timeout: float | None,
    same_backend: Callable[[], bool] | None,
) -> tuple[_Upstream, _Head]:
    """The request sent and the answer's head: on a pooled connection when one waits, else (or
    when the pooled one turns out closed before any answer: the backend dropped it while idle,
    and it is the same process) on a new one. Raises OSError, TimeoutError or BackendFailed."""
    loop = asyncio.get_running_loop()
    pooled = pool.take(loop.time()) if pool is not None and keep_alive else None
    if pooled is not None:
        pooled.start(request, keep_alive)
        try:
            return pooled, await pooled.head
        except BackendFailed:
            pooled.close()
            if pooled.received or (same_backend is not None and not same_backend()):
                raise
            log.debug("a kept-alive connection to %s was closed before it answered; opening a new one", url)
    _, host, port = _target(url)
    proto = _Upstream(loop, request, keep_alive)
    try:
        async with asyncio.timeout(connect_timeout):
            await loop.create_connection(lambda: proto, host, port)
        return proto, await proto.head
    except BaseException:
        proto.close()
        raise


async def relay(
    request: web.Request,
    url: str,
    body: bytes,
    fields: bytes,
    result: ForwardResult,
    *,
    connect_timeout: float | None,
    close: bool = False,
    prepared: web.StreamResponse | None = None,
    same_backend: Callable[[], bool] | None = None,
    write_timeout: float | None = None,
    pool: ConnectionPool | None = None,
) -> web.StreamResponse:
    """Send the request to ``url`` (see :func:`relayable`) and relay the answer; the same
    answers and errors as :func:`.proxy.forward` (``write_timeout`` too). ``fields``: the
    request's header lines (:func:`.proxy.upstream_fields`); ``pool``: the backend's kept-alive
    connections, used unless ``close`` (a stream: llama-server closes its connection after one)."""
    keep_alive = pool is not None and not close
    data = _request_bytes(request.method, url, fields, body, keep_alive)
    try:
        proto, head = await _exchange(url, data, keep_alive, pool, connect_timeout, same_backend)
    except (OSError, TimeoutError) as exc:
        return await failed_before_answer(url, result, exc, prepared)
    except BackendFailed as exc:
        return await failed_before_answer(url, result, str(exc), prepared)
    try:
        # A new connection may have reached a replacement on the same port; a pooled one was
        # accepted by the process the pool belongs to, which closes the pool when it stops.
        if not proto.reused and same_backend is not None and not same_backend():
            return await exited_before_answer(url, result, prepared)
        result.status = head.status
        streaming = head.content_type.startswith("text/event-stream")
        if (
            prepared is not None
            and head.status >= 400
            or (prepared is None and not streaming and head.length is not None and head.length <= SMALL_BODY)
        ):
            return await _whole(request, url, proto, head, result, prepared)
        return await _stream(request, url, proto, head, result, prepared, streaming, write_timeout)
    finally:
        if pool is not None and proto.reusable:
            pool.give(proto, asyncio.get_running_loop().time())
        else:
            proto.close()


async def _whole(
    request: web.Request,
    url: str,
    proto: _Upstream,
    head: _Head,
    result: ForwardResult,
    prepared: web.StreamResponse | None,
) -> web.StreamResponse:
    """A short answer read whole: one write with its headers (most non-streaming answers), or the
    error that ends an already started stream."""
    proto.attach(None)
    error = await proto.done
    data = b"".join(proto.body)
    if head.chunked:
        data = _unchunk(data)
    if prepared is not None:
        text = data[:ERROR_PREVIEW].decode(errors="replace")
        return await end_stream_with_error(prepared, f"backend answered {head.status}: {text}", "backend_error")
    if error is not None:
        result.status = 502
        result.upstream_error = error
        return error_response(502, f"backend at {url} failed while answering: {error}", "backend_failed")
    response = web.Response(body=data, status=head.status, reason=head.reason, headers=CIMultiDict(head.headers))
    if "json" in head.content_type:
        result.usage_in(data)
    return response


async def _stream(
    request: web.Request,
    url: str,
    proto: _Upstream,
    head: _Head,
    result: ForwardResult,
    prepared: web.StreamResponse | None,
    streaming: bool,
    write_timeout: float | None,
) -> web.StreamResponse:
    if prepared is not None:
        response = prepared
    else:
        response = web.StreamResponse(status=head.status, reason=head.reason, headers=CIMultiDict(head.headers))
        if streaming:
            response.headers["X-Accel-Buffering"] = "no"
            response.headers["Cache-Control"] = "no-cache"
        response.enable_chunked_encoding()
    writer = await response.prepare(request)
    sink = request.transport
    if writer is None or sink is None:
        raise ConnectionResetError(CLIENT_GONE)
    send_headers: Any = getattr(writer, "send_headers", None)
    if send_headers is not None:  # newer aiohttp holds them back to join them with the first write
        send_headers()
    proto.attach(sink)
    while not proto.done.done():
        await proto.wait()
        if proto.paused and not proto.done.done():
            try:
                async with asyncio.timeout(write_timeout):
                    await writer.drain()
            except TimeoutError:
                proto._finish(CLIENT_STALLED)  # closes the backend's connection: it stops generating
                cut_off_stalled_client(request, result, write_timeout)
                return response
            proto.resume()
    error = proto.done.result()
    if error == CLIENT_GONE:
        raise ConnectionResetError(error)
    if error is not None:
        result.upstream_error = error
        log.warning("backend at %s failed mid-response: %s", url, error)
        return await end_stream_with_error(
            response, f"backend failed in the middle of the response: {error}", "backend_failed"
        )
    result.usage = usage_from(proto.tail) if proto.tail else None
    try:
        async with asyncio.timeout(write_timeout):  # the last bytes may still wait for the client
            await response.write_eof()
    except TimeoutError:
        cut_off_stalled_client(request, result, write_timeout)
    return response
