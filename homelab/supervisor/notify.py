"""systemd ``Type=notify`` support: READY=1, RELOADING=1, STOPPING=1 over $NOTIFY_SOCKET.

A few lines with :mod:`socket` instead of a dependency. Outside systemd (no $NOTIFY_SOCKET)
every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time


def notify(*fields: str) -> bool:
    """Send ``fields`` (e.g. "READY=1", "STATUS=...") to systemd; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except OSError:
        return False
    return True


def reloading() -> bool:
    # systemd requires MONOTONIC_USEC with RELOADING=1 for Type=notify-reload.
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
