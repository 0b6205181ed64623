"""The supervisor at run time: drives the scheduler, runs backends, serves the HTTP API.

:class:`Supervisor` turns scheduler actions into processes and answers; :func:`create_app`
builds the aiohttp application (llama-swap's routes); :func:`serve` runs it with signals
(SIGHUP reload, SIGTERM/SIGINT drain and stop) and systemd notifications.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from ..errors import HomelabError
from . import notify
from .activity import Activity
from .config import Config, ModelConfig, PeerConfig
from .config_load import changed_models
from .connect import backend_connector
from .dashboard import add_dashboard_routes, is_public
from .loading import error_frame, finish_loading_state, stream_loading_state, wants_loading_state
from .logs import BufferHandler, LogBuffer
from .metrics import Metrics
from .peers import PeerMonitor, PeerState, ProbeTimings
from .process import Backend, StartFailed, Watchdog
from .proxy import (
    ForwardResult,
    apply_filters,
    error_response,
    forward,
    model_body,
    multipart_with_model,
    parse_body,
    upstream_headers,
)
from .scheduler import Admit, Reject, Scheduler, Start, State, Stop

log = logging.getLogger("homelab.supervisor")

INFERENCE_ROUTES = (
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/rerank",
    "/v1/messages", "/completion", "/infill",
)
MAX_BODY = 1 << 30
Loader = Callable[[Path], Config]


class Supervisor:
    """Carries out the scheduler's decisions: backends, answers to waiting requests, timers."""

    def __init__(self, config: Config, loader: Loader | None = None, drain_timeout: float = 30.0,
                 peer_timings: ProbeTimings | None = None) -> None:
        self.config = config
        self.loader = loader
        self.drain_timeout = drain_timeout
        self.scheduler = Scheduler(config)
        self.backends: dict[str, Backend] = {}
        self.all_log = LogBuffer("all", max_bytes=1 << 20)
        self.supervisor_log = LogBuffer("supervisor", parent=self.all_log)
        self.logs: dict[str, LogBuffer] = {}
        self.metrics = Metrics()
        self.started = int(time.time())
        self.accepting = True
        self.active = 0
        self._ids = itertools.count(1)
        self._waiters: dict[int, asyncio.Future[Admit | Reject]] = {}
        self.admitted_to: dict[int, Backend] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._stopped_events: dict[str, asyncio.Event] = {}
        self.session: aiohttp.ClientSession | None = None
        self.watchdog: Watchdog | None = None
        self.peers = PeerMonitor(config.peers, peer_timings)
        self._log_handler = BufferHandler(self.supervisor_log)
        self.activity = Activity(lambda: self.scheduler, self.now)  # the dashboard's records and live feed

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        log.addHandler(self._log_handler)
        self.session = aiohttp.ClientSession(
            # llama-server drops idle keep-alive connections after 5 s: let the pool drop them first.
            # DirectConnector: a connection per stream (llama-server closes it), opened cheaply.
            connector=backend_connector(limit=0, ttl_dns_cache=300, keepalive_timeout=3),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )
        self.watchdog = Watchdog()
        self.apply_log_settings()
        await self.peers.start()
        for model in self.config.hooks.preload:
            self.preload(model)

    def preload(self, model: str) -> None:
        model_id = self.config.resolve(model)
        if model_id is None:
            log.warning("hooks.on_startup.preload names unknown model %r", model)
            return

        async def run() -> None:
            req, fut = self.enqueue(model_id)
            result = await fut
            self.release(req)
            if isinstance(result, Reject):
                log.warning("preload of %s failed: %s", model_id, result.message)

        self._spawn(run())

    async def close(self) -> None:
        """Drain in-flight requests (bounded), then stop every backend."""
        self.accepting = False
        deadline = time.monotonic() + self.drain_timeout
        while self.active > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        backends = list(self.backends.values())
        await asyncio.gather(*(b.stop() for b in backends), return_exceptions=True)
        for backend in backends:
            backend.kill()
        self.backends.clear()
        if self._timer:
            self._timer.cancel()
        if self.session:
            await self.session.close()
        await self.peers.close()
        if self.watchdog:
            self.watchdog.close()
        log.removeHandler(self._log_handler)
        log.propagate = True
        self.activity.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def now(self) -> float:
        return self.loop.time()

    # ------------------------------------------------------------ scheduling
    def dispatch(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, (Admit, Reject)):
                if isinstance(action, Admit):
                    # Bind the request to the process that is ready now: if it dies before the
                    # request is sent, its port may already belong to a replacement that loads.
                    backend = self.backends.get(action.model)
                    if backend is not None:
                        self.admitted_to[action.req] = backend
                fut = self._waiters.pop(action.req, None)
                if fut is not None and not fut.done():
                    fut.set_result(action)
            elif isinstance(action, Start):
                self._spawn(self._start(action))
            elif isinstance(action, Stop):
                log.info("stopping model %s: %s", action.model, action.reason)
                self._spawn(self._stop(action.model))
        if self._stopped_events:  # unload() callers wait for these (a failed start counts)
            for model_id in [m for m in self._stopped_events if self.status_of(m) is State.STOPPED]:
                self._stopped_events.pop(model_id).set()
        self._arm_timer()
        self.activity.dispatched(actions)

    def _arm_timer(self) -> None:
        deadline = self.scheduler.next_deadline()
        if self._timer is not None:
            if deadline is not None and self._timer.when() == deadline + 0.001:
                return  # unchanged (the common case on the request path)
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self.loop.call_at(deadline + 0.001, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.dispatch(self.scheduler.tick(self.now()))

    def enqueue(self, model_id: str) -> tuple[int, asyncio.Future[Admit | Reject]]:
        req = next(self._ids)
        fut: asyncio.Future[Admit | Reject] = self.loop.create_future()
        self._waiters[req] = fut
        self.dispatch(self.scheduler.request(req, model_id, self.now()))
        return req, fut

    def release(self, req: int) -> None:
        self._waiters.pop(req, None)
        self.admitted_to.pop(req, None)
        self.dispatch(self.scheduler.done(req, self.now()))

    def model_log(self, model_id: str) -> LogBuffer:
        buffer = self.logs.get(model_id)
        if buffer is None:
            buffer = self.logs[model_id] = LogBuffer(model_id, parent=self.all_log, prefix=model_id)
        # logToStdout: upstream | both copy backends' output to our stdout (read at each start)
        buffer.mirror = _write_stdout if self.config.log_to_stdout in ("upstream", "both") else None
        return buffer

    def apply_log_settings(self) -> None:
        """logLevel; logToStdout proxy|both: our own log on stderr; upstream|none: only in /logs."""
        level = {"warn": "WARNING"}.get(self.config.log_level.lower(), self.config.log_level.upper())
        log.setLevel(level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO")
        log.propagate = self.config.log_to_stdout in ("proxy", "both")

    async def _start(self, action: Start) -> None:
        model_id = action.model
        cfg = self.config.models[model_id]
        assert self.session is not None
        backend = Backend(cfg, self.model_log(model_id), self.session, self.watchdog, self._on_exit)
        self.backends[model_id] = backend
        log.info("starting model %s", model_id)
        try:
            await backend.spawn()
            time_to_ready = await backend.wait_ready(self.config.health_check_timeout)
        except StartFailed as exc:
            backend.kill()
            if self.backends.get(model_id) is backend:
                del self.backends[model_id]
            log.error("%s", exc)
            self.metrics.swaps.inc(model=model_id, outcome="failed")
            self.dispatch(self.scheduler.start_failed(model_id, str(exc), self.now()))
            return
        except asyncio.CancelledError:
            backend.kill()
            raise
        now = self.now()
        self.metrics.swaps.inc(model=model_id, outcome="ready")
        self.metrics.time_to_ready.observe(time_to_ready, model=model_id)
        self.metrics.swap_duration.observe(max(0.0, now - action.requested_at), model=model_id)
        log.info("model %s ready in %.3fs", model_id, time_to_ready)
        self.dispatch(self.scheduler.ready(model_id, now))

    def _on_exit(self, backend: Backend) -> None:
        model_id = backend.model.id
        if backend.stop_requested or self.backends.get(model_id) is not backend:
            return
        state = self.scheduler.models.get(model_id)
        if state is None or state.state is not State.READY:
            return  # a start in progress reports the exit itself
        del self.backends[model_id]
        reason = f"model {model_id!r} {backend.exit_description()}; last output:\n{backend.log.tail(8)}"
        log.error("%s crashed: %s", model_id, backend.exit_description())
        self.metrics.crashes.inc(model=model_id)
        self.dispatch(self.scheduler.exited(model_id, reason, self.now()))

    async def _stop(self, model_id: str) -> None:
        backend = self.backends.get(model_id)
        if backend is not None:
            await backend.stop()
            if self.backends.get(model_id) is backend:
                del self.backends[model_id]
        self.dispatch(self.scheduler.stopped(model_id, self.now()))

    async def unload(self, models: list[str] | None, wait: float = 30.0) -> list[str]:
        """Unload models (all when None) and wait (bounded) until they have stopped."""
        targets = [m for m, s in self.scheduler.models.items()
                   if s.state is not State.STOPPED and (models is None or m in models)]
        events = [self._stopped_events.setdefault(m, asyncio.Event()) for m in targets]
        self.dispatch(self.scheduler.unload(targets, self.now()))
        if events:
            waits = [asyncio.ensure_future(e.wait()) for e in events]
            _, pending = await asyncio.wait(waits, timeout=wait)
            for task in pending:
                task.cancel()
        return targets

    async def reload(self) -> tuple[bool, str, list[str]]:
        """Re-read the config; restart only changed models. A bad config keeps the old one."""
        if self.loader is None or self.config.source is None:
            return False, "no config file to reload from", []
        notify.reloading()
        try:
            new = self.loader(self.config.source)
        except (HomelabError, OSError, ValueError) as exc:
            log.error("reload rejected, still serving the previous config: %s", exc)
            notify.notify("READY=1", "STATUS=reload rejected")
            return False, str(exc), []
        changed = sorted(changed_models(self.config, new))
        self.config = new
        self.apply_log_settings()
        self.peers.reconfigure(new.peers)
        self.dispatch(self.scheduler.reconfigure(new, changed, self.now()))
        log.info("reloaded %s; restarting changed models: %s", new.source, ", ".join(changed) or "none")
        notify.notify("READY=1", "STATUS=reloaded")
        return True, "", changed

    # ------------------------------------------------------------ queries
    def status_of(self, model_id: str) -> State:
        state = self.scheduler.models.get(model_id)
        return state.state if state else State.STOPPED

    def find_peer(self, requested: str) -> tuple[PeerConfig, str] | None:
        """``<peer>/<model>``, or a bare model name that exactly one peer lists (llama-swap's
        rule; local models and aliases are resolved before this). Only listed models route."""
        prefix, _, rest = requested.partition("/")
        peer = self.config.peers.get(prefix) if rest else None
        if peer is not None and rest in peer.models:
            return peer, rest
        serving = self.peers_serving(requested)
        return (serving[0], requested) if len(serving) == 1 else None

    def peers_serving(self, model: str) -> tuple[PeerConfig, ...]:
        return self.peers.serving(model)


def _write_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


# ---------------------------------------------------------------- HTTP
SUPERVISOR_KEY = web.AppKey("supervisor", Supervisor)


def _api_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key")


@web.middleware
async def _guard(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    sup = request.app[SUPERVISOR_KEY]
    if (sup.config.api_keys and request.path != "/health" and not is_public(request)
            and _api_key(request) not in sup.config.api_keys):
        return error_response(401, "invalid or missing API key (Authorization: Bearer KEY or x-api-key)",
                              "invalid_api_key")
    if not sup.accepting:
        return error_response(503, "the supervisor is shutting down", "shutting_down", retry_after=5)
    sup.active += 1
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response  # type: ignore[no-any-return]
    finally:
        sup.active -= 1
        if sup.config.log_requests:
            log.info("%s %s %s %d %.1fms", request.remote, request.method, request.path_qs, status,
                     1000 * (time.perf_counter() - started))


async def handle_inference(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    payload, requested = parse_body(request.headers.get("Content-Type", ""), body)
    requested = requested or request.query.get("model")
    if not requested:
        return error_response(400, "no model in the request (JSON 'model', multipart 'model' field "
                              "or ?model=)", "model_missing")
    return await proxy_request(request, requested, request.path_qs, body, payload)


async def handle_upstream(request: web.Request) -> web.StreamResponse:
    sup = request.app[SUPERVISOR_KEY]
    tail = request.match_info["tail"]
    # model IDs may contain '/': take the longest prefix that names a model
    parts = tail.split("/")
    for i in range(len(parts), 0, -1):
        candidate = "/".join(parts[:i])
        if sup.config.resolve(candidate) or sup.find_peer(candidate):
            path = "/" + "/".join(parts[i:])
            if request.query_string:
                path += "?" + request.query_string
            body = await request.read()
            return await proxy_request(request, candidate, path, body, None)
    return _unknown_model(sup, parts[0])


def _unknown_model(sup: Supervisor, requested: str) -> web.Response:
    serving = sup.peers_serving(requested)
    if len(serving) > 1:
        choices = [f"{peer.name}/{requested}" for peer in serving]
        return error_response(400, f"model {requested!r} is served by several peers; ask for one of: "
                              f"{', '.join(choices)}", "model_ambiguous", choices=choices)
    known = sorted(m for m, c in sup.config.models.items() if not c.unlisted)
    known += [f"{peer.name}/{model}" for peer in sup.config.peers.values() for model in peer.models]
    return error_response(404, f"model {requested!r} not found; known models: {', '.join(known)}",
                          "model_not_found", known=known)


async def proxy_request(request: web.Request, requested: str, path: str, body: bytes,
                        payload: dict[str, Any] | None) -> web.StreamResponse:
    sup = request.app[SUPERVISOR_KEY]
    model_id = sup.config.resolve(requested)
    if model_id is None:
        peer = sup.find_peer(requested)
        if peer is not None:
            return await proxy_peer(request, sup, peer[0], peer[1], path, body, payload)
        return _unknown_model(sup, requested)
    cfg = sup.config.models[model_id]
    body = model_body(cfg, requested, payload, body, request.headers.get("Content-Type", ""))
    started = time.perf_counter()
    started_mono = time.monotonic()
    metrics = sup.metrics
    req, fut = sup.enqueue(model_id)
    prepared: web.StreamResponse | None = None
    try:
        # cfg.send_loading_state already holds the top-level default unless the model set its own
        if not fut.done() and wants_loading_state(request.path, payload, cfg.send_loading_state):
            prepared = await stream_loading_state(request, model_id, fut)
        result = await fut
    except BaseException:
        sup.release(req)
        raise
    try:
        if isinstance(result, Reject):
            metrics.requests.inc(model=model_id, code=str(result.status))
            metrics.errors.inc(model=model_id, reason=str(result.status))
            if prepared is not None:
                await prepared.write(error_frame(result.message, "model_unavailable"))
                await prepared.write_eof()
                return prepared
            code = {429: "concurrency_limit", 404: "model_not_found"}.get(result.status, "model_unavailable")
            return error_response(result.status, result.message, code, retry_after=result.retry_after)
        backend = sup.admitted_to.get(req)
        if backend is None or not backend.alive():
            # It died between admission and now; its port may soon belong to its replacement.
            metrics.requests.inc(model=model_id, code="502")
            metrics.errors.inc(model=model_id, reason="backend")
            message = f"the backend of {model_id!r} exited before the request could be sent; retry"
            if prepared is not None:
                await prepared.write(error_frame(message, "backend_failed"))
                await prepared.write_eof()
                return prepared
            return error_response(502, message, "backend_failed")
        if prepared is not None:
            await finish_loading_state(prepared, model_id, started_mono)
        base = backend.model.proxy.rstrip("/")
        assert sup.session is not None
        outcome = ForwardResult()
        headers = upstream_headers(request, drop_auth=bool(sup.config.api_keys))
        if payload is not None and payload.get("stream") is True:
            # llama-server closes the connection after a stream (while announcing keep-alive);
            # aiohttp would pool it the moment the body ends and a later request could pick it.
            headers["Connection"] = "close"
        response = await forward(request, sup.session, base + path, body, headers, outcome, prepared=prepared,
                                 same_backend=backend.alive)
        metrics.requests.inc(model=model_id, code=str(outcome.status))
        if outcome.upstream_error or outcome.status >= 500:
            metrics.errors.inc(model=model_id, reason="backend")
        if outcome.usage:
            for kind in ("prompt_tokens", "completion_tokens"):
                value = outcome.usage.get(kind)
                if isinstance(value, int):
                    metrics.tokens.inc(value, model=model_id, kind=kind.removesuffix("_tokens"))
        sup.activity.request_done(req, model_id, outcome.status, time.perf_counter() - started, outcome.usage)
        return response
    finally:
        metrics.latency.observe(time.perf_counter() - started, model=model_id)
        sup.release(req)


def _peer_down(peer: PeerConfig, reason: str | None) -> web.Response:
    return error_response(503, f"peer {peer.name!r} ({peer.proxy}) is down: {reason or 'not reachable'}; "
                          "its models are unavailable until it answers again", "peer_unavailable",
                          retry_after=1, peer=peer.name)


async def proxy_peer(request: web.Request, sup: Supervisor, peer: PeerConfig, model: str, path: str,
                     body: bytes, payload: dict[str, Any] | None) -> web.StreamResponse:
    """Forward (streaming) to a peer. A peer the monitor knows to be down answers 503 at once; a
    request that cannot reach it answers 503 too (and counts as a failed probe); one that waits
    on a peer that stops answering is ended when the monitor marks the peer down."""
    monitor = sup.peers
    health = monitor.health.get(peer.name)
    label = f"{peer.name}/{model}"
    started = time.perf_counter()
    try:
        if health is not None and health.state is PeerState.DOWN:
            monitor.touch(peer.name)
            sup.metrics.peer_requests.inc(peer=peer.name, code="503")
            sup.metrics.errors.inc(model=label, reason="peer_down")
            return _peer_down(peer, health.last_error)
        if payload is not None:
            body = apply_filters(payload, peer.filters, model, model, body)
        elif (content_type := request.headers.get("Content-Type", "")).startswith("multipart/form-data"):
            body = multipart_with_model(content_type, body, model)  # the peer knows it as `model`
        headers = upstream_headers(request, drop_auth=True, api_key=peer.api_key)
        outcome = ForwardResult()
        monitor.touch(peer.name)
        session = monitor.session(peer.name)
        # A pooled connection the peer closed under us is retried, unless the session was closed
        # because the peer went down.
        response = await forward(request, session, peer.proxy + path, body, headers, outcome,
                                 same_backend=lambda: not session.closed)
        code = str(outcome.status)
        if outcome.upstream_error and isinstance(response, web.Response) and not response.prepared:
            # Nothing reached the client yet: the peer could not be reached, or it was marked down
            # (its session closed) while the request waited for an answer.
            current = monitor.health.get(peer.name)
            if current is not None and current.state is PeerState.DOWN:
                reason = current.last_error or outcome.upstream_error
            else:
                monitor.report_failure(peer.name, outcome.upstream_error)
                reason = outcome.upstream_error
            response, code = _peer_down(peer, reason), "503"
        sup.metrics.peer_requests.inc(peer=peer.name, code=code)
        sup.metrics.requests.inc(model=label, code=code)
        if outcome.upstream_error:
            sup.metrics.errors.inc(model=label, reason="peer")
        return response
    finally:
        sup.metrics.latency.observe(time.perf_counter() - started, model=label)


def _model_entry(sup: Supervisor, model_id: str, cfg: ModelConfig, listed_id: str) -> dict[str, Any]:
    state = sup.status_of(model_id)
    value = {State.READY: "loaded", State.STARTING: "loading", State.STOPPING: "unloading"}.get(state, "unloaded")
    entry: dict[str, Any] = {"id": listed_id, "object": "model", "created": sup.started,
                             "owned_by": "homelab", "status": {"value": value}}
    if cfg.name:
        entry["name"] = cfg.name
    if cfg.description:
        entry["description"] = cfg.description
    if cfg.metadata:
        entry["meta"] = cfg.metadata
    return entry


async def handle_models(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR_KEY]
    data = []
    for model_id, cfg in sup.config.models.items():
        if cfg.unlisted:
            continue
        data.append(_model_entry(sup, model_id, cfg, model_id))
        if sup.config.include_aliases_in_list:
            for alias, target in sup.config.aliases.items():
                if target == model_id:
                    data.append(_model_entry(sup, model_id, cfg, alias))
    for peer in sup.config.peers.values():
        health = sup.peers.health.get(peer.name)
        described = health.describe() if health is not None else {"state": PeerState.UNKNOWN.value}
        for model in peer.models:
            # Listed qualified (always routable and unique); a bare name also works when exactly
            # one peer lists it. status.value is the peer's health: up / down / unknown.
            data.append({"id": f"{peer.name}/{model}", "object": "model", "created": sup.started,
                         "owned_by": peer.name, "name": f"{peer.name}: {model}",
                         "status": {"value": described["state"]},
                         "meta": {"llamaswap": {"peerID": peer.name}, "peer": {"name": peer.name, **described}}})
    return web.json_response({"object": "list", "data": data})


def _peer_entries(sup: Supervisor) -> list[dict[str, Any]]:
    entries = []
    for peer in sup.config.peers.values():
        health = sup.peers.health.get(peer.name)
        described = health.describe() if health is not None else {"state": PeerState.UNKNOWN.value}
        entries.append({"peer": peer.name, "proxy": peer.proxy, "models": list(peer.models), **described})
    return entries


async def handle_running(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR_KEY]
    running = []
    for model_id, state in sup.scheduler.models.items():
        if state.state is State.STOPPED:
            continue
        backend = sup.backends.get(model_id)
        cfg = backend.model if backend else sup.config.models.get(model_id)
        if cfg is None:
            continue
        ttl = cfg.ttl if cfg.ttl > 0 else sup.config.global_ttl
        running.append({"model": model_id, "state": state.state.value, "cmd": " ".join(cfg.cmd),
                        "proxy": cfg.proxy, "ttl": ttl})
    return web.json_response({"running": running, "peers": _peer_entries(sup)})


async def handle_unload(request: web.Request) -> web.StreamResponse:
    sup = request.app[SUPERVISOR_KEY]
    model = request.match_info.get("model")
    if model is not None:
        model_id = sup.config.resolve(model)
        if model_id is None:
            return _unknown_model(sup, model)
        stopped = await sup.unload([model_id])
    else:
        stopped = await sup.unload(None)
    if request.path == "/unload":
        return web.Response(text="OK")
    return web.json_response({"msg": "ok", "unloaded": stopped})


async def handle_health(request: web.Request) -> web.Response:
    return web.Response(text="OK")


def _log_buffer(sup: Supervisor, name: str | None) -> LogBuffer | None:
    if name is None:
        return sup.all_log
    if name in ("supervisor", "proxy"):
        return sup.supervisor_log
    model_id = sup.config.resolve(name) or (name if name in sup.logs else None)
    return sup.model_log(model_id) if model_id else None


async def handle_logs(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR_KEY]
    return web.Response(body=sup.all_log.contents(), content_type="text/plain")


async def handle_log_stream(request: web.Request) -> web.StreamResponse:
    sup = request.app[SUPERVISOR_KEY]
    buffer = _log_buffer(sup, request.match_info.get("model"))
    if buffer is None:
        return _unknown_model(sup, request.match_info.get("model", ""))
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8",
                                           "X-Accel-Buffering": "no", "Cache-Control": "no-cache"})
    await response.prepare(request)
    queue = buffer.subscribe()
    sup.active -= 1  # a log stream never blocks shutdown
    try:
        if "no-history" not in request.query:
            await response.write(buffer.contents())
        while sup.accepting:
            try:
                chunk = await asyncio.wait_for(queue.get(), timeout=1.0)
            except TimeoutError:
                continue
            await response.write(chunk)
    finally:
        buffer.unsubscribe(queue)
        sup.active += 1
    return response


async def handle_metrics(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR_KEY]
    loaded = {m: sup.status_of(m) is State.READY for m in sup.config.models}
    peers_up = {name: health.state is PeerState.UP for name, health in sup.peers.health.items()}
    return web.Response(text=sup.metrics.render(loaded, peers_up), content_type="text/plain")


async def handle_reload(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR_KEY]
    ok, error, changed = await sup.reload()
    return web.json_response({"reloaded": ok, "error": error or None, "changed": changed},
                             status=200 if ok else 400)


def create_app(sup: Supervisor) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_guard])
    app[SUPERVISOR_KEY] = sup
    for route in INFERENCE_ROUTES:
        app.router.add_post(route, handle_inference)
    app.router.add_route("*", "/upstream/{tail:.+}", handle_upstream)
    app.router.add_get("/v1/models", handle_models)
    app.router.add_get("/running", handle_running)
    app.router.add_route("*", "/unload", handle_unload)
    app.router.add_post("/api/models/unload", handle_unload)
    app.router.add_post("/api/models/unload/{model:.+}", handle_unload)
    app.router.add_get("/health", handle_health)
    app.router.add_get("/logs", handle_logs)
    app.router.add_get("/logs/stream", handle_log_stream)
    app.router.add_get("/logs/stream/{model:.+}", handle_log_stream)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_post("/x-reload", handle_reload)
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


async def start_server(config: Config, host: str = "127.0.0.1", port: int = 0, *,
                       loader: Loader | None = None, drain_timeout: float = 30.0,
                       peer_timings: ProbeTimings | None = None) -> Running:
    sup = Supervisor(config, loader=loader, drain_timeout=drain_timeout, peer_timings=peer_timings)
    await sup.start()
    runner = web.AppRunner(create_app(sup), handler_cancellation=True, access_log=None,
                           shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await sup.close()
        await runner.cleanup()
        raise HomelabError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                           "(another server there? pick another --listen)") from None
    server = site._server
    bound = server.sockets[0].getsockname()[1] if server and server.sockets else port  # type: ignore[union-attr]
    return Running(sup, runner, bound)


async def serve(config: Config, host: str, port: int, *, loader: Loader | None = None,
                drain_timeout: float = 30.0) -> None:
    running = await start_server(config, host, port, loader=loader, drain_timeout=drain_timeout)
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
