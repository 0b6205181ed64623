"""Listen addresses (``HOST:PORT``): splitting one, loopback and any-address, the URL a local
client uses, a free loopback port, and waiting until an address accepts connections.

Standard library only, so every stage and the supervisor can use it.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import time
from collections.abc import Callable

from .errors import HomelabError

ANY_ADDRESS = ("0.0.0.0", "::", "[::]", "*")
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def split_host_port(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host without IPv6 brackets, port); the last colon separates the port."""
    address, port = listen.rsplit(":", 1)
    return address.strip("[]"), int(port)


def parse_listen(value: str, option: str = "--listen") -> tuple[str | None, int]:
    """A server's ``HOST:PORT`` -> (host without IPv6 brackets, port); ``:PORT`` means every
    interface (host None), as llama-swap's ``--listen`` reads it."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise HomelabError(f"{option} {value!r}: expected HOST:PORT or :PORT, for example 127.0.0.1:12434")
    return (host.strip("[]") or None), int(port)


def is_loopback(address: str) -> bool:
    """``127.0.0.1``, ``127.1.2.3``, ``::1``/``[::1]`` or ``localhost``; any other name or
    address (``0.0.0.0``, ``::``, a LAN IP, a host name) reaches beyond this machine."""
    text = address.strip().strip("[]").lower()
    if text in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def is_ip(address: str) -> bool:
    """An IPv4 or IPv6 address (without brackets), not a name."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def is_any_address(address: str) -> bool:
    return address in ANY_ADDRESS or address.strip("[]") in ("::", "0.0.0.0")


def base_url(listen: str) -> str:
    """``http://HOST:PORT`` for a client on this machine: a server bound to every interface (or
    to no host) is reached on 127.0.0.1."""
    host, _, port = listen.rpartition(":")
    if host in ("",) + ANY_ADDRESS:
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def free_loopback_port() -> int:
    """A port the kernel has just handed out on 127.0.0.1 (free now; a test or benchmark binds it
    right after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


BELOW_EPHEMERAL = (20000, 32000)
"""Where :func:`free_port_below_ephemeral` draws ports: below Linux's default ephemeral range
(32768-60999), where the kernel picks the local port of every outgoing connection."""


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_below_ephemeral(room: int = 0) -> int:
    """A port free now on 127.0.0.1 that no outgoing connection will be given before a server
    binds it: for a ``startPort`` (a backend binds ``startPort`` + n later, while the supervisor,
    an RPC client or a benchmark's clients open connections; ``room``: how far above it those
    ports go) and for servers started a while after the port is chosen. A port the kernel hands
    out (:func:`free_loopback_port`) is in the ephemeral range: a connection opened meanwhile can
    take it. Where this machine's range leaves no room below it, that is the fallback."""
    low, high = BELOW_EPHEMERAL
    high = min(high, _ephemeral_start()) - room
    for _ in range(100 if high > low else 0):
        port = random.randrange(low, high)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_loopback_port()


def wait_until_accepting(
    listen: str, timeout: float, alive: Callable[[], bool] = lambda: True, what: str = "service"
) -> str | None:
    """Wait until ``listen`` (HOST:PORT; any-address = loopback) accepts a TCP connection; None
    when it does, else why not (the process died, or the timeout passed)."""
    host, _, port = base_url(listen).removeprefix("http://").rpartition(":")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return None
        except OSError as exc:
            last = exc.strerror or str(exc)
        if not alive():
            return f"the {what} exited before {listen} accepted a connection"
        if time.monotonic() > deadline:
            return f"{what} on {listen} did not accept a connection within {timeout:.0f} s (last: {last})"
        time.sleep(0.05)
