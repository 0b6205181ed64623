"""The lean relay (homelab.supervisor.relay) against a scripted backend on a real loopback socket:
byte-exact chunked streams whatever the read boundaries, the usage tail, the error event on a
backend that breaks off (a partial chunk never reaches the client), close-delimited and long
bodies, a client that stops reading or leaves, and the errors before an answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from homelab.supervisor.proxy import SMALL_BODY, ForwardResult, upstream_fields, upstream_headers
from homelab.supervisor.relay import ConnectionPool, relay, relayable

from .helpers import serve_app

Step = bytes | float | None
"""bytes: written (and drained); float: a pause in seconds; None: close the connection."""


@dataclass
class Backend:
    port: int
    script: list[Step] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\n\r\n"
EVENTS = [
    b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n',
    b'data: {"choices":[{"delta":{"content":"lo"}}]}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}\n\n',
    b"data: [DONE]\n\n",
]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head and body (by its Content-Length), as the relay wrote them."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        0,
    )
    return head, await reader.readexactly(length)


@contextlib.asynccontextmanager
async def serve_route(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    """An aiohttp server on loopback whose every POST goes to ``handler``; yields its URL."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    async with serve_app(app) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    state = Backend(port=0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await read_request(reader)
        state.requests.append(head + body)
        try:
            for step in state.script:
                if step is None:
                    break
                if isinstance(step, float):
                    await asyncio.sleep(step)
                    continue
                writer.write(step)
                await writer.drain()
            else:
                # the whole script was sent: like llama-server, wait for the client to go
                await reader.read()
                state.client_closed.set()
        except (ConnectionError, OSError):
            state.client_closed.set()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    yield state
    server.close()


Front = Callable[[], Awaitable[tuple[str, list[ForwardResult]]]]


@pytest.fixture
async def front(backend: Backend) -> AsyncIterator[tuple[str, list[ForwardResult]]]:
    """An aiohttp server whose one route relays to the scripted backend."""
    results: list[ForwardResult] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        result = ForwardResult()
        results.append(result)
        url = f"http://127.0.0.1:{backend.port}{request.path_qs}"
        return await relay(
            request, url, await request.read(), upstream_fields(request, drop_auth=False), result, connect_timeout=5
        )

    async with serve_route(handler) as url:
        yield url, results


async def post(url: str, body: object = None) -> tuple[int, bytes, aiohttp.ClientResponse]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s,
        s.post(url + "/v1/chat/completions?x=1", json=body or {"model": "m", "stream": True}) as resp,
    ):
        return resp.status, await resp.read(), resp


async def test_chunked_stream_is_relayed_byte_exact_across_any_read_boundary(backend: Backend, front) -> None:
    url, results = front
    framed = b"".join(chunk(e) for e in EVENTS)
    # the head split in two, a chunk header apart from its data, a chunk split in its middle
    backend.script = [SSE_HEAD[:20], 0.02, SSE_HEAD[20:] + framed[:3], 0.02, framed[3:40], 0.02, framed[40:]]
    backend.script += [b"0\r\n\r\n"]
    status, body, resp = await post(url)
    assert status == 200
    assert body == b"".join(EVENTS)
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert "Keep-Alive" not in resp.headers  # hop-by-hop: not the backend's to set
    assert results[0].usage == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    assert results[0].status == 200 and results[0].upstream_error is None
    sent = backend.requests[0]
    assert sent.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n")
    assert b"\r\nConnection: close\r\n" in sent
    assert json.loads(sent.split(b"\r\n\r\n", 1)[1]) == {"model": "m", "stream": True}


