"""Peer health: is each peer (another supervisor, llama-swap or OpenAI-compatible server) reachable?

A peer is probed with ``GET <proxy>/health`` (short timeouts). Any HTTP answer below 500 means the
server is there (a plain OpenAI-compatible server may answer 404 on ``/health``; that still proves
it listens); a refused or timed-out connection, or a 5xx, is a failure. The supervisor answers
requests for a peer that is *down* at once with 503 naming the peer and the reason, instead of
letting clients wait on a dead address.

:class:`PeerHealth` holds the state and its pure transitions (``succeeded`` / ``failed`` take the
clock as an argument, so they are tested without sleeps); :class:`PeerMonitor` is the thin loop
that probes every peer and sleeps until the next check is due.

State rules:

* ``unknown`` until the first probe finishes; requests are tried (the probe may still be running).
* One success -> ``up``. From ``up``, ``fail_after`` consecutive failures -> ``down`` (one lost
  probe on a busy box does not turn a peer away); from ``unknown`` one failure is enough.
* After a failure the next probe comes after ``recheck`` seconds (fast), so a peer that comes back
  is served again within about a second; a healthy peer is probed every ``interval`` seconds.
* A request that cannot reach the peer counts as a failure too (:meth:`PeerMonitor.report_failure`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

import aiohttp
from aiohappyeyeballs import AddrInfoType

from .config import PeerConfig, Timeouts
from .proxy import key_headers

log = logging.getLogger("homelab.supervisor")

PROBE_PATH = "/health"


class PeerState(StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


def peer_connector(timeouts: Timeouts | None) -> aiohttp.TCPConnector:
    """The pool for one peer: idle connections kept ``timeouts.idleConn`` seconds (0: no limit),
    TCP keep-alive probes every ``timeouts.keepalive`` seconds (0: off), as llama-swap's
    transport. Probes (no peer) keep short-lived connections."""
    if timeouts is None:
        return aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=3)
    interval = timeouts.keepalive

    def keepalive_socket(addr_info: AddrInfoType) -> socket.socket:
        family, kind, proto, _, _ = addr_info
        sock = socket.socket(family=family, type=kind, proto=proto)
        if interval > 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; elsewhere the system's interval applies
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, interval)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        return sock

    return aiohttp.TCPConnector(
        limit=0,
        ttl_dns_cache=300,
        keepalive_timeout=float(timeouts.idle_conn) if timeouts.idle_conn else None,
        socket_factory=keepalive_socket,
    )


@dataclass(frozen=True)
class ProbeTimings:
    interval: float = 5.0
    """Seconds between probes of a healthy peer."""
    recheck: float = 0.5
    """Seconds before the next probe after a failure (fast, so a peer is back soon)."""
    timeout: float = 2.0
    """Whole-probe timeout (connect + answer): a stopped process that still accepts is down."""
    connect_timeout: float = 2.0
    """TCP connect timeout for probes and for requests sent to peers."""
    fail_after: int = 2
    """Consecutive failures that turn an ``up`` peer ``down``."""


@dataclass
class PeerHealth:
    """One peer's state. Transitions are pure: the caller passes the clock."""

    name: str
    state: PeerState = PeerState.UNKNOWN
    last_error: str | None = None
    """Why the last probe or request failed (kept while down, cleared by a success)."""
    changed_at: float | None = None
    """Wall-clock time (epoch seconds) of the last state change."""
    checked_at: float | None = None
    """Wall-clock time of the last finished probe."""
    failures: int = 0
    """Consecutive failures since the last success."""

    def succeeded(self, now: float) -> bool:
        """A probe answered. Returns True when the state changed."""
        self.checked_at = now
        self.failures = 0
        self.last_error = None
        return self._set(PeerState.UP, now)

    def failed(self, error: str, now: float, fail_after: int) -> bool:
        """A probe or request failed. Returns True when the state changed."""
        self.checked_at = now
        self.failures += 1
        self.last_error = error
        if self.state is PeerState.UP and self.failures < fail_after:
            return False
        return self._set(PeerState.DOWN, now)

    def next_delay(self, timings: ProbeTimings) -> float:
        """Seconds until the next probe: fast after a failure, slow while healthy."""
        return timings.recheck if self.failures else timings.interval

    def describe(self) -> dict[str, object]:
        """The JSON shape shown in ``/v1/models`` (meta) and ``/running``."""
        return {
            "state": self.state.value,
            "lastError": self.last_error,
            "since": self.changed_at,
            "checkedAt": self.checked_at,
        }

    def _set(self, state: PeerState, now: float) -> bool:
        if state is self.state:
            return False
        self.state = state
        self.changed_at = now
        return True


