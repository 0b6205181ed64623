"""``/upstream/<model>/<path>``: any request, websockets included, passed to one model's server.

As llama-swap's ``handleUpstream``:

* the model is the longest prefix of the path that names a model, alias or peer model (IDs may
  hold ``/``); the active profile's pins apply (the longest pin prefix), selectors do not;
* ``/upstream/<model>`` redirects to ``/upstream/<model>/`` (301 for GET/HEAD, 308 otherwise)
  so relative links in the model's own web pages resolve;
* the rest of the path goes to the backend with the client's percent-encoding unchanged;
* a path matching ``upstream.ignorePaths`` (default: static assets) never starts a model: when
  the model is not ready it is answered 409 at once;
* websockets pass through (aiohttp on both sides); with ``compat.ignoreWebsockets`` a websocket
  neither starts the model (409 when it is not ready) nor counts as activity.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .driver import SUPERVISOR_KEY, Supervisor
from .http_errors import error_response
from .inference import proxy_to, unknown_model
from .proxy import ForwardResult, join_url, upstream_headers
from .scheduler import State
from .selection_http import selection_of

WS_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol"}
)
"""Handshake headers aiohttp's client writes itself for the backend connection."""
PATH_SAFE = "/:@!$&'()*+,;="


def header_has_token(request: web.Request, name: str, token: str) -> bool:
    return any(part.strip().lower() == token for value in request.headers.getall(name, []) for part in value.split(","))


def is_websocket(request: web.Request) -> bool:
    return header_has_token(request, "Connection", "upgrade") and header_has_token(request, "Upgrade", "websocket")


def escaped_suffix(raw_path: str, decoded_prefix: str) -> str | None:
    """``raw_path`` after the part that decodes to ``decoded_prefix``, its encoding untouched (a
    model ``org/m`` may arrive as ``org%2Fm``); None when the raw path does not start so."""
    raw, done = 0, 0
    while raw < len(raw_path) and done < len(decoded_prefix):
        end = raw + 3 if raw_path[raw] == "%" else raw + 1
        piece = unquote(raw_path[raw:end])
        if not decoded_prefix.startswith(piece, done):
            return None
        raw, done = end, done + len(piece)
    return raw_path[raw:] if done == len(decoded_prefix) else None


def find_model_in_path(sup: Supervisor, path: str) -> tuple[str, str] | None:
    """(the longest leading part of ``path`` that names a model, alias or peer model, the rest
    as ``/...``), or None."""
    parts = [part for part in path.split("/") if part]
    for end in range(len(parts), 0, -1):
        name = "/".join(parts[:end])
        if sup.config.resolve(name) is not None or sup.find_peer(name) is not None:
            return name, "/" + "/".join(parts[end:])
    return None


async def handle_upstream(request: web.Request) -> web.StreamResponse:
    sup = request.app[SUPERVISOR_KEY]
    tail = request.match_info["tail"]
    raw_path, _, raw_query = request.raw_path.partition("?")
    lookup, pin, target = tail, None, ""
    pinned = selection_of(request.app).pin_path(tail)
    if pinned is not None:
        pin, target = pinned
        if not target:
            return error_response(404, f"model {pin!r} is disabled by the active profile", "model_disabled")
        lookup = target + tail[len(pin) :]
    found = find_model_in_path(sup, lookup)
    if found is None:
        return unknown_model(sup, tail.split("/")[0])
    name, remaining = found
    if remaining == "/" and not raw_path.endswith("/"):
        location = "/upstream/" + quote(name, safe=PATH_SAFE) + "/" + (f"?{raw_query}" if raw_query else "")
        status = 301 if request.method in ("GET", "HEAD") else 308
        return web.Response(status=status, headers={"Location": location})
    client_prefix = pin + name[len(target) :] if pin is not None and name.startswith(target) else name
    escaped = escaped_suffix(raw_path, "/upstream/" + client_prefix)
    if escaped is None:
        escaped = quote(remaining, safe=PATH_SAFE)
    path = URL((escaped or "/") + (f"?{raw_query}" if raw_query else ""), encoded=True)

    model_id = sup.config.resolve(name)
    ready = model_id is not None and sup.status_of(model_id) is State.READY
    if model_id is not None and not ready and any(p.search(remaining) for p in sup.config.ignore_paths):
        return error_response(
            409, f"model {model_id} is not loaded; path matches upstream.ignorePaths", "model_not_loaded"
        )
    if is_websocket(request):
        if model_id is not None and sup.config.models[model_id].ignore_websockets:
            return await ignored_websocket(request, sup, model_id, path)
        return await proxy_to(request, name, path, b"", None, relay=relay_websocket)
    return await proxy_to(request, name, path, await request.read(), None)


