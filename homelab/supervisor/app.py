"""The supervisor's application wiring and start-up.

:func:`create_app` builds the aiohttp application (llama-swap's routes, behind the API-key and
drain middleware); :func:`start_server` starts the driver and listens; :func:`serve` runs it with
signals (SIGHUP reload, SIGTERM/SIGINT drain and stop) and systemd notifications.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..errors import HomelabError
from . import api, notify
from .config import Config
from .dashboard import add_dashboard_routes, is_public
from .driver import SUPERVISOR_KEY, Loader, Supervisor
from .http_errors import error_response
from .inference import (
    INFERENCE_ROUTES,
    MODEL_GET_ROUTES,
    STRIPPED_ROUTES,
    handle_inference,
    handle_model_get,
    handle_stripped,
)
from .peers import ProbeTimings
from .selection import Selection
from .selection_http import SELECTION_KEY, handle_active_profile, handle_profiles
from .upstream import handle_upstream, handle_upstream_index
from .watch import WatchTiming, watch_file

log = logging.getLogger("homelab.supervisor")

MAX_BODY = 1 << 30


def _api_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key")


@web.middleware
async def _guard(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    sup = request.app[SUPERVISOR_KEY]
    if (
        sup.config.api_keys
        and request.path not in ("/health", "/wol-health")
        and not is_public(request)
        and _api_key(request) not in sup.config.api_keys
    ):
        return error_response(
            401, "invalid or missing API key (Authorization: Bearer KEY or x-api-key)", "invalid_api_key"
        )
    if not sup.accepting:
        return error_response(503, "the supervisor is shutting down", "shutting_down", retry_after=5)
    sup.active += 1
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        sup.active -= 1
        if sup.config.log_requests:
            log.info(
                "%s %s %s %d %.1fms",
                request.remote,
                request.method,
                request.path_qs,
                status,
                1000 * (time.perf_counter() - started),
            )


def create_app(sup: Supervisor) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_guard])
    app[SUPERVISOR_KEY] = sup
    app[SELECTION_KEY] = Selection(sup.config)
    # Plain paths: aiohttp finds them by a dict lookup, so more routes do not slow the hot path.
    for route in INFERENCE_ROUTES:
        app.router.add_post(route, handle_inference)
    for route in STRIPPED_ROUTES:
        app.router.add_post(route, handle_stripped)
    for route in MODEL_GET_ROUTES:
        app.router.add_get(route, handle_model_get)
    app.router.add_route("*", "/upstream/{tail:.+}", handle_upstream)
    app.router.add_get("/upstream", handle_upstream_index)
    app.router.add_get("/v1/models", api.handle_models)
    app.router.add_get("/models", api.handle_models)
    app.router.add_get("/running", api.handle_running)
    app.router.add_route("*", "/unload", api.handle_unload)
    app.router.add_post("/api/models/unload", api.handle_unload)
    app.router.add_post("/api/models/unload/{model:.+}", api.handle_unload)
    app.router.add_get("/health", api.handle_health)
    app.router.add_get("/wol-health", api.handle_health)  # llama-swap's, for wake-on-LAN proxies
    app.router.add_get("/logs", api.handle_logs)
    app.router.add_get("/logs/stream", api.handle_log_stream)
    app.router.add_get("/logs/stream/{model:.+}", api.handle_log_stream)
    app.router.add_get("/metrics", api.handle_metrics)
    app.router.add_post("/x-reload", api.handle_reload)
    app.router.add_get("/api/profiles", handle_profiles)
    app.router.add_put("/api/profiles/active", handle_active_profile)
    add_dashboard_routes(app, sup)
    return app


class Running:
    """A started supervisor + HTTP server (for ``serve`` and in-process tests)."""

    def __init__(self, sup: Supervisor, runner: web.AppRunner, port: int) -> None:
        self.sup, self.runner, self.port = sup, runner, port
        self._closed = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.sup.close()
        await self.runner.cleanup()


async def start_server(
    config: Config,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    loader: Loader | None = None,
    drain_timeout: float = 30.0,
    peer_timings: ProbeTimings | None = None,
    watch: WatchTiming | None = None,
) -> Running:
    """``watch``: reload when the config file changes (``--watch-config``), polled this often."""
    sup = Supervisor(config, loader=loader, drain_timeout=drain_timeout, peer_timings=peer_timings)
    await sup.start()
    if watch is not None and config.source is not None and loader is not None:
        sup._spawn(watch_file(config.source, sup.reload, watch.interval, watch.debounce))
    runner = web.AppRunner(create_app(sup), handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await sup.close()
        await runner.cleanup()
        raise HomelabError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (another server there? pick another --listen)"
        ) from None
    server = site._server
    bound = server.sockets[0].getsockname()[1] if server and server.sockets else port  # type: ignore[attr-defined]  # site._server is an asyncio.Server; AbstractServer lacks .sockets
    return Running(sup, runner, bound)


async def serve(
    config: Config,
    host: str,
    port: int,
    *,
    loader: Loader | None = None,
    drain_timeout: float = 30.0,
    watch_config: bool = False,
) -> None:
    watch = WatchTiming() if watch_config else None
    running = await start_server(config, host, port, loader=loader, drain_timeout=drain_timeout, watch=watch)
    if watch is not None:
        log.info("watching %s for changes (polled every %gs)", config.source, watch.interval)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: running.sup._spawn(running.sup.reload()))
    log.info("homelab serve: listening on http://%s:%d (%d models)", host, running.port, len(config.models))
    notify.notify("READY=1", f"STATUS=serving {len(config.models)} models on {host}:{running.port}")
    try:
        await stop.wait()
    finally:
        notify.notify("STOPPING=1")
        log.info("shutting down: draining requests (up to %gs), stopping backends", drain_timeout)
        await running.close()
        log.info("stopped")
