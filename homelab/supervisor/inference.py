"""The inference path: model-dispatched routes, proxied to a local backend or to a peer.

A request names its model (JSON ``model``, a multipart ``model`` field, ``?model=``, or the
``/upstream/<model>/...`` path: :mod:`.upstream`); a local model goes through the scheduler (admission, swap,
``sendLoadingState``) and is forwarded to its backend; a peer's model is forwarded to the peer.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .config import PeerConfig, Timeouts
from .driver import SUPERVISOR_KEY, Supervisor
from .guard import body_timed_out, body_too_large
from .http_errors import end_stream_with_error, error_response
from .loading import finish_loading_state, stream_loading_state, wants_loading_state
from .multipart import StreamedForm, UploadLimits, UploadRefused, read_form_head
from .peers import PeerState
from .proxy import (
    WRITE_TIMEOUT_REASON,
    Body,
    ForwardResult,
    Relay,
    apply_filters,
    forward,
    join_url,
    model_body,
    multipart_with_model,
    parse_body_off_loop,
    upstream_fields,
    upstream_headers,
)
from .relay import relay as relay_stream
from .relay import relayable
from .scheduler import Reject
from .selection import SelectionError
from .selection_http import model_states, selection_of

log = logging.getLogger("homelab.supervisor")

# llama-swap's model-dispatched routes (its internal/server/server.go): the model is read from a
# JSON body, a multipart form field or ``?model=``, and the path goes to the backend as it came.
INFERENCE_ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/rerank",
    "/v1/reranking",
    "/rerank",
    "/reranking",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/completion",
    "/infill",
    "/v1/audio/speech",
    "/v1/audio/voices",
    "/v1/audio/transcriptions",
    "/v1/images/generations",
    "/v1/images/edits",
    "/sdapi/v1/txt2img",
    "/sdapi/v1/img2img",
)
MODEL_GET_ROUTES = ("/v1/audio/voices", "/props", "/sdapi/v1/loras")
"""GET routes whose model is ``?model=``."""
STRIPPED_ROUTES = {
    # llama-swap's versionless routes: /v/chat/completions reaches the backend as /chat/completions
    **{
        f"/v/{tail}": "/v"
        for tail in (
            "chat/completions",
            "responses",
            "completions",
            "messages",
            "messages/count_tokens",
            "embeddings",
            "rerank",
            "reranking",
        )
    },
    # audio.cpp's task API: /audioapi/v1/tasks/run reaches the backend as /v1/tasks/run
    "/audioapi/v1/tasks/run": "/audioapi",
}
"""Route -> the prefix taken off before the request is forwarded."""
FORM_LIMIT = 64 << 20
"""Bytes of a multipart body read at most while looking for its model field (see :mod:`.multipart`)."""


async def handle_inference(request: web.Request) -> web.StreamResponse:
    return await _dispatch(request, request.path_qs)


async def handle_stripped(request: web.Request) -> web.StreamResponse:
    """A versionless (or /audioapi) route: forwarded without its prefix."""
    path = request.path_qs[len(STRIPPED_ROUTES[request.path]) :]
    return await _dispatch(request, path)


async def _dispatch(request: web.Request, path: str) -> web.StreamResponse:
    content_type = request.headers.get("Content-Type", "")
    if content_type.startswith("multipart/form-data"):
        return await _dispatch_form(request, path, content_type)
    body = await request.read()
    max_depth = request.app[SUPERVISOR_KEY].config.security.max_json_depth
    payload, requested = await parse_body_off_loop(content_type, body, max_depth)
    requested = requested or request.query.get("model")
    if not requested:
        return _no_model()
    return await proxy_request(request, requested, path, body, payload)


async def _dispatch_form(request: web.Request, path: str, content_type: str) -> web.StreamResponse:
    """A multipart upload: read up to its model field, stream the rest (:mod:`.multipart`), held
    to ``x-security.maxBodyMiB`` and ``bodyTimeout`` as it arrives. A limit broken before the
    answer started gets 413 / 408 (the backend's request, if sent, is aborted)."""
    sup = request.app[SUPERVISOR_KEY]
    security = sup.config.security
    limits = UploadLimits(security.max_body_mib << 20, security.body_timeout)
    requested: str | None = request.query.get("model")
    try:
        form = await read_form_head(request.content, content_type, request.content_length, FORM_LIMIT, limits)
        requested = form.model or requested
        if requested:
            return await proxy_request(request, requested, path, form, None)
    except UploadRefused as exc:
        if requested:  # by model, as every error; a form without one is only answered
            sup.metrics.errors.inc(model=requested, reason=exc.code)
        if exc.code == "body_timeout":
            return body_timed_out(sup.config, between_pieces=True)
        return body_too_large(sup.config)
    if not form.searched:
        return error_response(
            413,
            f"no 'model' field in the first {FORM_LIMIT} bytes of the form: "
            "send the 'model' field before the files, or ?model=",
            "model_field_too_late",
        )
    return _no_model()


def _no_model() -> web.Response:
    return error_response(
        400, "no model in the request (JSON 'model', multipart 'model' field or ?model=)", "model_missing"
    )


async def handle_model_get(request: web.Request) -> web.StreamResponse:
    """GET /props?model=..., /v1/audio/voices?model=...: the model comes from the query."""
    requested = request.query.get("model")
    if not requested:
        return error_response(400, f"GET {request.path} needs ?model=<model>", "model_missing")
    return await proxy_request(request, requested, request.path_qs, b"", None)


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
    request: web.Request, requested: str, path: str, body: bytes | StreamedForm, payload: dict[str, Any] | None
) -> web.StreamResponse:
    """Route a model-dispatched request: the active profile's pin and the selectors decide which
    model or peer ``requested`` means now, then it is proxied."""
    selection = selection_of(request.app)
    try:
        choice = selection.choose(requested, lambda: model_states(request.app[SUPERVISOR_KEY]))
    except SelectionError as exc:
        return error_response(exc.status, exc.message, exc.code)
    try:
        return await proxy_to(request, choice.name, path, body, payload)
    finally:
        selection.release(choice)


