"""Stable backend ports: adding or removing a model never moves another model's port.

llama-swap's ``${PORT}`` counts up from ``startPort`` in sorted model-ID order, so adding
``aaa`` moves every other model. We write explicit ports instead, chosen by this rule:

1. a model's pinned ``port:`` (host file) is its port;
2. else the port it had in the installed generation (``previous_ports``), while that port is
   still inside the window and not taken by a pinned port;
3. else its *home slot* ``start_port + sha256(model ID) mod W`` (``W`` = :data:`WINDOW` ports,
   fewer when the window would pass 65535), probing upward (wrapping inside the window) past
   taken ports; models are placed in sorted ID order.

The supervisor's own listen port is never handed out. Rule 3 alone depends only on a model's
own ID except on a home-slot collision; rule 2 makes even that case stable once deployed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from .errors import RenderError

WINDOW = 1000


def home_slot(model_id: str, window: int) -> int:
    digest = hashlib.sha256(model_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % window


def assign_ports(
    model_ids: Iterable[str],
    *,
    start_port: int,
    pinned: Mapping[str, int | None],
    previous: Mapping[str, int] | None = None,
    reserved: Iterable[int] = (),
    window: int = WINDOW,
) -> dict[str, int]:
    ids = sorted(set(model_ids))
    window = max(1, min(window, 65536 - start_port))
    low, high = start_port, start_port + window  # [low, high)
    taken: dict[int, str] = {port: "(the supervisor's listen port)" for port in reserved}
    ports: dict[str, int] = {}

    for model_id in ids:
        port = pinned.get(model_id)
        if port is None:
            continue
        if port in taken:
            raise RenderError(
                f"models {taken[port]!r} and {model_id!r} both use port {port}: pin different ports"
                if not taken[port].startswith("(")
                else f"model {model_id!r} is pinned to port {port}, {taken[port]}: pick another port"
            )
        taken[port] = model_id
        ports[model_id] = port

    for model_id in ids:
        if model_id in ports:
            continue
        before = (previous or {}).get(model_id)
        if before is not None and low <= before < high and before not in taken:
            taken[before] = model_id
            ports[model_id] = before

    for model_id in ids:
        if model_id in ports:
            continue
        slot = home_slot(model_id, window)
        for step in range(window):
            port = low + (slot + step) % window
            if port not in taken:
                taken[port] = model_id
                ports[model_id] = port
                break
        else:
            raise RenderError(
                f"no free backend port left in {low}-{high - 1} for model {model_id!r}: "
                "raise runtime.start_port's window or pin ports"
            )
    return ports
