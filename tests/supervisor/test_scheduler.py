"""The scheduler as a pure state machine: events in, actions out, no processes, no sleeps."""

from __future__ import annotations

from homelab.matrix import compile_matrix
from homelab.supervisor.config import Config, GroupConfig, ModelConfig
from homelab.supervisor.scheduler import (
    Admit,
    Reject,
    Scheduler,
    Start,
    State,
    Stop,
    backoff,
)


def model(mid: str, **kw: object) -> ModelConfig:
    return ModelConfig(id=mid, cmd=("x",), proxy="http://127.0.0.1:1", port=1, **kw)  # type: ignore[arg-type]


def config(*models: ModelConfig, **kw: object) -> Config:
    return Config(models={m.id: m for m in models}, **kw)  # type: ignore[arg-type]


def test_one_load_serves_every_waiter() -> None:
    s = Scheduler(config(model("a")))
    assert s.request(1, "a", 0) == [Start("a", 0)]
    assert s.request(2, "a", 0.1) == []
    assert s.request(3, "a", 0.2) == []
    assert s.ready("a", 1.0) == [Admit(1, "a"), Admit(2, "a"), Admit(3, "a")]
    assert s.request(4, "a", 1.1) == [Admit(4, "a")]


def test_swap_evicts_idle_model_then_starts() -> None:
    s = Scheduler(config(model("a"), model("b")))
    s.request(1, "a", 0)
    s.ready("a", 1)
    s.done(1, 2)
    assert s.request(2, "b", 3) == [Stop("a", "evicted to start 'b'")]
    assert s.models["a"].state is State.STOPPING
    assert s.stopped("a", 4) == [Start("b", 3)]
    assert s.ready("b", 5) == [Admit(2, "b")]


def test_busy_model_is_never_evicted_and_hold_after_max_wait() -> None:
    s = Scheduler(config(model("a"), model("b"), max_wait=10))
    s.request(1, "a", 0)
    s.ready("a", 1)  # request 1 in flight on a
    assert s.request(2, "b", 2) == []  # must wait: a is busy
    assert s.blocked_since == {"a": 2}
    assert s.next_deadline() == 12
    # within max_wait a keeps admitting new requests
    assert s.request(3, "a", 5) == [Admit(3, "a")]
    s.done(1, 6)
    assert s.tick(12) == []  # still busy with request 3; now held
    assert s.request(4, "a", 13) == []  # queued behind the swap
    assert s.done(3, 14) == [Stop("a", "evicted to start 'b'")]
    assert s.stopped("a", 15) == [Start("b", 2)]
    assert s.ready("b", 16) == [Admit(2, "b")]
    # b's request ends: a's queued request swaps back at once
    assert s.done(2, 17) == [Stop("b", "evicted to start 'a'")]
    assert s.stopped("b", 18) == [Start("a", 13)]
    assert s.ready("a", 19) == [Admit(4, "a")]


def test_cancelled_waiter_is_dropped_and_hold_released() -> None:
    s = Scheduler(config(model("a"), model("b"), max_wait=1))
    s.request(1, "a", 0)
    s.ready("a", 0)
    s.request(2, "b", 1)
    s.tick(5)  # a held now
    assert s.request(3, "a", 5) == []
    # the b client disconnects: nothing needs a evicted, so a's queued request gets in
    assert s.done(2, 6) == [Admit(3, "a")]
    assert s.blocked_since == {}
    assert not s.models["b"].waiters


def test_concurrency_limit_429() -> None:
    s = Scheduler(config(model("a", concurrency_limit=2)))
    s.request(1, "a", 0)
    s.request(2, "a", 0)
    reject = s.request(3, "a", 0)[0]
    assert isinstance(reject, Reject) and reject.status == 429 and reject.retry_after == 1


def test_start_failure_rejects_waiters_and_backs_off() -> None:
    s = Scheduler(config(model("a")))
    s.request(1, "a", 0)
    s.request(2, "a", 0)
    out = s.start_failed("a", "exited with status 1\nerror loading model", 1)
    assert [(a.req, a.status) for a in out if isinstance(a, Reject)] == [(1, 503), (2, 503)]
    assert s.request(3, "a", 1.5) == [Start("a", 1.5)]  # first failure: no back-off
    s.start_failed("a", "again", 2)
    rejected = s.request(4, "a", 2.5)[0]
    assert isinstance(rejected, Reject) and rejected.status == 503 and rejected.retry_after == 1
    assert s.request(5, "a", 3.1) == [Start("a", 3.1)]
    assert [backoff(n) for n in (1, 2, 3, 4, 10)] == [0, 1, 2, 4, 30]


def test_crash_marks_stopped_and_next_request_restarts() -> None:
    s = Scheduler(config(model("a")))
    s.request(1, "a", 0)
    s.ready("a", 1)
    assert s.exited("a", "killed by signal 9", 100) == []
    assert s.models["a"].state is State.STOPPED
    s.done(1, 100)
    assert s.request(2, "a", 101) == [Start("a", 101)]


def test_ttl_from_end_of_last_request() -> None:
    s = Scheduler(config(model("a", ttl=5)))
    s.request(1, "a", 0)
    s.ready("a", 1)
    assert s.next_deadline() is None  # busy
    s.done(1, 3)
    assert s.next_deadline() == 8
    assert s.tick(7.9) == []
    assert s.tick(8) == [Stop("a", "idle for 5s (ttl)")]


def test_global_ttl_and_ttl_from_ready() -> None:
    s = Scheduler(config(model("a"), global_ttl=2))
    s.request(1, "a", 0)
    s.done(1, 0.5)  # client left while loading
    s.ready("a", 1)
    assert s.next_deadline() == 3


