"""The dashboard: the page at ``/ui/`` and the JSON API it reads (``/api/state``, ``/api/events``).

The page is three static files shipped in the package (``ui/``), no build step and nothing
fetched from elsewhere. It asks for the API key itself, so the files are served without one;
every ``/api/`` route stays behind the key like the rest of the supervisor.

Routes:

* ``GET /`` from a browser (``Accept: text/html``) redirects to ``/ui/``; other clients get the
  404 they always got.
* ``GET /api/state``: every model (and peer model) with its scheduler state, what starting it
  would evict now, the selectors and profiles (``selection``), the VRAM picture, the deployed generation's facts, recent requests and swaps.
* ``GET /api/events``: Server-Sent Events in llama-swap's envelope (see :mod:`.activity`); our
  ``selection`` message follows each ``modelStatus``. ``?logs=proxy,<model>,...`` names the logs
  sent as ``logData`` (``proxy``: the supervisor's, ``upstream``: every model's, ``logs=``: none);
  without it every log is sent, as llama-swap does. Our page asks for the supervisor's log and
  for a model's only while its Logs panel shows that model: backends write lines per request,
  and a page that does not show them should not pay for them.
* ``POST /api/models/load/{model}``: start a model as a request for it would (no request sent).
"""

from __future__ import annotations

import asyncio
import importlib.resources
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from aiohttp import web

from homelab.suggest import did_you_mean

from .activity import FLUSH_DELAY, envelope
from .admission import AdmissionError
from .deployed import deploy_facts, vram_picture
from .http_errors import error_response
from .scheduler import ModelState, State
from .selection import Selection
from .selection_http import model_states, profile_records, selection_of, selector_records

if TYPE_CHECKING:
    from .driver import Supervisor
    from .logs import LogBuffer

UI_FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}
PUBLIC_PREFIX = "/ui"
LOG_TAIL_LINES = 8
KEEPALIVE = 15.0


def is_public(request: web.Request) -> bool:
    """Served without the API key: the page's own files (they hold no data) and a browser's
    visit to ``/`` (a navigation cannot carry the key). Everything else keeps the key check."""
    path = request.path
    if path == "/":
        return _browser_get(request)
    return path == PUBLIC_PREFIX or path.startswith(PUBLIC_PREFIX + "/")


def _browser_get(request: web.Request) -> bool:
    return request.method == "GET" and "text/html" in request.headers.get("Accept", "")


def ui_file(name: str) -> bytes:
    return importlib.resources.files("homelab.supervisor").joinpath("ui", name).read_bytes()


