"""The relay floor of ``homelab bench proxy``: aiohttp and uvloop in front of one backend, passing
every POST through the supervisor's own lean relay, and nothing else: no Host, Origin or key
checks, no profiles or scheduler, no metrics, no activity log.

Measured in the same run as the supervisor, it splits the supervisor's added latency and CPU in
two: what a second process hop through Python and aiohttp costs on that machine (this front's
figures), and what the supervisor's own work adds on top (the difference). The first is no code
of the supervisor's to cut.

Run by the benchmark as ``python -m homelab.bench.relay_floor PORT BACKEND_URL``, with the
backend's key, if it has one, in the environment as the supervisor hands it to llama-server
(``LLAMA_API_KEY``): a key never goes on a command line.
"""

from __future__ import annotations

import asyncio
import os
import sys

from aiohttp import web

from ..supervisor.commands import run_loop
from ..supervisor.process import BACKEND_KEY_ENV
from ..supervisor.proxy import ForwardResult, parse_body, upstream_fields
from ..supervisor.relay import ConnectionPool, relay

BACKEND_KEY: web.AppKey[str | None] = web.AppKey("backend_key")
BACKEND_URL = web.AppKey("backend_url", str)
POOL = web.AppKey("pool", ConnectionPool)


async def handle_post(request: web.Request) -> web.StreamResponse:
    """The request relayed as the supervisor relays it to a ready backend: the client's header
    lines with the backend's key in place of the client's, a new connection for a stream
    (llama-server closes it after one), a pooled one otherwise."""
    body = await request.read()
    payload, _ = parse_body(request.headers.get("Content-Type", ""), body)
    stream = payload is not None and payload.get("stream") is True
    return await relay(
        request,
        request.app[BACKEND_URL] + request.path_qs,
        body,
        upstream_fields(request, drop_auth=True, api_key=request.app[BACKEND_KEY]),
        ForwardResult(),
        connect_timeout=5.0,
        close=stream,
        pool=request.app[POOL],
    )


async def handle_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(backend_url: str, backend_key: str | None) -> web.Application:
    app = web.Application()
    app[BACKEND_URL] = backend_url.rstrip("/")
    app[BACKEND_KEY] = backend_key or None
    app[POOL] = ConnectionPool()
    app.router.add_get("/health", handle_health)
    app.router.add_post("/{path:.*}", handle_post)
    return app


async def serve(port: int, backend_url: str, backend_key: str | None) -> None:
    runner = web.AppRunner(create_app(backend_url, backend_key), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()  # until the benchmark stops it (SIGTERM)
    finally:
        await runner.cleanup()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[0].isdigit():
        print("usage: python -m homelab.bench.relay_floor PORT BACKEND_URL (key in $LLAMA_API_KEY)", file=sys.stderr)
        return 2
    run_loop(serve(int(argv[0]), argv[1], os.environ.get(BACKEND_KEY_ENV)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
