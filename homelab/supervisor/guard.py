"""The supervisor's front door (aiohttp): Host and Origin policy, CORS, API keys, body limits.

In order, for every request:

1. ``Host`` must be a name this server answers to (:mod:`.security`), else **421**;
2. ``OPTIONS`` is answered here and never reaches a route: a CORS preflight from an allowed
   origin gets the ``Access-Control-*`` headers, one from any other origin gets **403** and none;
3. a browser request (it carries ``Origin``) from a origin that is not allowed gets **403**; so
   does a cross-site request without ``Origin`` (``Sec-Fetch-Site``: an ``<img>``, a
   ``<script>``) unless it is a plain navigation;
4. the API key, when the config has ``apiKeys`` (**401**);
5. a browser request with a body must say ``application/json`` (``multipart/form-data`` on the
   routes that take files), else **415**: a page can send ``text/plain`` or a form without a
   preflight, never JSON. Clients without ``Origin`` (curl ``-d``, SDKs) are not held to it;
6. the body is read here, bounded: over ``x-security.maxBodyMiB`` is **413**, not received
   within ``x-security.bodyTimeout`` seconds is **408** (a client that trickles its body holds
   nothing for longer than that). A multipart upload is checked here only by its
   ``Content-Length``: its route reads it (a large file is streamed to the backend, and waits
   for a model to load), under the same cap on what actually arrives and with ``bodyTimeout``
   between two pieces (:class:`.multipart.UploadLimits`).

Every refusal is a JSON error naming the setting that changes it. Responses carry CORS headers
only for an allowed cross-origin page (:func:`cors_on_prepare`, which sees every response,
streamed or not); a backend's own ``Access-Control-*`` headers are always dropped (the relays
filter them with the hop-by-hop ones: :func:`.proxy.passed_to_client`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from .config import Config
from .dashboard import is_public
from .driver import SUPERVISOR_KEY
from .http_errors import RequestError, error_response
from .security import HttpPolicy, presented_keys

log = logging.getLogger("homelab.supervisor")

LISTEN_HOST_KEY = web.AppKey("listen_host", str)
_POLICY_KEY = web.AppKey("http_policy", list)
"""``[config, policy]``: the policy built for that config object."""

MULTIPART_ROUTES = frozenset(
    {"/v1/audio/transcriptions", "/v1/audio/translations", "/v1/images/edits", "/v1/images/variations"}
)
"""Routes that take files: a browser may send multipart/form-data there."""
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ALLOW_METHODS = "GET, POST, OPTIONS"
PREFLIGHT_MAX_AGE = "600"
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
NAVIGATION_REFUSED = frozenset({"/unload"})
"""GET routes with an effect: a link on another site must not trigger them."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def http_policy(app: web.Application, config: Config) -> HttpPolicy:
    """The policy for the config in force (built again once after a reload)."""
    cached = app[_POLICY_KEY]
    if cached and cached[0] is config:  # identity: the cache holds the config, so no id reuse
        return cached[1]
    security = config.security
    policy = HttpPolicy.build(
        security.allowed_hosts, security.allowed_origins, config.api_keys, app.get(LISTEN_HOST_KEY)
    )
    cached[:] = [config, policy]
    return policy


def _where(config: Config) -> str:
    return f" in {config.source}" if config.source else " in the supervisor's config"


def _host_refused(request: web.Request, config: Config) -> web.Response:
    host = request.headers.get("Host", "")
    return error_response(
        421,
        f"this server does not answer to the name {host!r} (a page on another site can point such a "
        "name at this machine: DNS rebinding). If clients reach it by that name, add it to "
        f"x-security.allowedHosts{_where(config)}",
        "host_not_allowed",
        setting="x-security.allowedHosts",
    )


def _origin_refused(origin: str, config: Config) -> web.Response:
    return error_response(
        403,
        f"a web page from {origin} may not use this server (only loopback origins and this server's "
        f"own pages may). To allow a web app there, add its origin to x-security.allowedOrigins{_where(config)}",
        "origin_not_allowed",
        setting="x-security.allowedOrigins",
    )


def _cross_site_refused(config: Config) -> web.Response:
    return error_response(
        403,
        "a cross-site request without an Origin (an image, a script, a frame of another site) may not "
        f"use this server; web apps send Origin with fetch(): allow theirs in x-security.allowedOrigins{_where(config)}",
        "cross_site_refused",
        setting="x-security.allowedOrigins",
    )


def _is_cross_site_subresource(request: web.Request) -> bool:
    """No ``Origin``, but the browser says another site made the request and it is not a GET
    navigation (a link the user followed) to a route without effects."""
    site = request.headers.get("Sec-Fetch-Site", "")
    if site not in ("cross-site", "same-site"):
        return False
    navigation = request.headers.get("Sec-Fetch-Mode") == "navigate" and request.method in ("GET", "HEAD")
    return not navigation or request.path in NAVIGATION_REFUSED


def _preflight(request: web.Request, policy: HttpPolicy, config: Config) -> web.Response:
    origin = request.headers.get("Origin")
    if origin is None or "Access-Control-Request-Method" not in request.headers:
        return web.Response(status=204, headers={"Allow": ALLOW_METHODS})  # plain OPTIONS: what we take
    if not policy.origin_allowed(origin, request.headers.get("Host")):
        return _origin_refused(origin, config)
    requested = request.headers.get("Access-Control-Request-Headers", "")
    names = [n.strip() for n in requested.split(",") if _HEADER_NAME.match(n.strip())]
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": ALLOW_METHODS,
        "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
        "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    }
    if names:
        headers["Access-Control-Allow-Headers"] = ", ".join(names)
    return web.Response(status=204, headers=headers)


