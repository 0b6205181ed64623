"""DirectConnector: upstream connections to IP addresses opened with one event-loop call,
behaving like aiohttp's own (pooling, errors that _send does not retry, the connect timeout)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from homelab.supervisor.connect import DirectConnector, backend_connector

from .helpers import serve_app


async def _peer(request: web.Request) -> web.Response:
    # The client's address and port as the server saw them: the same port means the same connection.
    return web.Response(text=f"{request.remote} {request.transport.get_extra_info('peername')[1]}")


async def _stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(3):
        await response.write(f"data: {i}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


@pytest.fixture
async def server() -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get("/peer", _peer)
    app.router.add_post("/stream", _stream)
    async with serve_app(app) as port:
        yield port


def _session(**timeout: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=DirectConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=10, **timeout))


async def test_streams_and_pooled_keep_alive_work_over_direct_connections(server: int) -> None:
    async with _session() as s:
        for _ in range(3):  # one new connection per stream, as llama-server forces
            async with s.post(f"http://127.0.0.1:{server}/stream", headers={"Connection": "close"}) as resp:
                assert resp.status == 200
                assert await resp.read() == b"data: 0\n\ndata: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
        ports = set()
        for _ in range(3):
            async with s.get(f"http://127.0.0.1:{server}/peer") as resp:
                host, port = (await resp.text()).split()
                assert host == "127.0.0.1"
                ports.add(port)
        assert len(ports) == 1, "keep-alive answers must reuse the pooled connection"


async def test_host_names_still_connect(server: int) -> None:
    async with _session() as s, s.get(f"http://localhost:{server}/peer") as resp:
        assert resp.status == 200


async def test_refused_connection_is_a_connector_error() -> None:
    # _send retries only closed keep-alive connections, never a refused fresh one: it relies on
    # ClientConnectorError, which the direct route must raise like aiohttp's own.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with _session() as s:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await s.get(f"http://127.0.0.1:{port}/peer")
    assert isinstance(caught.value.os_error, ConnectionRefusedError)


async def test_connect_timeout_still_bounds_a_connection_that_never_completes() -> None:
    # A listener that never accepts, with a full backlog: the kernel drops further SYNs, so a
    # connect hangs until sock_connect ends it.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            async with _session(sock_connect=0.3) as s:
                with pytest.raises(aiohttp.ConnectionTimeoutError):
                    await s.get(f"http://127.0.0.1:{port}/peer")
        finally:
            for filler in fillers:
                filler.close()


def test_backend_sessions_use_the_direct_route_only_while_aiohttps_hook_has_its_known_shape(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def changed(self, req, traces, timeout, extra):  # type: ignore[no-untyped-def]
        raise AssertionError("never called")

    async def make() -> tuple[type, type]:
        first = backend_connector(limit=0)
        monkeypatch.setattr(aiohttp.TCPConnector, "_create_connection", changed)
        second = backend_connector(limit=0)
        await first.close()
        await second.close()
        return type(first), type(second)

    current, after_change = asyncio.run(make())
    assert current is DirectConnector
    assert after_change is aiohttp.TCPConnector