async def ignored_websocket(request: web.Request, sup: Supervisor, model_id: str, path: URL) -> web.StreamResponse:
    """``compat.ignoreWebsockets``: straight to a ready backend, outside the scheduler (so it
    neither starts the model nor holds it; a swap may end it, as upstream accepts)."""
    backend = sup.backends.get(model_id)
    if sup.status_of(model_id) is not State.READY or backend is None or sup.session is None:
        return error_response(
            409, f"model {model_id} is not loaded; ignored websocket requests cannot start it", "model_not_loaded"
        )
    # The client's credentials stay here; a backend with its own secret gets that instead.
    headers = upstream_headers(
        request, drop_auth=bool(sup.config.api_keys) or backend.secret is not None, api_key=backend.secret
    )
    url = join_url(backend.base_url, path)
    return await relay_websocket(request, sup.session, url, b"", headers, ForwardResult())


async def relay_websocket(
    request: web.Request,
    session: aiohttp.ClientSession,
    url: str | URL,
    body: bytes,
    headers: CIMultiDict[str],
    result: ForwardResult,
    **_: Any,
) -> web.StreamResponse:
    """Open the websocket to the backend first (a refusal is answered with its status), then
    accept the client's and copy frames both ways until either side closes."""
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    sent = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in WS_HANDSHAKE)
    try:
        backend = await session.ws_connect(
            url, headers=sent, protocols=protocols, autoping=False, autoclose=False, max_msg_size=0
        )
    except aiohttp.WSServerHandshakeError as exc:
        result.status = exc.status if exc.status >= 400 else 502
        result.upstream_error = f"websocket refused: {exc.status} {exc.message}"
        return error_response(result.status, f"the backend refused the websocket: {exc.message}", "backend_error")
    except (aiohttp.ClientError, OSError) as exc:
        result.status = 502
        result.upstream_error = f"{type(exc).__name__}: {exc}"
        return error_response(502, f"backend at {url} failed before answering: {exc}", "backend_failed")
    client = web.WebSocketResponse(
        protocols=[backend.protocol] if backend.protocol else (), autoping=False, max_msg_size=0
    )
    async with backend:
        await client.prepare(request)
        result.status = 101
        pumps = [
            asyncio.ensure_future(copy_frames(client, backend)),
            asyncio.ensure_future(copy_frames(backend, client)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            await backend.close()
            await client.close()
    return client


async def copy_frames(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    while True:
        message = await source.receive()
        if message.type is aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type is aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif message.type is aiohttp.WSMsgType.PING:
            await sink.ping(message.data)
        elif message.type is aiohttp.WSMsgType.PONG:
            await sink.pong(message.data)
        elif message.type is aiohttp.WSMsgType.CLOSE:
            await sink.close(code=message.data or aiohttp.WSCloseCode.OK, message=(message.extra or "").encode())
            return
        else:  # CLOSING, CLOSED, ERROR
            return


async def handle_upstream_index(request: web.Request) -> web.StreamResponse:
    """``GET /upstream``: llama-swap sends its UI's model list; ours is the dashboard."""
    raise web.HTTPFound("/ui/")
