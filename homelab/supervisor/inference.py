"""The inference path: model-dispatched routes, proxied to a local backend or to a peer.

A request names its model (JSON ``model``, a multipart ``model`` field, ``?model=`` or the
``/upstream/<model>/...`` path); a local model goes through the scheduler (admission, swap,
``sendLoadingState``) and is forwarded to its backend; a peer's model is forwarded to the peer.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .config import PeerConfig
from .driver import SUPERVISOR_KEY, Supervisor
from .http_errors import end_stream_with_error, error_response
from .loading import finish_loading_state, stream_loading_state, wants_loading_state
from .peers import PeerState
from .proxy import (
    ForwardResult,
    apply_filters,
    forward,
    model_body,
    multipart_with_model,
    parse_body,
    upstream_headers,
)
from .relay import relay, relayable
from .scheduler import Reject

INFERENCE_ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/rerank",
    "/v1/messages",
    "/completion",
    "/infill",
)


async def handle_inference(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    payload, requested = parse_body(request.headers.get("Content-Type", ""), body)
    requested = requested or request.query.get("model")
    if not requested:
        return error_response(
            400, "no model in the request (JSON 'model', multipart 'model' field or ?model=)", "model_missing"
        )
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
    return unknown_model(sup, parts[0])


def unknown_model(sup: Supervisor, requested: str) -> web.Response:
    serving = sup.peers_serving(requested)
    if len(serving) > 1:
        choices = [f"{peer.name}/{requested}" for peer in serving]
        return error_response(
            400,
            f"model {requested!r} is served by several peers; ask for one of: {', '.join(choices)}",
            "model_ambiguous",
            choices=choices,
        )
    known = sorted(m for m, c in sup.config.models.items() if not c.unlisted)
    known += [f"{peer.name}/{model}" for peer in sup.config.peers.values() for model in peer.models]
    return error_response(
        404, f"model {requested!r} not found; known models: {', '.join(known)}", "model_not_found", known=known
    )


async def proxy_request(
    request: web.Request, requested: str, path: str, body: bytes, payload: dict[str, Any] | None
) -> web.StreamResponse:
    sup = request.app[SUPERVISOR_KEY]
    model_id = sup.config.resolve(requested)
    if model_id is None:
        peer = sup.find_peer(requested)
        if peer is not None:
            return await proxy_peer(request, sup, peer[0], peer[1], path, body, payload)
        return unknown_model(sup, requested)
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
                return await end_stream_with_error(prepared, result.message, "model_unavailable")
            code = {429: "concurrency_limit", 404: "model_not_found"}.get(result.status, "model_unavailable")
            return error_response(result.status, result.message, code, retry_after=result.retry_after)
        backend = sup.admitted_to.get(req)
        if backend is None or not backend.alive():
            # It died between admission and now; its port may soon belong to its replacement.
            metrics.requests.inc(model=model_id, code="502")
            metrics.errors.inc(model=model_id, reason="backend")
            message = f"the backend of {model_id!r} exited before the request could be sent; retry"
            if prepared is not None:
                return await end_stream_with_error(prepared, message, "backend_failed")
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
        url = base + path
        if payload is not None and relayable(request, url):
            response = await relay(
                request,
                url,
                body,
                headers,
                outcome,
                connect_timeout=sup.session.timeout.sock_connect,
                prepared=prepared,
                same_backend=backend.alive,
            )
        else:
            response = await forward(
                request, sup.session, url, body, headers, outcome, prepared=prepared, same_backend=backend.alive
            )
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
    return error_response(
        503,
        f"peer {peer.name!r} ({peer.proxy}) is down: {reason or 'not reachable'}; "
        "its models are unavailable until it answers again",
        "peer_unavailable",
        retry_after=1,
        peer=peer.name,
    )


async def proxy_peer(
    request: web.Request,
    sup: Supervisor,
    peer: PeerConfig,
    model: str,
    path: str,
    body: bytes,
    payload: dict[str, Any] | None,
) -> web.StreamResponse:
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
        response = await forward(
            request, session, peer.proxy + path, body, headers, outcome, same_backend=lambda: not session.closed
        )
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
