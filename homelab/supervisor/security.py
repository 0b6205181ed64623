"""The supervisor's HTTP policy as pure functions: which ``Host`` names, which browser origins,
which API keys. The aiohttp side (middleware, CORS headers, body limits) is :mod:`.guard`.

Why these rules (docs/security.md has the threat model):

* **Host** (DNS rebinding): a web page can make its own name resolve to 127.0.0.1 and then talk
  to a loopback server as if it were same-origin; the browser still sends the page's name in
  ``Host``. So a request is served only when ``Host`` is a loopback name, an IP address (a page
  cannot rebind an address: an IP in the URL is the origin itself), this machine's hostname,
  the ``--listen`` host, or a name in ``x-security.allowedHosts``.
* **Origin** (cross-site requests): browsers add ``Origin`` to every cross-origin request and
  every non-GET one. Only loopback origins (any port: Open WebUI, a notebook), the server's own
  origin (the dashboard) and ``x-security.allowedOrigins`` may use the API from a browser.
* **Keys**: compared in constant time against every configured key; ``Authorization: Bearer``,
  ``Authorization: Basic`` (the password is the key, as llama-swap accepts) or ``x-api-key``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from ..address import is_ip, is_loopback

DEFAULT_PORTS = {"http": 80, "https": 443}


def host_name(host: str) -> str:
    """The name part of a ``Host`` header (no port, no IPv6 brackets), lower case, without a
    trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def is_loopback_name(name: str) -> bool:
    """localhost and its spellings, ``*.localhost`` (RFC 6761: browsers resolve it to loopback
    themselves) or a loopback address."""
    return is_loopback(name) or name.endswith(".localhost")


@lru_cache(maxsize=1024)
def _host_kind(host: str) -> tuple[str, bool]:
    """A ``Host`` header's name, and whether it is a loopback name or an IP address (allowed
    whatever the config says). Cached: every request asks, with one of a few values."""
    name = host_name(host)
    return name, is_loopback_name(name) or is_ip(name)


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case with the default port left out, or None when it
    is not an http(s) origin (``null``, a file URL, garbage)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    host = parts.hostname.lower().rstrip(".")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    return f"{scheme}://{netloc}"


@dataclass(frozen=True)
class HttpPolicy:
    """What the middleware checks, built once per config (and again on reload)."""

    hosts: frozenset[str]
    any_host: bool
    origins: frozenset[str]
    any_origin: bool
    keys: tuple[bytes, ...]

    @classmethod
    def build(
        cls,
        allowed_hosts: Iterable[str],
        allowed_origins: Iterable[str],
        api_keys: Iterable[str],
        listen_host: str | None,
    ) -> HttpPolicy:
        hosts = {host_name(h) for h in allowed_hosts if h != "*"}
        if listen_host:
            hosts.add(host_name(listen_host))
        machine = socket.gethostname().lower()
        hosts |= {machine, machine.split(".")[0]}
        origins = {o for o in (normalize_origin(x) for x in allowed_origins if x != "*") if o}
        return cls(
            hosts=frozenset(hosts),
            any_host="*" in allowed_hosts,
            origins=frozenset(origins),
            any_origin="*" in allowed_origins,
            keys=tuple(_digest(k) for k in api_keys),
        )

    def host_allowed(self, host: str | None) -> bool:
        """A request without ``Host`` (HTTP/1.0 tools) is allowed: browsers always send one."""
        if host is None or self.any_host:
            return True
        name, local = _host_kind(host)
        return local or name in self.hosts

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        """The page at ``origin`` may use the API: a loopback origin, the server's own origin (as
        reached through ``host``, already checked), or a configured one."""
        normal = normalize_origin(origin)
        if normal is None:
            return False  # "null" (sandboxed frames, file: pages) and anything not http(s)
        if self.any_origin or normal in self.origins:
            return True
        netloc = normal.split("://", 1)[1]
        if host is not None and netloc == host.strip().lower() and self.host_allowed(host):
            return True
        return is_loopback_name(host_name(netloc))

    def key_valid(self, candidates: Iterable[str]) -> bool:
        """Any candidate equals any configured key. Digests of equal length are compared in
        constant time, every pair without an early exit: the time says nothing about which key,
        how long it is, or how many bytes matched."""
        ok = False
        for candidate in candidates:
            given = _digest(candidate)
            for key in self.keys:
                ok |= hmac.compare_digest(given, key)
        return ok


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def presented_keys(headers: Mapping[str, str]) -> list[str]:
    """The keys a request presents: ``Authorization: Bearer K``, ``Authorization: Basic`` with
    K as the password (any user name), ``x-api-key: K``."""
    found = []
    scheme, _, credentials = headers.get("Authorization", "").strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        found.append(credentials)
    elif scheme.lower() == "basic" and credentials:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        _user, colon, password = decoded.partition(":")
        if colon and password:
            found.append(password)
    header_key = headers.get("x-api-key")
    if header_key:
        found.append(header_key.strip())
    return found