async def test_backend_breaking_off_mid_chunk_ends_with_the_error_event_and_no_done(backend: Backend, front) -> None:
    url, results = front
    backend.script = [SSE_HEAD + chunk(EVENTS[0]) + chunk(EVENTS[1])[:12], 0.02, None]
    status, body, _ = await post(url)
    assert status == 200
    first, error = body.split(b"\n\n", 1)
    assert first + b"\n\n" == EVENTS[0]
    # the half-sent event never reached the client: the error is a whole event of its own
    assert b'"lo"' not in body
    event = json.loads(error.removeprefix(b"data: "))
    assert event["error"]["code"] == "backend_failed"
    assert b"[DONE]" not in body
    assert results[0].upstream_error is not None


async def test_short_json_answer_keeps_its_headers_and_usage(backend: Backend, front) -> None:
    url, results = front
    answer = json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode()
    backend.script = [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Trace: abc\r\n"
        b"Content-Length: %d\r\nConnection: keep-alive\r\n\r\n" % len(answer),
        answer[:10],
        0.02,
        answer[10:],
    ]
    status, body, resp = await post(url, {"model": "m"})
    assert (status, body) == (200, answer)
    assert resp.headers["X-Trace"] == "abc" and resp.headers["Content-Length"] == str(len(answer))
    assert results[0].usage == {"prompt_tokens": 3, "completion_tokens": 1}


async def test_an_interim_answer_is_skipped(backend: Backend, front) -> None:
    url, _ = front
    backend.script = [b"HTTP/1.1 100 Continue\r\n\r\n" + SSE_HEAD + chunk(EVENTS[0]), 0.02, b"0\r\n\r\n"]
    status, body, _ = await post(url)
    assert (status, body) == (200, EVENTS[0])


async def test_error_status_is_passed_through(backend: Backend, front) -> None:
    url, results = front
    answer = b'{"error":{"code":400,"message":"bad"}}'
    # all in one write and closed at once, as llama-server does with Connection: close
    backend.script = [b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (
        len(answer), answer), None]
    status, body, _ = await post(url)
    assert (status, body) == (400, answer)
    assert results[0].status == 400


async def test_close_delimited_and_long_bodies_are_streamed_whole(backend: Backend, front) -> None:
    url, _ = front
    backend.script = [b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + EVENTS[0], 0.02, EVENTS[1], None]
    status, body, _ = await post(url)
    assert (status, body) == (200, EVENTS[0] + EVENTS[1])

    long = bytes(range(256)) * (SMALL_BODY // 256 * 3)
    backend.script = [b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % len(long)]
    backend.script += [long[i : i + 50_000] for i in range(0, len(long), 50_000)]
    status, body, _ = await post(url)
    assert status == 200 and body == long


async def test_a_client_that_reads_slowly_gets_every_byte(backend: Backend, front) -> None:
    """The backend writes much more than the socket buffers hold while the client does not read:
    reading from the backend pauses and resumes, nothing is lost or reordered."""
    url, _ = front
    events = [b"data: %d %s\n\n" % (i, b"x" * 900) for i in range(4000)]
    backend.script = [SSE_HEAD, *(b"".join(chunk(e) for e in events[i : i + 100]) for i in range(0, 4000, 100))]
    backend.script += [b"0\r\n\r\n"]
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s,
        s.post(url + "/v1/chat/completions", json={"stream": True}, read_bufsize=2**12) as resp,
    ):
        received = []
        while data := await resp.content.read(2**15):
            received.append(data)
            if len(received) < 20:
                await asyncio.sleep(0.01)
    assert b"".join(received) == b"".join(events)


async def test_a_client_that_leaves_closes_the_backend_connection(backend: Backend, front) -> None:
    url, _ = front
    backend.script = [SSE_HEAD + chunk(EVENTS[0])] + [x for _ in range(600) for x in (0.05, chunk(EVENTS[1]))]
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", json={"stream": True}) as resp:
        assert await resp.content.readuntil(b"\n\n") == EVENTS[0]
    # llama-server stops generating when its connection closes
    await asyncio.wait_for(backend.client_closed.wait(), 20)


