"""The supervisor's application wiring and start-up.

:func:`create_app` builds the aiohttp application (llama-swap's routes, behind the
:mod:`.guard` middleware: Host and Origin policy, CORS, API keys, body limits, drain); :func:`start_server` starts the driver and listens; :func:`serve` runs it with
signals (SIGHUP reload, SIGTERM/SIGINT drain and stop) and systemd notifications.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from ..errors import HomelabError
from . import api, guard, notify
from .config import Config
from .dashboard import add_dashboard_routes
from .driver import SUPERVISOR_KEY, Loader, Supervisor
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


def create_app(sup: Supervisor, listen_host: str | None = "127.0.0.1") -> web.Application:
    """``listen_host``: the address ``--listen`` names (None: every interface), one of the
    ``Host`` names the guard accepts."""
    # The guard reads bodies under this cap (x-security.maxBodyMiB; after a reload that changes
    # it, under the new one).
    app = web.Application(client_max_size=sup.config.security.max_body_mib << 20)
    app[SUPERVISOR_KEY] = sup
    app[SELECTION_KEY] = Selection(sup.config)
    guard.install(app, listen_host)
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
    host: str | None = "127.0.0.1",
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
    runner = web.AppRunner(create_app(sup, host), handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await sup.close()
        await runner.cleanup()
        raise HomelabError(
            f"cannot listen on {host or '*'}:{port}: {exc.strerror or exc} (another server there? pick another --listen)"
        ) from None
    server = site._server
    bound = server.sockets[0].getsockname()[1] if server and server.sockets else port  # type: ignore[attr-defined]  # site._server is an asyncio.Server; AbstractServer lacks .sockets
    return Running(sup, runner, bound)


async def serve(
    config: Config,
    host: str | None,
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
    where = f"http://{host}:{running.port}" if host else f"every interface, port {running.port}"
    log.info("homelab serve: listening on %s (%d models)", where, len(config.models))
    notify.notify("READY=1", f"STATUS=serving {len(config.models)} models on {where}")
    try:
        await stop.wait()
    finally:
        notify.notify("STOPPING=1")
        log.info("shutting down: draining requests (up to %gs), stopping backends", drain_timeout)
        await running.close()
        log.info("stopped")
