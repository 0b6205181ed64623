"""The supervisor's decisions as a pure state machine: events in, actions out.

No I/O, no clock, no sleeps: every event carries ``now`` (seconds, monotonic) and returns the
actions the driver (:mod:`homelab.supervisor.driver`) must carry out. The driver reports back with
further events (``ready``, ``start_failed``, ``exited``, ``stopped``) and calls :meth:`tick` at
:meth:`next_deadline`. That keeps the hard part testable without processes or timing.

The common request costs the same whatever the number of models: a ready model admits it at
once, and its end, with nothing queued anywhere, returns without a plan over every model
(``_quiet_release``: the plan provably has nothing to do). The driver's timer reads
:attr:`Scheduler.wake_at`, kept in O(1): at or before the next deadline, never after it.

Policies:

* One load serves every request waiting for a model; evictions are issued together (parallel).
* A model with requests in flight is never evicted. The swap waits. For ``max_wait`` seconds
  (``x-maxWait``) the busy model keeps admitting new requests; after that it is *held*: its new
  requests queue behind the swap (they restart it afterwards), so a queued model is not starved.
  Requests queued before that swap began are still served first. The swap itself waits for the
  in-flight requests to finish, for ``max_hold`` seconds more (``x-maxHold``) at most: then they
  are cut and the model is stopped, so a request that never ends cannot hold every swap.
* Pending starts are served in arrival order (head of line), except that a model with a higher
  ``routing.scheduler.settings.fifo.priority`` goes before lower ones (llama-swap's queue order;
  equal priorities keep arrival order). A start that must wait for evictions reserves its place:
  the starts queued after it are planned as if it were already resident (and busy), so they
  cannot take its room. A later start whose evictions are disjoint from every waiting start's
  (and that does not evict a waiting target) goes ahead in parallel: two swaps on different
  devices do not wait for each other. One that overlaps waits behind.
* ``concurrencyLimit`` counts in-flight plus queued requests of a model; over it: 429.
* TTL counts idle time from the end of the last request, or from ready.
* A failed start (exit while loading, health timeout) rejects its waiters with 503 and the reason.
  After repeated failures (start failures or crashes within a minute of ready) a model is
  refused with 503 and ``Retry-After`` for a back-off of 1, 2, 4 ... 30 s.
* ``unload`` and a reload that changed a model hold it (new requests queue) and stop it as soon
  as it is idle; queued requests then start it again with the current config. ``force_stop``
  (``unload`` after its grace period) stops it with requests still in flight.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from .admission import AdmissionError, evictions, room_text
from .config import Config


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"


@dataclass(frozen=True)
class Admit:
    req: int
    model: str


@dataclass(frozen=True)
class Reject:
    req: int
    model: str
    status: int
    message: str
    retry_after: int | None = None


@dataclass(frozen=True)
class Start:
    model: str
    requested_at: float
    """When the oldest request that needs this start arrived (swap duration starts there)."""


@dataclass(frozen=True)
class Stop:
    model: str
    reason: str


Action = Admit | Reject | Start | Stop
PlanFn = Callable[[Config, str, Sequence[str], Collection[str]], frozenset[str]]

CRASH_WINDOW = 60.0
"""A crash within this many seconds of ready counts towards the back-off."""
MAX_BACKOFF = 30.0


def backoff(failures: int) -> float:
    """Seconds to refuse a model after ``failures`` consecutive failures (first one: none)."""
    if failures < 2:
        return 0.0
    return min(2.0 ** (failures - 2), MAX_BACKOFF)


@dataclass
class ModelState:
    id: str
    state: State = State.STOPPED
    inflight: set[int] = field(default_factory=set)
    waiters: dict[int, float] = field(default_factory=dict)
    """Queued request -> arrival time, in arrival order."""
    last_used: float = 0.0
    ready_at: float = 0.0
    unload_requested: bool = False
    failures: int = 0
    retry_at: float = 0.0
    last_error: str = ""

    @property
    def busy(self) -> bool:
        return self.state is State.STARTING or bool(self.inflight)


class Scheduler:
    def __init__(self, config: Config, plan: PlanFn = evictions) -> None:
        self.config = config
        self._plan_evictions = plan
        self.models: dict[str, ModelState] = {m: ModelState(m) for m in config.models}
        self.requests: dict[int, str] = {}
        self.blocked_since: dict[str, float] = {}
        """Busy model that a pending start must evict -> when it first blocked it."""
        self._queued = 0
        """Requests waiting in every model's ``waiters`` together (0: nothing to admit or start)."""
        self._wake = math.inf
        """At or before every deadline :meth:`next_deadline` would give now (see :attr:`wake_at`)."""

    # ----------------------------------------------------------------- events
    def request(self, req: int, model: str, now: float) -> list[Action]:
        state = self.models.get(model)
        if state is None or model not in self.config.models:
            return [Reject(req, model, 404, f"model {model!r} is not configured")]
        if now < state.retry_at:
            wait = math.ceil(state.retry_at - now)
            return [
                Reject(
                    req,
                    model,
                    503,
                    f"model {model!r} failed {state.failures} times in a row, retrying in "
                    f"{wait}s; last error: {state.last_error}",
                    retry_after=wait,
                )
            ]
        limit = self.config.models[model].concurrency_limit
        if limit > 0 and len(state.inflight) + len(state.waiters) >= limit:
            return [
                Reject(
                    req, model, 429, f"model {model!r} is at its concurrencyLimit of {limit} requests", retry_after=1
                )
            ]
        self.requests[req] = model
        if state.state is State.READY and not state.waiters and not self._held(state, now):
            state.inflight.add(req)
            return [Admit(req, model)]
        state.waiters[req] = now
        self._queued += 1
        return self._plan(now)

    def done(self, req: int, now: float) -> list[Action]:
        """The request finished (admitted) or its client went away (queued)."""
        model = self.requests.pop(req, None)
        if model is None:
            return []
        state = self.models[model]
        if req not in state.inflight:
            self._unqueue(state, req)
            return self._plan(now)
        state.inflight.discard(req)
        state.last_used = now
        if not self._quiet_release(state, now):
            return self._plan(now)
        # The common end of a request: nothing queued anywhere, so _plan would only restart this
        # model's TTL; keep that deadline in the timer's floor and skip the walk over every model.
        if not state.inflight and state.state is State.READY:
            ttl = self._ttl(model)
            if ttl > 0:
                self._wake = min(self._wake, now + ttl)
        return []

    def ready(self, model: str, now: float) -> list[Action]:
        state = self.models[model]
        state.state = State.READY
        state.ready_at = state.last_used = now
        return self._plan(now)

    def start_failed(self, model: str, reason: str, now: float) -> list[Action]:
        state = self.models[model]
        state.state = State.STOPPED
        self._count_failure(state, reason, now)
        actions: list[Action] = [self._reject_waiter(state, req, 503, reason) for req in list(state.waiters)]
        return actions + self._plan(now)

    def exited(self, model: str, reason: str, now: float) -> list[Action]:
        """A ready model's process exited without being asked to (a crash)."""
        state = self.models[model]
        if now - state.ready_at > CRASH_WINDOW:
            state.failures = 0
        state.state = State.STOPPED
        self._count_failure(state, reason, now)
        self.blocked_since.pop(model, None)
        return self._plan(now)

    def stopped(self, model: str, now: float) -> list[Action]:
        state = self.models[model]
        state.state = State.STOPPED
        state.unload_requested = False
        self.blocked_since.pop(model, None)
        if model not in self.config.models and not state.inflight and not state.waiters:
            del self.models[model]
        return self._plan(now)

    def unload(self, models: Collection[str] | None, now: float) -> list[Action]:
        """Stop the given models (all when None) as soon as they are idle."""
        for model_id in list(self.models) if models is None else models:
            state = self.models.get(model_id)
            if state is not None and state.state is not State.STOPPED:
                state.unload_requested = True
        return self._plan(now)

    def force_stop(self, models: Collection[str], now: float) -> list[Action]:
        """Stop models that ``unload`` asked to go and that still serve requests after the grace
        period: their in-flight requests stop counting (they fail when the backend goes)."""
        actions: list[Action] = []
        for model_id in models:
            state = self.models.get(model_id)
            if state is not None and state.state is State.READY and state.unload_requested and state.inflight:
                state.inflight.clear()
                state.last_used = now
                actions.append(self._stop(state, "unloaded (in-flight requests cut after the grace period)"))
        return actions + self._plan(now)

    def reconfigure(self, config: Config, restart: Collection[str], now: float) -> list[Action]:
        """Swap in a new config; restart only the ``restart`` models (removed ones are stopped)."""
        self.config = config
        actions: list[Action] = []
        for model_id, state in list(self.models.items()):
            removed = model_id not in config.models
            if removed:
                for req in list(state.waiters):
                    actions.append(self._reject_waiter(state, req, 404, f"model {model_id!r} was removed by a reload"))
            if (removed or model_id in restart) and state.state is not State.STOPPED:
                state.unload_requested = True
            elif removed:
                del self.models[model_id]
        for model_id in config.models:
            self.models.setdefault(model_id, ModelState(model_id))
        return actions + self._plan(now)

    def tick(self, now: float) -> list[Action]:
        return self._plan(now)

    @property
    def wake_at(self) -> float | None:
        """A time at or before :meth:`next_deadline` (None: nothing to wake for), in O(1) for the
        driver's timer on every request. It may be early (a request that began since made a
        model busy): :meth:`tick` there finds nothing and sets it exact again."""
        return None if self._wake == math.inf else self._wake

    def next_deadline(self, now: float | None = None) -> float | None:
        """When :meth:`tick` has something to do next; with ``now``, only deadlines after it (a
        hold that began stays in ``blocked_since``, and its passed deadline must not re-arm the
        driver's timer at once, over and over)."""
        deadlines = [since + self.config.max_wait for since in self.blocked_since.values()]
        if self.config.max_hold > 0:
            deadlines += [since + self.config.max_wait + self.config.max_hold for since in self.blocked_since.values()]
        for state in self.models.values():
            ttl = self._ttl(state.id)
            if state.state is State.READY and ttl > 0 and not state.inflight and not state.waiters:
                deadlines.append(state.last_used + ttl)
        if now is not None:
            deadlines = [d for d in deadlines if d > now]
        return min(deadlines) if deadlines else None

    def would_evict(self, model: str, reserved: Sequence[str] = ()) -> frozenset[str]:
        """The resident models a start of ``model`` would stop now (pure: changes nothing).
        ``reserved``: pending starts planned as if resident and busy (they were first).
        Raises :class:`AdmissionError` when the model can never start under this config."""
        resident = self._resident()
        busy = {m for m in resident if self.models[m].busy} | set(reserved)
        return self._plan_evictions(self.config, model, resident + [m for m in reserved if m not in resident], busy)

    def _resident(self) -> list[str]:
        """Models holding memory (starting, ready or stopping), least recently used first."""
        states = sorted((s for s in self.models.values() if s.state is not State.STOPPED), key=lambda s: s.last_used)
        return [s.id for s in states]

    # ------------------------------------------------------------- internals
    def _ttl(self, model: str) -> float:
        cfg = self.config.models.get(model)
        if cfg is None:
            return 0.0
        return cfg.ttl if cfg.ttl > 0 else self.config.global_ttl

    def _held(self, state: ModelState, now: float) -> bool:
        if state.unload_requested:
            return True
        since = self.blocked_since.get(state.id)
        return since is not None and now >= since + self.config.max_wait

    def _hold_expired(self, state: ModelState, now: float) -> bool:
        """A ready model that has blocked a swap for ``max_wait + max_hold`` seconds."""
        since = self.blocked_since.get(state.id)
        return (
            self.config.max_hold > 0
            and state.state is State.READY
            and since is not None
            and now >= since + self.config.max_wait + self.config.max_hold
        )

    def _count_failure(self, state: ModelState, reason: str, now: float) -> None:
        state.failures += 1
        state.last_error = reason.splitlines()[0] if reason else ""
        state.retry_at = now + backoff(state.failures)

    def _reject_waiter(
        self, state: ModelState, req: int, status: int, message: str, retry_after: int | None = None
    ) -> Reject:
        self._unqueue(state, req)
        self.requests.pop(req, None)
        return Reject(req, state.id, status, message, retry_after)

    def _unqueue(self, state: ModelState, req: int) -> None:
        """Take a request off its model's queue (every removal goes here: ``_queued`` counts them)."""
        if state.waiters.pop(req, None) is not None:
            self._queued -= 1

    def _quiet_release(self, state: ModelState, now: float) -> bool:
        """After an in-flight request of ``state`` ended: :meth:`_plan` provably has nothing to do.
        Nothing is queued on any model (no admission, no pending start; a hold in
        ``blocked_since`` implies a queued start, checked anyway), this model was not asked to
        go, and no TTL has run out (every deadline is at or after ``_wake``)."""
        return not self._queued and not self.blocked_since and not state.unload_requested and now < self._wake

    def _admit_waiters(self, now: float) -> list[Action]:
        """Serve queued requests of ready models. A held model still serves the requests that
        were queued before the swap that holds it began (they were first; evicting a model
        before it served the requests it was started for would livelock)."""
        actions: list[Action] = []
        if not self._queued:
            return actions
        for state in self.models.values():
            if state.state is not State.READY or not state.waiters:
                continue
            held = self._held(state, now)
            if held and state.unload_requested:
                continue
            since = self.blocked_since.get(state.id, now)
            for req, arrived in list(state.waiters.items()):
                if held and arrived > since:
                    continue
                self._unqueue(state, req)
                state.inflight.add(req)
                actions.append(Admit(req, state.id))
        return actions

    def _plan(self, now: float) -> list[Action]:
        actions = self._admit_waiters(now)
        # Idle models that were asked to go, or whose TTL ran out.
        for state in self.models.values():
            if state.state is not State.READY or state.inflight:
                continue
            ttl = self._ttl(state.id)
            if state.unload_requested:
                actions.append(self._stop(state, "unloaded (request or config change)"))
            elif ttl > 0 and not state.waiters and now >= state.last_used + ttl:
                actions.append(self._stop(state, f"idle for {ttl:g}s (ttl)"))
        # Pending starts, highest fifo priority first (routing.scheduler.settings.fifo.priority,
        # default 0), then oldest first; a start that must wait reserves its place (module docstring).
        priority = self.config.fifo_priority
        pending = sorted(
            (s for s in self.models.values() if s.waiters and s.state is State.STOPPED),
            key=lambda s: (-priority.get(s.id, 0), next(iter(s.waiters.values()))),
        )
        blockers: set[str] = set()
        reserved: list[str] = []  # pending starts that wait, in arrival order
        claimed: set[str] = set()  # the evictions they wait for
        for state in pending:
            if now < state.retry_at:
                wait = math.ceil(state.retry_at - now)
                for req in list(state.waiters):
                    actions.append(
                        self._reject_waiter(
                            state,
                            req,
                            503,
                            f"model {state.id!r} is backing off after {state.failures} failures: {state.last_error}",
                            retry_after=wait,
                        )
                    )
                continue
            try:
                evict = self.would_evict(state.id, reserved)
            except AdmissionError as exc:
                for req in list(state.waiters):
                    actions.append(self._reject_waiter(state, req, 503, str(exc)))
                continue
            if evict & (claimed | set(reserved)):  # overlaps a swap queued before it: wait behind
                reserved.append(state.id)
                claimed |= evict
                continue
            must_wait = False
            why = ""
            for victim_id in sorted(evict):
                victim = self.models[victim_id]
                if victim.state is State.STOPPED:
                    continue
                must_wait = True
                if victim.state is State.STOPPING:
                    continue
                if victim.busy and self._hold_expired(victim, now):
                    victim.inflight.clear()  # they fail when the backend goes (as force_stop)
                    victim.last_used = now
                    reason = self._eviction_reason(state.id, reserved)
                    actions.append(self._stop(victim, f"{reason} (requests in flight cut after x-maxHold)"))
                elif victim.busy:
                    blockers.add(victim_id)
                else:
                    why = why or self._eviction_reason(state.id, reserved)
                    actions.append(self._stop(victim, why))
            if must_wait:
                reserved.append(state.id)
                claimed |= evict
                continue
            state.state = State.STARTING
            actions.append(Start(state.id, requested_at=next(iter(state.waiters.values()))))
        self.blocked_since = {b: self.blocked_since.get(b, now) for b in blockers}
        # A hold that ended (the blocking start went away) lets queued requests in again.
        actions += self._admit_waiters(now)
        deadline = self.next_deadline(now)
        self._wake = math.inf if deadline is None else deadline
        return actions

    def _eviction_reason(self, target: str, reserved: Sequence[str]) -> str:
        """``evicted to start 'b'``, with the devices short of room where the config has them."""
        room = room_text(self.config, target, self._resident() + list(reserved))
        return f"evicted to start {target!r}" + (f" ({room})" if room else "")

    def _stop(self, state: ModelState, reason: str) -> Stop:
        state.state = State.STOPPING
        return Stop(state.id, reason)