async def proxy_to(
    request: web.Request,
    requested: str,
    path: str | URL,
    body: bytes | StreamedForm,
    payload: dict[str, Any] | None,
    relay: Relay = forward,
) -> web.StreamResponse:
    """Proxy to the model or peer ``requested`` names (no profile or selector). ``path``: the
    backend path, or an already-encoded URL path (``/upstream`` keeps the client's encoding);
    ``relay``: how to pass the exchange on (HTTP, or a websocket for ``/upstream``)."""
    sup = request.app[SUPERVISOR_KEY]
    model_id = sup.config.resolve(requested)
    if model_id is None:
        peer = sup.find_peer(requested)
        if peer is not None:
            return await proxy_peer(request, sup, peer[0], peer[1], path, body, payload, relay)
        return unknown_model(sup, requested)
    cfg = sup.config.models[model_id]
    upload: StreamedForm | None = None
    if isinstance(body, StreamedForm):
        upload = body.renamed(cfg.use_model_name) if cfg.use_model_name else body
        whole = b""
    else:
        whole = model_body(cfg, requested, payload, body, request.headers.get("Content-Type", ""))
    started = time.perf_counter()
    started_mono = time.monotonic()
    metrics = sup.metrics
    req, fut = sup.enqueue(model_id)
    prepared: web.StreamResponse | None = None
    relayed: ForwardResult | None = None
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
        outcome = ForwardResult()
        url = join_url(backend.base_url, path)
        # The client's credentials stay here; a backend with its own secret gets that instead.
        drop_auth = bool(sup.config.api_keys) or backend.secret is not None
        # llama-server closes the connection after a stream (while announcing keep-alive): it
        # must not be reused for a later request.
        stream = payload is not None and payload.get("stream") is True
        write_timeout = sup.config.security.write_timeout
        sup.deferred.run_soon()  # earlier requests' bookkeeping, while this one is with its backend
        if upload is None and lean_relay_fits(request, url, relay, cfg.timeouts):
            assert isinstance(url, str)  # lean_relay_fits
            response = await relay_stream(
                request,
                url,
                whole,
                upstream_fields(request, drop_auth=drop_auth, api_key=backend.secret),
                outcome,
                close=stream,
                connect_timeout=float(cfg.timeouts.connect) or None,
                prepared=prepared,
                same_backend=backend.alive,
                write_timeout=write_timeout,
                pool=backend.connections,
            )
        else:
            headers = upstream_headers(request, drop_auth=drop_auth, api_key=backend.secret)
            if stream:  # else aiohttp would pool the connection the moment the body ends
                headers["Connection"] = "close"
            assert sup.session is not None
            response = await relay(
                request,
                sup.session,
                url,
                _form_data(upload, headers) if upload is not None else whole,
                headers,
                outcome,
                prepared=prepared,
                same_backend=backend.alive,
                timeouts=cfg.timeouts,
                write_timeout=write_timeout,
            )
        relayed = outcome  # recorded even if the client leaves while the answer is written
        await send_now(request, response)
        return response
    finally:
        elapsed = time.perf_counter() - started
        sup.release(req)
        if relayed is None:  # refused, or the relay raised: only the time is counted
            metrics.latency.observe(elapsed, model=model_id)
        else:
            sup.deferred.defer(_record, sup, request, req, model_id, relayed, elapsed)