class Dashboard:
    def __init__(self, sup: Supervisor, selection: Callable[[], Selection]) -> None:
        self.sup = sup
        self.current_selection = selection
        sup.activity.status = self.model_status
        sup.activity.selection = self.selection
        sup.activity.counts = self.counts

    def selection(self) -> dict[str, Any]:
        """Selectors (strategy, targets, the target a request would reach now) and profiles
        (pins, the active one): the ``selection`` part of /api/state and its live message."""
        selection = self.current_selection()
        return {
            "active": selection.active,
            "selectors": selector_records(selection, model_states(self.sup)),
            "profiles": profile_records(selection),
        }

    # ------------------------------------------------------------ state
    def _ttl(self, model_id: str) -> float:
        cfg = self.sup.config.models[model_id]
        return cfg.ttl if cfg.ttl > 0 else self.sup.config.global_ttl

    @staticmethod
    def _live(st: ModelState, ttl: float, now: float) -> dict[str, Any]:
        """What a request coming or going changes in a model's entry: its counts and, while it
        is ready, busy or ready with the TTL left (the ``inflight`` message sends only these)."""
        live: dict[str, Any] = {"inflight": len(st.inflight), "queued": len(st.waiters)}
        if st.state is State.READY:
            live["status"] = "busy" if st.inflight else "ready"
            if ttl > 0 and not st.inflight and not st.waiters:
                live["ttl_left"] = max(0.0, round(st.last_used + ttl - now, 1))
        return live

    def counts(self) -> dict[str, Any]:
        """The ``inflight`` message: llama-swap's total plus each local model's counts."""
        sup = self.sup
        now = sup.now()
        models = {
            model_id: self._live(st, self._ttl(model_id), now)
            for model_id, st in sup.scheduler.models.items()
            if model_id in sup.config.models
        }
        return {"total": sum(m["inflight"] for m in models.values()), "models": models}

    def model_status(self) -> list[dict[str, Any]]:
        """llama-swap's modelStatus entries (id, name, description, state, unlisted, peerID)
        plus what our scheduler knows: the dashboard's status, in-flight and queued counts,
        load elapsed, back-off left, TTL left, last error and log lines, evictions."""
        sup = self.sup
        config = sup.config
        now = sup.now()
        out: list[dict[str, Any]] = []
        for model_id, cfg in config.models.items():
            st = sup.scheduler.models.get(model_id)
            state = st.state if st else State.STOPPED
            entry: dict[str, Any] = {
                "id": model_id,
                "name": cfg.name or model_id,
                "description": cfg.description or "",
                "state": state.value,
                "unlisted": cfg.unlisted,
                "profiles": sorted(k for k in cfg.filters.set_params_by_id if k != model_id),
                "inflight": len(st.inflight) if st else 0,
                "queued": len(st.waiters) if st else 0,
                "vram_mib": cfg.vram_mib,
            }
            entry["aliases"] = sorted(
                a for a, t in config.aliases.items() if t == model_id and a not in entry["profiles"]
            )
            ttl = self._ttl(model_id)
            entry["ttl"] = ttl
            status = "unloaded"
            if st is not None:
                if state is State.READY:
                    entry.update(self._live(st, ttl, now))
                    status = entry["status"]
                elif state is State.STARTING:
                    status = "loading"
                    since = sup.activity.loading_since(model_id)
                    entry["elapsed"] = round(now - since, 1) if since is not None else None
                elif state is State.STOPPING:
                    status = "stopping"
                elif now < st.retry_at:
                    status = "backoff"
                    entry["retry_in"] = round(st.retry_at - now, 1)
                elif st.failures and st.retry_at >= st.ready_at:
                    status = "failed"
                if status in ("failed", "backoff"):
                    entry["last_error"] = st.last_error
                    buffer = sup.logs.get(model_id)
                    entry["log_tail"] = buffer.tail(LOG_TAIL_LINES) if buffer else ""
            entry["status"] = status
            try:
                entry["evicts"] = sorted(sup.scheduler.would_evict(model_id)) if state is State.STOPPED else []
            except AdmissionError as exc:
                entry["evicts"], entry["unfit"] = [], str(exc)
            out.append(entry)
        for peer in config.peers.values():
            health = sup.peers.health.get(peer.name)
            described = health.describe() if health is not None else {"state": "unknown"}
            for model in peer.models:
                out.append(
                    {
                        "id": f"{peer.name}/{model}",
                        "name": model,
                        "description": "",
                        "peerID": peer.name,
                        "state": described["state"],
                        "status": f"peer {described['state']}",
                        "unlisted": False,
                        "aliases": [],
                        "profiles": [],
                        "inflight": 0,
                        "queued": 0,
                        "evicts": [],
                        "last_error": described.get("lastError") or "",
                    }
                )
        return out

    def state(self) -> dict[str, Any]:
        sup = self.sup
        sup.deferred.run_now()  # records still queued
        source = sup.config.source
        return {
            "models": self.model_status(),
            "selection": self.selection(),
            "vram": vram_picture(
                source,
                sup.config.vram_budget_mib,
                {m: c.vram_mib for m, c in sup.config.models.items()},
                sup.config.device_budget_mib,
                {m: c.devices_mib for m, c in sup.config.models.items()},
            ),
            "deploy": deploy_facts(source),
            "swaps": [asdict(s) for s in sup.activity.swaps],
            "requests": [asdict(r) for r in sup.activity.requests],
            "started": sup.started,
            "max_wait": sup.config.max_wait,
        }

    # ------------------------------------------------------------ handlers
    async def handle_root(self, request: web.Request) -> web.StreamResponse:
        if _browser_get(request):
            raise web.HTTPFound("/ui/")
        raise web.HTTPNotFound()

    async def handle_ui(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name") or "index.html"
        if request.path == PUBLIC_PREFIX:
            raise web.HTTPFound(PUBLIC_PREFIX + "/")
        content_type = UI_FILES.get(name)
        if content_type is None:
            raise web.HTTPNotFound()
        return web.Response(
            body=ui_file(name),
            content_type=content_type,
            charset="utf-8",
            headers={
                "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff",
                # the page talks only to this server and loads nothing from elsewhere
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            },
        )

    async def handle_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state())

    async def handle_load(self, request: web.Request) -> web.Response:
        requested = request.match_info["model"]
        model_id = self.sup.config.resolve(requested)
        if model_id is None:
            return error_response(404, f"model {requested!r} not found", "model_not_found")
        if self.sup.status_of(model_id) is State.STOPPED:
            self.sup.activity.load_requested(model_id)
        self.sup.preload(model_id)
        return web.json_response({"msg": "ok", "loading": model_id})

    def _followed_logs(self, request: web.Request) -> tuple[bool, bool, set[str]]:
        """``?logs=``: (the supervisor's log, every model's log, these models' logs).
        ValueError names an unknown source."""
        if "logs" not in request.query:
            return True, True, set()  # llama-swap's feed: every log
        proxy, upstream, models = False, False, set()
        for name in filter(None, (n.strip() for n in request.query["logs"].split(","))):
            if name in ("proxy", "supervisor"):
                proxy = True
            elif name == "upstream":
                upstream = True
            elif (model_id := self.sup.config.resolve(name)) is not None:
                models.add(model_id)
            else:
                choices = ["proxy", "upstream", *self.sup.config.models]
                raise ValueError(
                    f"GET /api/events?logs=: unknown log {name!r}"
                    + did_you_mean(name, choices, listing="expected proxy, upstream or a model", fallback="")
                )
        return proxy, upstream, models

    async def handle_events(self, request: web.Request) -> web.StreamResponse:
        sup = self.sup
        try:
            proxy, every_model, chosen = self._followed_logs(request)
        except ValueError as exc:
            return error_response(400, str(exc), "invalid_request")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                "X-Content-Type-Options": "nosniff",
            }
        )
        await response.prepare(request)
        queue = sup.activity.subscribe()
        buffers: list[tuple[LogBuffer, dict[str, str]]] = [(sup.supervisor_log, {"source": "proxy"})] if proxy else []
        followed = set(sup.config.models) if every_model else chosen
        buffers += [(sup.model_log(m), {"source": "upstream", "model": m}) for m in sup.config.models if m in followed]
        forwarders = [asyncio.ensure_future(_forward_log(buffer, tags, queue)) for buffer, tags in buffers]
        config = sup.config
        sup.active -= 1  # an open page never holds up shutdown
        try:
            for buffer, tags in buffers:
                history = buffer.contents()
                if history:
                    await response.write(envelope("logData", {**tags, "data": history.decode("utf-8", "replace")}))
            models = self.model_status()
            await response.write(envelope("modelStatus", models))
            await response.write(envelope("selection", self.selection()))
            sup.deferred.run_now()  # records still queued
            await response.write(envelope("metrics", [vars(r) for r in sup.activity.requests]))
            for swap in sup.activity.swaps:
                await response.write(envelope("swap", asdict(swap)))
            await response.write(envelope("inflight", self.counts()))
            idle = 0.0
            while sup.accepting:
                if sup.config is not config:  # a reload: follow the logs of models it added
                    config = sup.config
                    for model_id in (config.models.keys() - followed) if every_model else ():
                        followed.add(model_id)
                        tags = {"source": "upstream", "model": model_id}
                        forwarders.append(asyncio.ensure_future(_forward_log(sup.model_log(model_id), tags, queue)))
                try:
                    async with asyncio.timeout(1.0):  # no task per message, as wait_for makes one
                        message = await queue.get()
                except TimeoutError:
                    idle += 1.0
                    if idle >= KEEPALIVE:  # proxies close silent streams
                        idle = 0.0
                        await response.write(b": keepalive\n\n")
                    continue
                idle = 0.0
                while not queue.empty():  # what piled up goes out in one write
                    message += queue.get_nowait()
                await response.write(message)
        finally:
            for task in forwarders:
                task.cancel()
            sup.activity.unsubscribe(queue)
            sup.active += 1
        return response


