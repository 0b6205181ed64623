"""What the dashboard shows live: requests, swaps and model states, kept and pushed to listeners.

The supervisor calls :meth:`Activity.dispatched` after each batch of scheduler actions and
:meth:`Activity.request_done` when a request ends; everything else is derived here by comparing
the scheduler's model states before and after (a model that went STOPPED -> STARTING began a
load, STARTING -> READY finished one, STARTING -> STOPPED failed). Nothing here blocks or does
I/O: records go into bounded deques, and listeners (``/api/events``) get messages on bounded
queues, coalesced to one model-status message per :data:`FLUSH_DELAY` so a busy box does not
pay per request for an open page.

The message shapes follow llama-swap's ``/api/events`` feed (``{"type": ..., "data": "<json>"}``,
types ``modelStatus``, ``logData``, ``metrics``, ``inflight``), plus ``swap`` for our swap records.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .scheduler import Action, Scheduler, Start, State, Stop

HISTORY = 200
"""Requests and swaps kept for a page that connects later."""
FLUSH_DELAY = 0.1
QUEUE_SIZE = 1024


@dataclass
class SwapRecord:
    id: int
    model: str
    began: float
    """Wall-clock seconds (time.time) when the load began."""
    caused_by: int | None
    """The request that was waiting longest when the load began (it caused the swap)."""
    trigger: str = "request"
    """request (a client's request needed the model) | load (the dashboard's load button)"""
    evicted: list[str] = field(default_factory=list)
    outcome: str = "loading"
    """loading | ready | failed"""
    load_seconds: float | None = None
    error: str = ""


@dataclass
class RequestRecord:
    id: int
    model: str
    timestamp: float
    status: int
    duration_ms: int
    input_tokens: int | None
    output_tokens: int | None
    tokens_per_second: float | None
    swap: int | None
    """The swap this request waited for, when it caused or joined one."""


def envelope(kind: str, data: Any) -> bytes:
    """One SSE message in llama-swap's envelope: the payload is itself JSON, as a string."""
    message = json.dumps({"type": kind, "data": json.dumps(data, separators=(",", ":"))}, separators=(",", ":"))
    return f"event: message\ndata: {message}\n\n".encode()


