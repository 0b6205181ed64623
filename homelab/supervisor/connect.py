"""Opening upstream connections with one event-loop call when the backend address is an IP.

llama-server closes the connection after every streamed answer, so each stream opens a new TCP
connection to its backend, on the request's critical path. aiohttp's general route (host
resolution, happy eyeballs over the address list, then ``create_connection`` on the connected
socket) takes several event-loop round trips: ~300 us per connection on the dev VM, against
~150 us for a single ``loop.create_connection(host, port)``, which uvloop does in C. Backends
are addressed by IP (``http://127.0.0.1:${PORT}``), where the general route has nothing to
choose between, so :class:`DirectConnector` takes the short one there and the general one for
host names, TLS and proxies. The protocol is aiohttp's own (``TCP_NODELAY`` included), errors are
aiohttp's (a refused connection is a :class:`aiohttp.ClientConnectorError`, which
:func:`homelab.supervisor.proxy._send` does not retry) and ``sock_connect`` still bounds it.

A spare connection opened ahead of time (off the request path) was tried and measured no better:
the backend then accepts it while it computes the current answer, and with the backend's threads
on few cores that costs it about what the supervisor saved.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import ipaddress
import logging
from typing import Any, cast

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest


@functools.lru_cache(maxsize=256)
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class DirectConnector(aiohttp.TCPConnector):
    async def _create_connection(
        self, req: ClientRequest, traces: list[Any], timeout: aiohttp.ClientTimeout
    ) -> ResponseHandler:
        host = req.url.raw_host
        # The general route for whatever the short one does not do: TLS, proxies, host names,
        # a local_addr to bind, and trace hooks (they expect its DNS events).
        if (
            req.proxy is not None
            or req.is_ssl()
            or host is None
            or not _is_ip(host)
            or traces
            or getattr(self, "_local_addr_infos", None)
        ):
            return await super()._create_connection(req, traces, timeout)
        try:
            async with asyncio.timeout(timeout.sock_connect):
                _, proto = await self._loop.create_connection(
                    self._factory, host, cast(int, req.port)
                )  # set for http(s) URLs
        except TimeoutError:
            raise  # aiohttp turns it into ConnectionTimeoutError, as for its own connects
        except OSError as exc:
            raise aiohttp.ClientConnectorError(req.connection_key, exc) from exc
        return proto


HOOK_PARAMETERS = ("self", "req", "traces", "timeout")
"""The private aiohttp hook DirectConnector overrides, as aiohttp 3.x defines it."""


def backend_connector(**options: Any) -> aiohttp.TCPConnector:
    """The connector for backend sessions: :class:`DirectConnector` while aiohttp's private hook
    has the shape it was written against, else aiohttp's own connector (a future aiohttp then
    costs ~0.15 ms per stream, never a broken proxy)."""
    if tuple(inspect.signature(aiohttp.TCPConnector._create_connection).parameters) == HOOK_PARAMETERS:
        return DirectConnector(**options)
    logging.getLogger("homelab.supervisor").debug(
        "aiohttp %s changed TCPConnector._create_connection; using its own connect route", aiohttp.__version__
    )
    return aiohttp.TCPConnector(**options)