async def _forward_log(buffer: LogBuffer, tags: dict[str, str], out: asyncio.Queue[bytes]) -> None:
    """Log chunks as logData messages, batched per FLUSH_DELAY: a backend under load writes a
    few lines per request, and one message per line would cost the page's share per request."""
    source = buffer.subscribe()
    try:
        while True:
            chunks = [await source.get()]
            await asyncio.sleep(FLUSH_DELAY)
            while not source.empty():
                chunks.append(source.get_nowait())
            if not out.full():
                data = b"".join(chunks).decode("utf-8", "replace")
                out.put_nowait(envelope("logData", {**tags, "data": data}))
    finally:
        buffer.unsubscribe(source)


def add_dashboard_routes(app: web.Application, sup: Supervisor) -> None:
    dashboard = Dashboard(sup, lambda: selection_of(app))
    app.router.add_route("*", "/", dashboard.handle_root)
    app.router.add_get(PUBLIC_PREFIX, dashboard.handle_ui)
    app.router.add_get(PUBLIC_PREFIX + "/", dashboard.handle_ui)
    app.router.add_get(PUBLIC_PREFIX + "/{name}", dashboard.handle_ui)
    app.router.add_get("/api/state", dashboard.handle_state)
    app.router.add_get("/api/events", dashboard.handle_events)
    app.router.add_post("/api/models/load/{model:.+}", dashboard.handle_load)
