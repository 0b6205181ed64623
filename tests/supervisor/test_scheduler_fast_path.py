"""Property test: the per-request shortcuts decide exactly what the full plan decides.

The common request (its model ready, nothing queued anywhere) skips the walk over every model:
``Scheduler.done`` returns without ``_plan`` when it provably has nothing to do, the driver's timer
reads ``Scheduler.wake_at`` (a floor, maybe early) instead of ``next_deadline``, and
``Activity.dispatched`` compares only the models an event touched. Here two schedulers take the
same random events with many models: one with the shortcut, one that always plans in full. They
must answer the same, keep the same state and the same deadlines, and the dashboard's view fed
only the touched models must equal the one that compares every model.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import astuple

from hypothesis import example, given, settings
from hypothesis import strategies as st

from homelab.supervisor.activity import Activity
from homelab.supervisor.config import Config, ModelConfig
from homelab.supervisor.scheduler import Action, ModelState, Scheduler, State

from .test_scheduler_properties import Sim

MODELS = tuple(f"m{i}" for i in range(20))
HOT = MODELS[:2]


def model(mid: str, **kw: object) -> ModelConfig:
    return ModelConfig(id=mid, cmd=("x",), proxy="http://127.0.0.1:1", port=1, **kw)  # type: ignore[arg-type]


CONFIGS = [
    # every model fits: after the first loads, most requests take the shortcut; half have a TTL
    Config(models={m: model(m, vram_mib=1, ttl=3 if i % 2 else 0, concurrency_limit=3) for i, m in enumerate(MODELS)},
           vram_budget_mib=len(MODELS), max_wait=2),
    # six fit: swaps, holds (max_wait + max_hold), a global TTL, one model's own TTL, a priority
    Config(models={m: model(m, vram_mib=10, ttl=2 if m == "m0" else 0) for m in MODELS}, vram_budget_mib=60,
           global_ttl=4, max_wait=1, max_hold=2, fifo_priority={"m1": 5}),
    # two fit, no TTL, no patience: a swap on nearly every cold request
    Config(models={m: model(m, vram_mib=10) for m in MODELS}, vram_budget_mib=20, max_wait=0),
]

hot_request = st.tuples(st.just("request"), st.sampled_from(HOT))
finish = st.tuples(st.just("finish"), st.integers(0, 30))
complete = st.tuples(st.just("complete"), st.integers(0, 10), st.sampled_from((True, True, True, False)))
ops = st.lists(st.one_of(  # mostly the common events: a hot model's requests, loads that succeed
    hot_request, hot_request, hot_request, finish, finish, finish, complete, complete,
    st.tuples(st.just("request"), st.sampled_from(MODELS)),
    st.tuples(st.just("crash"), st.sampled_from(HOT)),
    st.tuples(st.just("advance"), st.floats(0, 5)),
    st.tuples(st.just("sleep"), st.floats(0, 5)),  # time passes, the driver's timer has not fired yet
    st.tuples(st.just("unload"), st.sampled_from(HOT)),
), min_size=30, max_size=100)


class FullPlan(Scheduler):
    """The reference: every event plans over every model."""

    def _quiet_release(self, state: ModelState, now: float) -> bool:
        return False


def snapshot(s: Scheduler) -> object:
    """Everything the scheduler decides from, waiters in their order."""
    models = {m: (astuple(st_), list(st_.waiters.items())) for m, st_ in s.models.items()}
    return models, dict(s.blocked_since), dict(s.requests)


def dashboard_view(activity: Activity) -> object:
    swaps = [(r.id, r.model, r.caused_by, r.trigger, r.evicted, r.outcome, r.error) for r in activity.swaps]
    return dict(activity._last), swaps, dict(activity._request_swap), set(activity._loading)


class Lockstep:
    """Stands in for the scheduler in :class:`Sim`: each event goes to both schedulers (and both
    dashboard views), and their answers must agree."""

    def __init__(self, config: Config, clock: Sim) -> None:
        self.fast = Scheduler(config)
        self.full = FullPlan(config)
        self.seen_touched = Activity(lambda: self.fast, lambda: clock.now)
        self.seen_all = Activity(lambda: self.fast, lambda: clock.now)

    @property
    def models(self) -> dict[str, ModelState]:
        return self.fast.models

    @property
    def requests(self) -> dict[int, str]:
        return self.fast.requests

    def _both(self, event: str, touched: Collection[str] | None, *args: object) -> list[Action]:
        actions = getattr(self.fast, event)(*args)
        assert getattr(self.full, event)(*args) == actions, f"{event}{args}: the shortcut answered differently"
        assert snapshot(self.fast) == snapshot(self.full), f"{event}{args}: the state differs"
        now = args[-1]
        assert isinstance(now, float | int)
        deadline = self.fast.next_deadline(now)
        assert deadline == self.full.next_deadline(now)
        wake = self.fast.wake_at
        assert deadline is None or (wake is not None and wake <= deadline), "the timer would wake too late"
        assert self.fast._queued == sum(len(st_.waiters) for st_ in self.fast.models.values())
        self.seen_touched.dispatched(actions, touched)
        self.seen_all.dispatched(actions, None)
        assert dashboard_view(self.seen_touched) == dashboard_view(self.seen_all), f"{event}{args}"
        return actions

    def request(self, req: int, model: str, now: float) -> list[Action]:
        return self._both("request", (model,), req, model, now)

    def done(self, req: int, now: float) -> list[Action]:
        model = self.fast.requests.get(req)
        return self._both("done", () if model is None else (model,), req, now)

    def ready(self, model: str, now: float) -> list[Action]:
        return self._both("ready", (model,), model, now)

    def start_failed(self, model: str, reason: str, now: float) -> list[Action]:
        return self._both("start_failed", (model,), model, reason, now)

    def exited(self, model: str, reason: str, now: float) -> list[Action]:
        return self._both("exited", (model,), model, reason, now)

    def stopped(self, model: str, now: float) -> list[Action]:
        return self._both("stopped", (model,), model, now)

    def unload(self, models: list[str], now: float) -> list[Action]:
        return self._both("unload", None, models, now)

    def tick(self, now: float) -> list[Action]:
        return self._both("tick", (), now)


class LockstepSim(Sim):
    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.s = Lockstep(config, self)  # type: ignore[assignment]
        self.shortcuts = 0

    def step(self, op: tuple) -> None:
        if op[0] == "sleep":
            self.now += op[1]
            return
        if op[0] == "finish" and self.admitted:
            # count the releases the shortcut answers (the test must reach them)
            req = self.admitted[op[1] % len(self.admitted)]
            state = self.s.fast.models[self.s.fast.requests[req]]
            if self.s.fast._queued == 0 and state.state is State.READY and self.s.fast._quiet_release(state, self.now):
                self.shortcuts += 1
        super().step(op)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(range(len(CONFIGS))), ops)
# the two ways a quiet-looking release still has work, whatever the random draws reach:
@example(0, [("request", "m0"), ("complete", 0, True), ("unload", "m0"), ("finish", 0)])  # asked to go
@example(0, [("request", "m1"), ("complete", 0, True), ("finish", 0), ("request", "m0"), ("complete", 0, True),
             ("sleep", 4.0), ("finish", 0)])  # another model's TTL ran out, its timer not fired yet
def test_the_shortcuts_decide_as_the_full_plan(which: int, sequence: list[tuple]) -> None:
    sim = LockstepSim(CONFIGS[which])
    for op in sequence:
        sim.step(op)
    sim.settle()
    assert set(sim.answers) == set(range(1, sim.next_req + 1)), "a request was never answered"


def test_the_shortcut_is_taken_on_the_common_request() -> None:
    """Guards the property test above against comparing two full plans: a ready model's
    requests end without a plan, and its TTL still stops it on time."""
    sim = LockstepSim(CONFIGS[0])
    for op in [("request", "m1"), ("complete", 0, True)] + [("request", "m1"), ("finish", 0)] * 5:
        sim.step(op)
    assert sim.s.fast.wake_at is None  # m1 busy since it became ready: no TTL runs
    sim.step(("sleep", 1.0))
    sim.step(("finish", 0))
    assert sim.shortcuts == 6
    assert sim.s.fast.wake_at == sim.s.fast.next_deadline(1.0) == 4.0  # idle at 1, ttl 3
    sim.step(("request", "m1"))
    assert sim.s.fast.wake_at == 4.0 and sim.s.fast.next_deadline(1.0) is None  # early, kept
    sim.step(("sleep", 1.0))
    sim.step(("finish", 0))
    assert sim.shortcuts == 7 and sim.s.fast.wake_at == 4.0  # the floor stays at the earlier deadline
    sim.step(("advance", 2.0))  # the early wake: the tick finds nothing, the floor is exact again
    assert sim.s.fast.models["m1"].state is State.READY and sim.s.fast.wake_at == 5.0
    sim.step(("advance", 1.0))
    assert sim.s.fast.models["m1"].state is State.STOPPING