def _record(
    sup: Supervisor, request: web.Request, req: int, model_id: str, outcome: ForwardResult, elapsed: float
) -> None:
    """A relayed request's metrics and activity record (deferred: :mod:`.deferred`)."""
    metrics = sup.metrics
    metrics.latency.observe(elapsed, model=model_id)
    metrics.requests.inc(model=model_id, code=str(outcome.status))
    if outcome.upstream_error or outcome.status >= 500:
        metrics.errors.inc(model=model_id, reason="backend")
    _note_stalled_client(sup, request, model_id, outcome)
    if outcome.usage:
        for kind in ("prompt_tokens", "completion_tokens"):
            value = outcome.usage.get(kind)
            if isinstance(value, int):
                metrics.tokens.inc(value, model=model_id, kind=kind.removesuffix("_tokens"))
    sup.activity.request_done(req, model_id, outcome.status, elapsed, outcome.usage)


async def send_now(request: web.Request, response: web.StreamResponse) -> None:
    """A whole answer (a short one, read at once) goes to the client before the bookkeeping that
    follows it (metrics, the activity record, the scheduler's release): the client does not wait
    for those. aiohttp's own finish then finds it sent. A client that left is aiohttp's to see."""
    if isinstance(response, web.Response) and not response.prepared:
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            pass


def _note_stalled_client(sup: Supervisor, request: web.Request, model: str, outcome: ForwardResult) -> None:
    """One log line and ``homelab_errors_total{reason="write_timeout"}`` for a client whose
    connection was closed because it stopped reading (:func:`.proxy.cut_off_stalled_client`)."""
    if outcome.client_stalled is None:
        return
    sup.metrics.errors.inc(model=model, reason=WRITE_TIMEOUT_REASON)
    log.warning(
        "%s: closed the connection of client %s and the backend's: %s", model, request.remote, outcome.client_stalled
    )


def lean_relay_fits(request: web.Request, url: str | URL, relay: Relay, timeouts: Timeouts) -> bool:
    """Whether :func:`.relay.relay` may carry this exchange (with a whole body) instead of
    ``relay`` (aiohttp's client): plain HTTP to an IP address, no websocket, and no
    ``timeouts.responseHeader`` (the lean relay bounds only the connect)."""
    return relay is forward and isinstance(url, str) and not timeouts.response_header and relayable(request, url)


def _form_data(form: StreamedForm, headers: CIMultiDict[str]) -> Body:
    """The upload's body; its length is sent when the client sent one (no chunked upload then:
    not every backend reads chunked request bodies)."""
    if form.length is not None:
        headers["Content-Length"] = str(form.length)
    return form.body()


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
    path: str | URL,
    body: bytes | StreamedForm,
    payload: dict[str, Any] | None,
    relay: Relay = forward,
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
        headers = upstream_headers(request, drop_auth=True, api_key=peer.api_key)
        data: Body
        if isinstance(body, StreamedForm):
            data = _form_data(body.renamed(model), headers)  # the peer knows it as `model`
        elif payload is not None:
            data = apply_filters(payload, peer.filters, model, model, body)
        elif (content_type := request.headers.get("Content-Type", "")).startswith("multipart/form-data"):
            data = multipart_with_model(content_type, body, model)
        else:
            data = body
        outcome = ForwardResult()
        monitor.touch(peer.name)
        session = monitor.session(peer.name)
        # A pooled connection the peer closed under us is retried, unless the session was closed
        # because the peer went down.
        response = await relay(
            request,
            session,
            join_url(peer.proxy, path),
            data,
            headers,
            outcome,
            same_backend=lambda: not session.closed,
            timeouts=peer.timeouts,
            connect_cap=monitor.timings.connect_timeout,
            write_timeout=sup.config.security.write_timeout,
        )
        _note_stalled_client(sup, request, label, outcome)
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