async def test_no_backend_or_a_broken_head_is_a_502_before_answering(backend: Backend, front) -> None:
    url, results = front
    backend.script = [b"SPDY/9 200 OK\r\n\r\n"]
    status, body, _ = await post(url)
    assert status == 502 and json.loads(body)["error"]["code"] == "backend_failed"

    backend.script = [None]  # closes without answering
    status, body, _ = await post(url)
    assert status == 502 and "before answering" in json.loads(body)["error"]["message"]
    assert all(r.status == 502 and r.upstream_error for r in results)


def test_only_plain_http_to_an_ip_for_an_http11_client_is_relayed() -> None:
    eleven = make_mocked_request("POST", "/v1/chat/completions", version=HttpVersion11)
    assert relayable(eleven, "http://127.0.0.1:8080/v1/chat/completions")
    assert relayable(eleven, "http://[::1]:8080/completion")
    assert not relayable(eleven, "https://127.0.0.1:8080/completion")  # TLS: aiohttp's client
    assert not relayable(eleven, "http://gpu-box.lan:8080/completion")  # a host name: aiohttp's resolver
    ten = make_mocked_request("POST", "/v1/chat/completions", version=HttpVersion10)
    assert not relayable(ten, "http://127.0.0.1:8080/completion")  # no chunked framing towards it


@pytest.mark.parametrize(("drop_auth", "api_key"), [(False, None), (True, None), (True, "backend-key")])
def test_the_lean_relay_sends_the_headers_aiohttps_client_would(drop_auth: bool, api_key: str | None) -> None:
    """upstream_fields (raw lines) and upstream_headers (aiohttp's client) drop the same fields:
    hop-by-hop ones, framing, Host, and the client's credentials where the backend has its own."""
    sent = CIMultiDict(
        [
            ("Host", "127.0.0.1:8080"),
            ("Connection", "keep-alive"),
            ("Keep-Alive", "timeout=5"),
            ("Content-Length", "17"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "h2c"),
            ("Authorization", "Bearer client-key"),
            ("X-Api-Key", "client-key"),
            ("Accept", "*/*"),
            ("X-Trace", "a"),
            ("x-trace", "b"),
            ("Content-Type", "application/json"),
        ]
    )
    request = make_mocked_request("POST", "/v1/chat/completions", headers=sent)
    fields = upstream_fields(request, drop_auth=drop_auth, api_key=api_key).decode("latin-1")
    assert fields.endswith("\r\n")
    lines = [tuple(line.split(": ", 1)) for line in fields.split("\r\n")[:-1]]
    assert lines == list(upstream_headers(request, drop_auth=drop_auth, api_key=api_key).items())
    assert ("Authorization", "Bearer client-key") in lines if not drop_auth else "client-key" not in fields
    assert not any(name.lower() in ("host", "connection", "content-length", "transfer-encoding") for name, _ in lines)


# -- kept-alive connections (ConnectionPool)


@dataclass
class KeepAliveBackend:
    """Answers every request on a connection until the client closes it; ``answer`` makes the
    answer to the n-th request (from 1) on that connection: bytes, or None to close instead."""

    port: int = 0
    answer: Callable[[int], bytes | None] = lambda n: short_answer(b'{"n":%d}' % n)
    connections: int = 0
    requests: list[tuple[int, bytes]] = field(default_factory=list)
    """(connection number, request head) for every request."""
    closed_by_client: asyncio.Event = field(default_factory=asyncio.Event)


def short_answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%b\r\n%b" % (
        len(body), extra, body)


@pytest.fixture
async def keepalive() -> AsyncIterator[KeepAliveBackend]:
    state = KeepAliveBackend()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        number, served = state.connections, 0
        try:
            while True:
                try:
                    head, _ = await read_request(reader)
                except asyncio.IncompleteReadError:
                    state.closed_by_client.set()
                    return
                state.requests.append((number, head))
                served += 1
                answer = state.answer(served)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    yield state
    server.close()


