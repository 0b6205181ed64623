"""Work that must not delay an answer: a request's metrics and activity record.

The supervisor answers on one thread. Bookkeeping done after an answer is written still holds
that thread when the client's next request arrives (a client that sends its next request at once
waited ~0.1 ms for it: 2026-12-03, docs/benchmarks.md), and under load it delays every other
request. So it is queued here and run when the thread would otherwise wait: just after the next
request to a backend has been sent (:meth:`DeferredWork.run_soon`, called before relaying), or
at the latest :data:`MAX_DELAY` seconds later. Whoever reads what it produces (``/metrics``, the
dashboard) runs it first (:meth:`DeferredWork.run_now`), so nothing is ever read stale.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("homelab.supervisor")

MAX_DELAY = 0.05
"""Seconds queued work waits at most (the last request of a burst has no next one)."""


class DeferredWork:
    def __init__(self) -> None:
        self._queued: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self._soon: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None

    def defer(self, work: Callable[..., None], *args: Any) -> None:
        """Run ``work(*args)`` later, in order with the rest."""
        self._queued.append((work, args))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(MAX_DELAY, self._timed_out)

    def run_soon(self) -> None:
        """The thread is about to wait (a request is being sent to its backend): run what is
        queued in the next turn of the event loop, after the current callback has finished."""
        if self._queued and self._soon is None:
            self._soon = asyncio.get_running_loop().call_soon(self.run_now)

    def run_now(self) -> None:
        """Run everything queued (before its results are read, and at shutdown)."""
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        queued, self._queued = self._queued, []
        for work, args in queued:
            try:
                work(*args)
            except Exception:  # bookkeeping must never take the next piece of it down
                log.exception("bookkeeping failed")

    def _timed_out(self) -> None:
        self._timer = None
        self.run_now()

    def close(self) -> None:
        self.run_now()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