def probe_error(status: int | None, exc: BaseException | None, timeout: float) -> str | None:
    """The failure text for a probe outcome, or None when the peer counts as reachable."""
    if exc is not None:
        if isinstance(exc, TimeoutError):  # aiohttp.ServerTimeoutError is one too
            return f"no answer within {timeout:g}s"
        if isinstance(exc, aiohttp.ClientConnectorError):
            os_error = exc.os_error
            if isinstance(os_error, ConnectionRefusedError):
                return "cannot connect: connection refused (nothing listens there)"
            return f"cannot connect: {os_error.strerror or os_error}"
        return f"{type(exc).__name__}: {exc}".rstrip(": ")
    if status is not None and status >= 500:
        return f"{PROBE_PATH} answered {status}"
    return None


def _by_model(peers: Mapping[str, PeerConfig]) -> dict[str, tuple[PeerConfig, ...]]:
    index: dict[str, list[PeerConfig]] = {}
    for peer in peers.values():
        for model in dict.fromkeys(peer.models):
            index.setdefault(model, []).append(peer)
    return {model: tuple(serving) for model, serving in index.items()}


class PeerMonitor:
    """Probes every peer in the background, keeps their :class:`PeerHealth` and the HTTP sessions
    requests to them use.

    Each peer has its own request session. When a peer turns down, every request still waiting
    on it is ended (a stopped process whose kernel still accepts connections would otherwise hold
    them forever): answers being relayed get an error on their body stream (the forwarder then
    sends a final SSE error event or cuts the connection), and the session is closed, which fails
    requests still waiting for response headers (the forwarder answers; we turn that into 503).
    aiohttp's close alone does not wake a reader of a body already started, hence the first part.
    Probes use a separate session so that closing a request session never aborts them.
    """

    def __init__(
        self,
        peers: Mapping[str, PeerConfig],
        timings: ProbeTimings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.timings = timings or ProbeTimings()
        self.clock = clock
        self.peers: dict[str, PeerConfig] = dict(peers)
        self._serving = _by_model(peers)
        self.health: dict[str, PeerHealth] = {name: PeerHealth(name) for name in peers}
        self.probe_session: aiohttp.ClientSession | None = None
        self.sessions: dict[str, aiohttp.ClientSession] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._answers: dict[str, weakref.WeakSet[aiohttp.ClientResponse]] = {}
        self._started = False

    def new_session(self, peer: str | None = None) -> aiohttp.ClientSession:
        """A short connect timeout, so an address where nothing answers fails in seconds, not
        minutes; no total timeout (a peer that loads a model can take long to answer; hangs are
        caught by the probes). A peer's request session remembers the answers it is relaying."""
        traces: list[aiohttp.TraceConfig] = []
        if peer is not None:
            answers = self._answers.setdefault(peer, weakref.WeakSet())

            async def on_request_end(_s: object, _c: object, params: aiohttp.TraceRequestEndParams) -> None:
                answers.add(params.response)

            trace = aiohttp.TraceConfig()
            trace.on_request_end.append(on_request_end)
            traces.append(trace)
        timeouts = self.peers[peer].timeouts if peer is not None and peer in self.peers else None
        return aiohttp.ClientSession(
            trace_configs=traces,
            connector=peer_connector(timeouts),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.timings.connect_timeout, connect=self.timings.connect_timeout
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )

    async def start(self) -> None:
        self._started = True
        self.probe_session = self.new_session()
        for name in self.peers:
            self._launch(name)

    def _launch(self, name: str) -> None:
        self.sessions[name] = self.new_session(name)
        self._wake[name] = asyncio.Event()
        self._tasks[name] = asyncio.ensure_future(self._run(name))

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), *self._closing, return_exceptions=True)
        self._tasks.clear()
        for session in [*self.sessions.values(), self.probe_session]:
            if session is not None:
                await session.close()
        self.sessions.clear()

    def session(self, name: str) -> aiohttp.ClientSession:
        return self.sessions[name]

    def reconfigure(self, peers: Mapping[str, PeerConfig]) -> None:
        """After a reload: keep the health of peers whose address is unchanged, probe the rest."""
        for name in list(self._tasks):
            old, new = self.peers[name], peers.get(name)
            if new is None or (new.proxy, new.timeouts) != (old.proxy, old.timeouts):
                self._tasks.pop(name).cancel()
                self.health.pop(name, None)
                self._drop_session(name)
        self.peers = dict(peers)
        self._serving = _by_model(peers)
        for name in peers:
            if name not in self._tasks:
                self.health[name] = PeerHealth(name)
                if self._started:
                    self._launch(name)

    def serving(self, model: str) -> tuple[PeerConfig, ...]:
        """The peers that list ``model``, in config order (indexed at load, not per request)."""
        return self._serving.get(model, ())

    def touch(self, name: str) -> None:
        """A request is about to use the peer: probe it now unless it was checked just now, so
        that a peer that hangs is noticed while the request waits (and the request ended)."""
        health = self.health.get(name)
        if health is None:
            return
        if health.checked_at is None or self.clock() - health.checked_at >= self.timings.recheck:
            self.check_soon(name)

    def check_soon(self, name: str) -> None:
        event = self._wake.get(name)
        if event is not None:
            event.set()

    def report_failure(self, name: str, error: str) -> None:
        """A request could not reach the peer: count it and recheck quickly."""
        health = self.health.get(name)
        if health is None:
            return
        self._apply(name, health, error)
        self.check_soon(name)

    def _apply(self, name: str, health: PeerHealth, error: str | None) -> None:
        peer = self.peers[name]
        if error is None:
            if health.succeeded(self.clock()):
                log.info("peer %s is up (%s)", name, peer.proxy)
        elif health.failed(error, self.clock(), self.timings.fail_after):
            log.warning("peer %s (%s) is down: %s", name, peer.proxy, error)
            # End the requests still waiting on it; new ones get a fresh session.
            for answer in list(self._answers.get(name, ())):
                if not answer.content.is_eof():
                    answer.content.set_exception(aiohttp.ClientPayloadError(f"peer {name} is down: {error}"))
            self._drop_session(name)
            self.sessions[name] = self.new_session(name)

    def _drop_session(self, name: str) -> None:
        old = self.sessions.pop(name, None)
        if old is not None:
            task = asyncio.ensure_future(old.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def probe(self, name: str) -> None:
        """One probe of ``name``, applied to its health."""
        peer, health = self.peers[name], self.health[name]
        assert self.probe_session is not None
        headers = key_headers(peer.api_key)
        status: int | None = None
        error: BaseException | None = None
        try:
            async with asyncio.timeout(self.timings.timeout):
                async with self.probe_session.get(
                    peer.proxy + PROBE_PATH, headers=headers, allow_redirects=False
                ) as resp:
                    status = resp.status
                    await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = exc
        if self.health.get(name) is not health:
            return  # reconfigured while probing
        self._apply(name, health, probe_error(status, error, self.timings.timeout))

    async def _run(self, name: str) -> None:
        wake = self._wake[name]
        while True:
            wake.clear()
            await self.probe(name)
            health = self.health.get(name)
            if health is None:
                return
            try:
                await asyncio.wait_for(wake.wait(), health.next_delay(self.timings))
            except TimeoutError:
                pass