def test_unload_waits_for_in_flight() -> None:
    s = Scheduler(config(model("a")))
    s.request(1, "a", 0)
    s.ready("a", 0)
    assert s.unload(None, 1) == []
    assert s.request(2, "a", 1.5) == []  # held
    assert s.done(1, 2) == [Stop("a", "unloaded (request or config change)")]
    assert s.stopped("a", 3) == [Start("a", 1.5)]


def test_matrix_keeps_compatible_models_resident() -> None:
    matrix = compile_matrix({"pair": "a & b", "solo": "c"})
    s = Scheduler(config(model("a"), model("b"), model("c"), matrix=matrix))
    s.request(1, "a", 0)
    s.ready("a", 0)
    assert s.request(2, "b", 1) == [Start("b", 1)]  # coexists with a
    s.ready("b", 1)
    s.done(1, 2)
    s.done(2, 2)
    out = s.request(3, "c", 3)
    assert sorted(a.model for a in out if isinstance(a, Stop)) == ["a", "b"]  # parallel evictions
    s.stopped("a", 4)
    assert s.stopped("b", 4) == [Start("c", 3)]


def test_groups_non_exclusive_persistent() -> None:
    groups = {"chat": GroupConfig("chat", ("a", "b"), swap=True, exclusive=False),
              "embed": GroupConfig("embed", ("e",), swap=False, exclusive=False, persistent=True)}
    s = Scheduler(config(model("a"), model("b"), model("e"), groups=groups))
    s.request(1, "e", 0)
    s.ready("e", 0)
    assert s.request(2, "a", 0) == [Start("a", 0)]
    s.ready("a", 0)
    s.done(2, 1)
    assert s.request(3, "b", 2) == [Stop("a", "evicted to start 'b'")]


def test_vram_lru_admission_without_matrix() -> None:
    s = Scheduler(config(model("a", vram_mib=10), model("b", vram_mib=10), model("c", vram_mib=10),
                         vram_budget_mib=25))
    for req, m, t in ((1, "a", 0), (2, "b", 1)):
        assert s.request(req, m, t) == [Start(m, t)]
        s.ready(m, t)
        s.done(req, t)
    s.request(9, "a", 2)  # a used more recently than b
    s.done(9, 3)
    assert s.request(3, "c", 4) == [Stop("b", "evicted to start 'c'")]


def test_vram_over_budget_is_refused() -> None:
    s = Scheduler(config(model("a", vram_mib=100), vram_budget_mib=50))
    out = s.request(1, "a", 0)
    assert isinstance(out[0], Reject) and out[0].status == 503 and "x-vramBudgetMiB" in out[0].message


def test_vram_busy_model_waits_idle_evicted_first() -> None:
    s = Scheduler(config(model("a", vram_mib=10), model("b", vram_mib=10), model("c", vram_mib=10),
                         vram_budget_mib=20))
    s.request(1, "a", 0)
    s.ready("a", 0)  # a busy (request 1 in flight), used least recently
    s.request(2, "b", 1)
    s.ready("b", 1)
    s.done(2, 2)
    assert s.request(3, "c", 3) == [Stop("b", "evicted to start 'c'")]


def test_head_of_line_start_order() -> None:
    s = Scheduler(config(model("a"), model("b"), model("c"), max_wait=100))
    s.request(1, "a", 0)
    s.ready("a", 0)
    s.request(2, "b", 1)  # blocked by busy a
    s.request(3, "c", 2)  # must wait behind b
    assert s.models["c"].state is State.STOPPED
    assert s.done(1, 3) == [Stop("a", "evicted to start 'b'")]
    assert s.stopped("a", 4) == [Start("b", 1)]


def test_reconfigure_restarts_only_changed() -> None:
    old = config(model("a"), model("b"))
    s = Scheduler(old)
    s.request(1, "a", 0)
    s.ready("a", 0)
    s.done(1, 0)
    new = config(model("a", env={"X": "1"}), model("b"), model("c"))
    assert s.reconfigure(new, {"a"}, 1) == [Stop("a", "unloaded (request or config change)")]
    assert "c" in s.models
    out = s.reconfigure(config(model("b")), {"a"}, 2)
    assert out == []  # a is already stopping
    s.stopped("a", 3)
    assert "a" not in s.models
    assert isinstance(s.request(5, "a", 4)[0], Reject)


def test_unknown_model_404() -> None:
    s = Scheduler(config(model("a")))
    out = s.request(1, "zzz", 0)
    assert isinstance(out[0], Reject) and out[0].status == 404



def test_fifo_priority_orders_pending_starts() -> None:
    """llama-swap's routing.scheduler.settings.fifo.priority: a higher priority's start goes first,
    equal priorities keep arrival order."""
    cfg = config(model("a"), model("low"), model("high"), model("mid"), fifo_priority={"high": 10, "mid": 5})
    s = Scheduler(cfg)
    s.request(1, "a", 0)
    s.ready("a", 1)  # request 1 in flight: every other start waits for it
    s.request(2, "low", 2)
    s.request(3, "mid", 3)
    s.request(4, "high", 4)
    assert s.done(1, 5) == [Stop("a", "evicted to start 'high'")]
    assert s.stopped("a", 6) == [Start("high", 4)]
    s.ready("high", 7)
    assert s.done(4, 8) == [Stop("high", "evicted to start 'mid'")]
    assert s.stopped("high", 9) == [Start("mid", 3)]
    s.ready("mid", 10)
    assert s.done(3, 11) == [Stop("mid", "evicted to start 'low'")]
