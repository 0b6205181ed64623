"""The management API: model listing, running state, unload, logs, metrics, health, reload.

These routes answer from the driver's state and never go through the scheduler's admission.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from .driver import SUPERVISOR_KEY, Supervisor
from .inference import unknown_model
from .logs import LogBuffer
from .peers import PeerState
from .scheduler import State
from .selection_http import listing_record, selection_records


def _status_value(sup: Supervisor, model_id: str) -> str:
    state = sup.status_of(model_id)
    return {State.READY: "loaded", State.STARTING: "loading", State.STOPPING: "unloading"}.get(state, "unloaded")


async def handle_models(request: web.Request) -> web.Response:
    """llama-swap's listing: models (and aliases when asked), peer models, selectors and the
    active profile's pins, sorted by ID; metadata under ``meta.llamaswap``."""
    sup = request.app[SUPERVISOR_KEY]
    data = []
    listed: set[str] = set()
    for model_id, cfg in sup.config.models.items():
        aliases = [alias for alias, target in sup.config.aliases.items() if target == model_id]
        listed.update([model_id, *aliases])
        if cfg.unlisted:
            continue
        status = _status_value(sup, model_id)
        internal: dict[str, Any] = {"type": "model"}
        if aliases:
            internal["aliases"] = aliases
        listed_ids = [(model_id, internal)]
        if sup.config.include_aliases_in_list:
            listed_ids += [(alias, {"type": "alias", "modelID": model_id}) for alias in aliases]
        for listed_id, facts in listed_ids:
            record = listing_record(
                sup,
                listed_id,
                status,
                name=cfg.name,
                description=cfg.description,
                metadata=cfg.metadata,
                capabilities=cfg.capabilities,
                internal=facts,
            )
            data.append(record)
    for peer in sup.config.peers.values():
        health = sup.peers.health.get(peer.name)
        described = health.describe() if health is not None else {"state": PeerState.UNKNOWN.value}
        for model in peer.models:
            # Listed qualified (always routable and unique); a bare name also works when exactly
            # one peer lists it. status.value is the peer's health: up / down / unknown.
            listed.add(f"{peer.name}/{model}")
            if sup.config.peer_model(model) == (peer, model):
                listed.add(model)
            entry = listing_record(
                sup,
                f"{peer.name}/{model}",
                str(described["state"]),
                name=f"{peer.name}: {model}",
                internal={"type": "peer", "peerID": peer.name},
                owned_by=peer.name,
            )
            entry["meta"]["peer"] = {"name": peer.name, **described}
            data.append(entry)
    data += selection_records(request.app, listed)
    data.sort(key=lambda entry: entry["id"])
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
        running.append(
            {
                "model": model_id,
                "state": state.state.value,
                "cmd": " ".join(cfg.cmd),
                "proxy": cfg.proxy,
                "ttl": ttl,
                # llama-swap's fields: empty strings when the config sets none
                "name": cfg.name or "",
                "description": cfg.description or "",
            }
        )
    return web.json_response({"running": running, "peers": _peer_entries(sup)})


async def handle_unload(request: web.Request) -> web.StreamResponse:
    sup = request.app[SUPERVISOR_KEY]
    model = request.match_info.get("model")
    if model is not None:
        model_id = sup.config.resolve(model)
        if model_id is None:
            return unknown_model(sup, model)
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
    if name == "upstream":
        return sup.upstream_log
    model_id = sup.config.resolve(name) or (name if name in sup.logs else None)
    return sup.model_log(model_id) if model_id else None


async def handle_logs(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR_KEY]
    return web.Response(body=sup.all_log.contents(), content_type="text/plain")


async def handle_log_stream(request: web.Request) -> web.StreamResponse:
    sup = request.app[SUPERVISOR_KEY]
    buffer = _log_buffer(sup, request.match_info.get("model"))
    if buffer is None:
        return unknown_model(sup, request.match_info.get("model", ""))
    response = web.StreamResponse(
        headers={"Content-Type": "text/plain; charset=utf-8", "X-Accel-Buffering": "no", "Cache-Control": "no-cache"}
    )
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
    sup.deferred.run_now()  # requests whose counts are still queued
    loaded = {m: sup.status_of(m) is State.READY for m in sup.config.models}
    peers_up = {name: health.state is PeerState.UP for name, health in sup.peers.health.items()}
    # ours, then llama-swap's host gauges under its names (its Grafana dashboard reads them),
    # unless performance.disabled turns that sampling off as in llama-swap
    text = sup.metrics.render(loaded, peers_up)
    if not sup.config.performance.disabled:
        text += await sup.host_metrics.render()
    return web.Response(text=text, content_type="text/plain")


async def handle_reload(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR_KEY]
    ok, error, restarting = await sup.reload()
    # "changed" is the answer's field `homelab reload` and the deployer read: the models restarted
    return web.json_response({"reloaded": ok, "error": error or None, "changed": restarting}, status=200 if ok else 400)