@pytest.fixture
async def pooled_front(keepalive: KeepAliveBackend) -> AsyncIterator[tuple[str, ConnectionPool]]:
    """A front that relays to the keep-alive backend through one pool (a backend's)."""
    pool = ConnectionPool()

    async def handler(request: web.Request) -> web.StreamResponse:
        url = f"http://127.0.0.1:{keepalive.port}{request.path_qs}"
        fields = upstream_fields(request, drop_auth=False)
        stream = (await request.json()).get("stream") is True  # as inference.proxy_to asks for a stream
        return await relay(
            request, url, await request.read(), fields, ForwardResult(), connect_timeout=5, close=stream, pool=pool
        )

    async with serve_route(handler) as url:
        yield url, pool
        pool.close()


async def test_short_answers_reuse_one_kept_alive_connection(keepalive: KeepAliveBackend, pooled_front) -> None:
    url, pool = pooled_front
    answers = [await post(url, {"model": "m"}) for _ in range(3)]
    assert [(status, body) for status, body, _ in answers] == [(200, b'{"n":1}'), (200, b'{"n":2}'), (200, b'{"n":3}')]
    assert [number for number, _ in keepalive.requests] == [1, 1, 1]
    assert all(b"connection: close" not in head.lower() for _, head in keepalive.requests)
    assert len(pool) == 1


async def test_a_stream_request_asks_to_close_and_leaves_nothing_in_the_pool(keepalive: KeepAliveBackend, pooled_front) -> None:
    url, pool = pooled_front
    keepalive.answer = lambda n: SSE_HEAD + b"".join(chunk(e) for e in EVENTS) + b"0\r\n\r\n"
    status, body, _ = await post(url, {"model": "m", "stream": True})
    assert (status, body) == (200, b"".join(EVENTS))
    assert b"Connection: close" in keepalive.requests[0][1]
    assert len(pool) == 0


@pytest.mark.parametrize(
    "answer",
    [
        short_answer(b"{}", b"Connection: close\r\n"),  # the backend will close it
        b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",  # 1.0: closes by default
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    ],
    ids=["connection-close", "http10", "chunked"],
)
async def test_only_a_length_delimited_keep_alive_answer_is_pooled(keepalive: KeepAliveBackend, pooled_front, answer: bytes) -> None:
    url, pool = pooled_front
    keepalive.answer = lambda n: answer
    for _ in range(2):
        status, body, _ = await post(url, {"model": "m"})
        assert (status, body) == (200, b"{}")
    assert len(pool) == 0
    assert [number for number, _ in keepalive.requests] == [1, 2]  # a new connection each time


async def test_a_kept_alive_connection_the_backend_dropped_is_replaced(keepalive: KeepAliveBackend, pooled_front) -> None:
    """The backend closes an idle connection just as the next request is sent on it (its
    keep-alive timeout): the request goes out again on a new connection, the client sees 200."""
    url, pool = pooled_front
    keepalive.answer = lambda n: short_answer(b"{}") if n == 1 else None
    for _ in range(3):
        status, body, _ = await post(url, {"model": "m"})
        assert (status, body) == (200, b"{}")
    assert [number for number, _ in keepalive.requests] == [1, 1, 2, 2, 3]


async def test_closing_the_pool_closes_its_idle_connections(keepalive: KeepAliveBackend, pooled_front) -> None:
    url, pool = pooled_front
    assert (await post(url, {"model": "m"}))[0] == 200
    assert len(pool) == 1 and not keepalive.closed_by_client.is_set()
    pool.close()
    await asyncio.wait_for(keepalive.closed_by_client.wait(), 5)
    assert (await post(url, {"model": "m"}))[0] == 200  # a closed pool keeps nothing: a new connection
    assert len(pool) == 0 and keepalive.connections == 2


async def test_a_connection_idle_too_long_is_not_reused(keepalive: KeepAliveBackend, pooled_front) -> None:
    url, pool = pooled_front
    pool.idle_max = 0.0
    for _ in range(2):
        assert (await post(url, {"model": "m"}))[0] == 200
    assert keepalive.connections == 2
