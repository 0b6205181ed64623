"""What the dashboard shows live: requests, swaps and model states, kept and pushed to listeners.

The supervisor calls :meth:`Activity.dispatched` after each batch of scheduler actions and
:meth:`Activity.request_done` when a request ends; everything else is derived here by comparing
the scheduler's model states before and after (a model that went STOPPED -> STARTING began a
load, STARTING -> READY finished one, STARTING -> STOPPED failed). Nothing here blocks or does
I/O: records go into bounded deques, and listeners (``/api/events``) get messages on bounded
queues.

An open page costs no work per request and no wakeup of its own while requests flow: a request
does with a page open what it does without (a record appended to the ring buffer, a counter
moved, its model's state compared) plus a clock read. A flush sends what changed since the
last one: the requests that ended (one ``metrics`` message, read back from the ring buffer), the
in-flight and queued counts when only those changed (one small ``inflight`` message), and the
full model status (``modelStatus``, ``selection``) only when a model's state changed (a load, a
stop, a failure), not when a request came or went. A state change is flushed
:data:`FLUSH_DELAY` after it; requests and counts at most every :data:`ACTIVITY_EVERY`, by the
request whose end makes one due, in the wakeup that request already cost (measured: a flush of
its own timer costs the process a cold wakeup, ~0.3 ms on a busy small box, which is what an open
page cost per few requests before); a timer delivers the last ones after traffic stops.

The message shapes follow llama-swap's ``/api/events`` feed (``{"type": ..., "data": "<json>"}``,
types ``modelStatus``, ``logData``, ``metrics``, ``inflight``), plus ``swap`` for our swap records;
our ``inflight`` adds ``models`` (each local model's counts) to llama-swap's ``total``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .scheduler import Action, Scheduler, Start, State, Stop

HISTORY = 200
"""Requests and swaps kept for a page that connects later."""
FLUSH_DELAY = 0.1
"""A model's state change reaches open pages this long after it (changes in between coalesce)."""
ACTIVITY_EVERY = 0.25
"""Ended requests and in-flight counts reach open pages at most this often (llama-swap's UI
updates its in-flight list every 250 ms too); at most twice this after the last change."""
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
        self.counts: Callable[[], dict[str, Any]] | None = None
        """Builds the ``inflight`` payload: the total and each model's counts (set by the dashboard routes)."""
        self._flush: asyncio.Handle | None = None
        self._flush_at = 0.0
        """When the pending flush runs (the event loop's clock)."""
        self._last_flush = float("-inf")
        self._status_changed = False
        """A model's state changed: the next flush sends modelStatus and selection."""
        self._counts_changed = False
        """Only in-flight or queued counts changed: the next flush sends the small inflight message."""
        self._last_selection: dict[str, Any] | None = None
        self._done = 0
        """Requests ended so far; those after ``_sent`` go out with the next flush."""
        self._sent = 0

    # ------------------------------------------------------------ hooks
    def dispatched(self, actions: Sequence[Action], touched: Collection[str] | None = None) -> None:
        """After the supervisor carried out a batch of scheduler actions. ``touched``: the models
        the event itself changed (a request's model, the model that became ready...); a model's
        state and counts change only there or where an action names it, so only those are
        compared, not every configured model on every request. None (a reload, an unload): all."""
        scheduler = self._scheduler()
        for action in actions:
            if isinstance(action, Stop) and action.reason.startswith("evicted to start "):
                # "evicted to start 'b'", maybe followed by " (CUDA0: needs ...)"
                target = action.reason.removeprefix("evicted to start ").split(" (", 1)[0].strip("'\"")
                self._evicting.setdefault(target, []).append(action.model)
            elif isinstance(action, Start):
                self._began(scheduler, action.model)
        states = counts = False
        models = scheduler.models
        compared: Collection[str]
        if touched is None or not self._last:  # the first batch records every model
            compared = models
        else:
            compared = [*touched, *[action.model for action in actions]] if actions else touched
        for model_id in compared:
            state = models.get(model_id)
            if state is None:  # not configured (a 404), or removed by a reload
                continue
            now = (state.state, len(state.inflight), len(state.waiters))
            before = self._last.get(model_id)
            if before == now:
                continue
            self._last[model_id] = now
            if before is not None and before[0] is now[0]:
                counts = True  # a request came or went: the small inflight message tells
                continue
            states = True
            if before is not None and before[0] is State.STARTING:
                self._finished(model_id, state.state is State.READY, state.last_error)
        if states and self.listeners:
            self._status_changed = True
            self._arm(FLUSH_DELAY)
        elif counts and self.listeners:
            self._counts_changed = True
            # late enough that the request ending in between flushes it (see _request_ended)
            self._arm(2 * ACTIVITY_EVERY)

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
        self._done += 1
        if self.listeners:  # the next flush reads it back from the ring buffer
            self._request_ended()

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
        """A new listener's queue; it gets the history (``requests``, ``swaps``) from its caller,
        then what changes."""
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=QUEUE_SIZE)
        if not self.listeners:  # nobody was told of the requests so far: the caller sends the history
            self._sent = self._done
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
        self._arm(FLUSH_DELAY)

    def _request_ended(self) -> None:
        """A flush that is due runs in this wakeup (``call_soon``: after the request's own
        callbacks, before the loop sleeps), not in one of its own later."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - self._last_flush < ACTIVITY_EVERY:
            self._arm(2 * ACTIVITY_EVERY)
        elif self._flush is None or self._flush_at > now:
            if self._flush is not None:
                self._flush.cancel()
            self._flush, self._flush_at = loop.call_soon(self._send_status), now

    def _arm(self, delay: float) -> None:
        """A flush in ``delay`` seconds, unless one comes sooner."""
        loop = asyncio.get_running_loop()
        at = loop.time() + delay
        if self._flush is not None:
            if self._flush_at <= at:
                return
            self._flush.cancel()
        self._flush, self._flush_at = loop.call_at(at, self._send_status), at

    def finished_since_flush(self) -> list[RequestRecord]:
        """The requests that ended since the last flush (those still in the ring buffer)."""
        new = min(self._done - self._sent, len(self.requests))
        return list(itertools.islice(self.requests, len(self.requests) - new, None))

    def _send_status(self) -> None:
        """What changed since the last flush: the requests that ended (one ``metrics`` message),
        then the models' status when a state changed, else their counts when those changed."""
        self._flush = None
        self._last_flush = asyncio.get_running_loop().time()
        if self._done != self._sent:
            self.publish("metrics", [vars(r) for r in self.finished_since_flush()])
            self._sent = self._done
        states, counts = self._status_changed, self._counts_changed
        self._status_changed = self._counts_changed = False
        if states and self.status is not None:
            self.publish("modelStatus", self.status())
        if (states or counts) and self.counts is not None:
            self.publish("inflight", self.counts())
        if (states or counts) and self.selection is not None and self.listeners:
            # a spillover selector's pick moves with in-flight counts; most flushes change nothing
            selection = self.selection()
            if states or selection != self._last_selection:
                self.publish("selection", selection)
            self._last_selection = selection

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