def _content_type_refused(request: web.Request) -> web.Response | None:
    if request.method not in BODY_METHODS or not request.body_exists:
        return None
    kind = request.content_type
    if kind == "application/json" or (kind == "multipart/form-data" and request.path in MULTIPART_ROUTES):
        return None
    takes = "application/json" + (" or multipart/form-data" if request.path in MULTIPART_ROUTES else "")
    return error_response(
        415,
        f"{request.method} {request.path} from a web page takes {takes}, not {kind!r} (a page can send "
        "text/plain or a form to any site without asking first; JSON needs the browser's CORS check)",
        "unsupported_media_type",
    )


async def _read_body(request: web.Request, config: Config) -> web.Request | web.Response:
    """The request with its body read (handlers' ``read()`` returns it), or the refusal."""
    if (refused := _over_cap(request, config)) is not None:
        return refused
    cap = config.security.max_body_mib << 20
    if request.client_max_size != cap:  # a reload changed it (cloning costs tens of microseconds)
        request = request.clone(client_max_size=cap)
    try:
        if request.content.is_eof():  # all of it came with the head (most API calls): no timer
            await request.read()
        else:
            async with asyncio.timeout(config.security.body_timeout):
                await request.read()
    except web.HTTPRequestEntityTooLarge:
        return body_too_large(config)
    except TimeoutError:
        return body_timed_out(config)
    return request


def body_timed_out(config: Config, *, between_pieces: bool = False) -> web.Response:
    """408 for a body that did not arrive in time (``between_pieces``: an upload that stalled)."""
    what = "the next piece of the upload" if between_pieces else "the request body"
    refused = error_response(
        408,
        f"{what} did not arrive within {config.security.body_timeout:g}s; "
        f"a slower client needs a larger x-security.bodyTimeout{_where(config)}",
        "body_timeout",
        setting="x-security.bodyTimeout",
    )
    refused.force_close()  # the rest of the body is not coming: close after the answer
    return refused


def _streamed(request: web.Request) -> bool:
    return request.content_type == "multipart/form-data"


def _over_cap(request: web.Request, config: Config) -> web.Response | None:
    """413 for a body whose announced length is over the cap (nothing of it is read)."""
    cap = config.security.max_body_mib << 20
    if request.content_length is not None and request.content_length > cap:
        return body_too_large(config)
    return None


def body_too_large(config: Config) -> web.Response:
    """413 for a body over ``x-security.maxBodyMiB`` (announced, read, or streamed)."""
    refused = error_response(
        413,
        f"the request body is larger than {config.security.max_body_mib} MiB (x-security.maxBodyMiB{_where(config)})",
        "body_too_large",
        setting="x-security.maxBodyMiB",
    )
    refused.force_close()  # rather than reading (and dropping) the rest of the body
    return refused


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    sup = request.app[SUPERVISOR_KEY]
    config = sup.config
    policy = http_policy(request.app, config)
    host = request.headers.get("Host")
    if not policy.host_allowed(host):
        return _host_refused(request, config)
    if request.method == "OPTIONS":
        return _preflight(request, policy, config)
    origin = request.headers.get("Origin")
    if origin is not None:
        if not policy.origin_allowed(origin, host):
            return _origin_refused(origin, config)
    elif _is_cross_site_subresource(request):
        return _cross_site_refused(config)
    if (
        policy.keys
        and request.path not in ("/health", "/wol-health")
        and not is_public(request)
        and not policy.key_valid(presented_keys(request.headers))
    ):
        return error_response(
            401, "invalid or missing API key (Authorization: Bearer KEY or x-api-key)", "invalid_api_key"
        )
    if origin is not None and (refused := _content_type_refused(request)) is not None:
        return refused
    if not sup.accepting:
        return error_response(503, "the supervisor is shutting down", "shutting_down", retry_after=5)
    sup.active += 1
    started = time.perf_counter()
    status = 500
    try:
        if request.method in BODY_METHODS and request.body_exists:
            read = (_over_cap(request, config) or request) if _streamed(request) else await _read_body(request, config)
            if isinstance(read, web.Response):
                status = read.status
                return read
            request = read
        try:
            response = await handler(request)
        except RequestError as exc:
            response = error_response(exc.status, exc.message, exc.code)
        status = response.status
        return response
    finally:
        sup.active -= 1
        if config.log_requests:
            log.info(
                "%s %s %s %d %.1fms",
                request.remote,
                request.method,
                request.path_qs,
                status,
                1000 * (time.perf_counter() - started),
            )


async def cors_on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Just before any response's headers go out: ours for an allowed cross-origin page
    (preflights set their own). A backend's own ``Access-Control-*`` headers never get this far:
    the relays drop them with the hop-by-hop ones (:func:`.proxy.passed_to_client`)."""
    origin = request.headers.get("Origin")
    if origin is None or request.method == "OPTIONS":
        return
    policy = http_policy(request.app, request.app[SUPERVISOR_KEY].config)
    if policy.origin_allowed(origin, request.headers.get("Host")):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "Retry-After"
        response.headers.add("Vary", "Origin")


def install(app: web.Application, listen_host: str | None) -> None:
    """Put the guard in front of every route of ``app``."""
    if listen_host:
        app[LISTEN_HOST_KEY] = listen_host
    app[_POLICY_KEY] = []
    app.middlewares.append(guard)
    app.on_response_prepare.append(cors_on_prepare)