class Activity:
    def __init__(self, scheduler: Callable[[], Scheduler], clock: Callable[[], float]) -> None:
        self._scheduler = scheduler
        self._clock = clock
        """The supervisor's monotonic clock (the scheduler's ``now``)."""
        self.swaps: deque[SwapRecord] = deque(maxlen=HISTORY)
        self.requests: deque[RequestRecord] = deque(maxlen=HISTORY)
        self._ids = 0
        self._loading: dict[str, tuple[SwapRecord, float]] = {}
        """Model -> its load in progress and when it began (monotonic)."""
        self._evicting: dict[str, list[str]] = {}
        """Target -> models stopped to make room for it, before its load began."""
        self._request_swap: dict[int, int] = {}
        self._load_clicked: set[str] = set()
        self._last: dict[str, tuple[State, int, int]] = {}
        self.listeners: set[asyncio.Queue[bytes]] = set()
        self.status: Callable[[], list[dict[str, Any]]] | None = None
        """Builds the model-status payload (set by the dashboard routes)."""
        self.selection: Callable[[], dict[str, Any]] | None = None
        """Builds the dashboard's selectors-and-profiles payload (set by the dashboard routes)."""
        self._flush: asyncio.TimerHandle | None = None
        self._status_changed = False
        self._finished_requests: list[RequestRecord] = []
        """Requests done since the last flush, sent to open pages as one ``metrics`` message."""

    # ------------------------------------------------------------ hooks
    def dispatched(self, actions: Iterable[Action]) -> None:
        """After the supervisor carried out a batch of scheduler actions."""
        scheduler = self._scheduler()
        for action in actions:
            if isinstance(action, Stop) and action.reason.startswith("evicted to start "):
                # "evicted to start 'b'", maybe followed by " (CUDA0: needs ...)"
                target = action.reason.removeprefix("evicted to start ").split(" (", 1)[0].strip("'\"")
                self._evicting.setdefault(target, []).append(action.model)
            elif isinstance(action, Start):
                self._began(scheduler, action.model)
        changed = False
        for model_id, state in scheduler.models.items():
            now = (state.state, len(state.inflight), len(state.waiters))
            before = self._last.get(model_id)
            if before == now:
                continue
            changed = True
            self._last[model_id] = now
            if before is not None and before[0] is State.STARTING and state.state is not State.STARTING:
                self._finished(model_id, state.state is State.READY, state.last_error)
        if changed and self.listeners:
            self._status_changed = True
            self._schedule_flush()

    def request_done(self, req: int, model: str, status: int, duration: float, usage: dict[str, Any] | None) -> None:
        output = usage.get("completion_tokens") if usage else None
        output = output if isinstance(output, int) else None
        prompt = usage.get("prompt_tokens") if usage else None
        swap = self._request_swap.pop(req, None)
        load = next((s.load_seconds or 0.0 for s in self.swaps if s.id == swap), 0.0) if swap else 0.0
        busy = duration - load
        record = RequestRecord(
            id=req,
            model=model,
            timestamp=time.time(),
            status=status,
            duration_ms=round(duration * 1000),
            input_tokens=prompt if isinstance(prompt, int) else None,
            output_tokens=output,
            tokens_per_second=round(output / busy, 2) if output and busy > 0 else None,
            swap=swap,
        )
        self.requests.append(record)
        if self.listeners:  # batched: an open page costs a message per FLUSH_DELAY, not per request
            self._finished_requests.append(record)
            self._schedule_flush()

    # ------------------------------------------------------------ swaps
    def _began(self, scheduler: Scheduler, model_id: str) -> None:
        state = scheduler.models.get(model_id)
        waiting = list(state.waiters) if state else []
        self._ids += 1
        record = SwapRecord(
            id=self._ids,
            model=model_id,
            began=time.time(),
            caused_by=waiting[0] if waiting else None,
            trigger="load" if model_id in self._load_clicked else "request",
            evicted=self._evicting.pop(model_id, []),
        )
        for req in waiting:
            self._request_swap[req] = record.id
        while len(self._request_swap) > 4 * HISTORY:  # loads from the load button never finish a request
            del self._request_swap[next(iter(self._request_swap))]
        self._load_clicked.discard(model_id)
        self.swaps.append(record)
        self._loading[model_id] = (record, self._clock())
        self.publish("swap", asdict(record))

    def _finished(self, model_id: str, ok: bool, error: str) -> None:
        entry = self._loading.pop(model_id, None)
        if entry is None:
            return
        record, began = entry
        record.outcome = "ready" if ok else "failed"
        record.load_seconds = round(self._clock() - began, 3)
        record.error = "" if ok else error
        self.publish("swap", asdict(record))

    def load_requested(self, model_id: str) -> None:
        """The next load of ``model_id`` comes from the load button, not from a client's request."""
        self._load_clicked.add(model_id)

    def loading_since(self, model_id: str) -> float | None:
        """Monotonic time the model's current load began, if it is loading."""
        entry = self._loading.get(model_id)
        return entry[1] if entry else None

    # ------------------------------------------------------------ listeners
    def subscribe(self) -> asyncio.Queue[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self.listeners.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes]) -> None:
        self.listeners.discard(queue)

    def publish(self, kind: str, data: Any) -> None:
        if not self.listeners:
            return
        message = envelope(kind, data)
        for queue in self.listeners:
            if not queue.full():  # a stalled page loses messages rather than holding memory
                queue.put_nowait(message)

    def refresh(self) -> None:
        """Something the status messages show changed outside the scheduler (a reload, a
        profile switch): send them again, coalesced like every other change."""
        self._status_changed = True
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._send_status)

    def _send_status(self) -> None:
        """What changed since the last flush: the requests that ended (one ``metrics`` message),
        then the models' status."""
        self._flush = None
        if self._finished_requests:
            self.publish("metrics", [asdict(r) for r in self._finished_requests])
            self._finished_requests.clear()
        if not self._status_changed:
            return
        self._status_changed = False
        if self.status is not None:
            models = self.status()
            self.publish("modelStatus", models)
            self.publish("inflight", {"total": sum(m.get("inflight", 0) for m in models)})
        if self.selection is not None and self.listeners:
            self.publish("selection", self.selection())

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
