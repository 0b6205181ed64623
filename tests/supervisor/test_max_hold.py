"""A swap waits for the in-flight requests of the model it must evict, but not forever: after
``x-maxWait`` + ``x-maxHold`` they are cut, so one request that never ends (a wedged backend, a
client that reads forever) cannot hold every swap."""

from __future__ import annotations

import asyncio

import aiohttp

from homelab.supervisor.config import Config, ModelConfig
from homelab.supervisor.config_load import parse_config
from homelab.supervisor.scheduler import Scheduler, Start, State, Stop

from .conftest import fake_model, make_config
from .helpers import chat, wait_dead


def model(mid: str) -> ModelConfig:
    return ModelConfig(id=mid, cmd=("x",), proxy="http://127.0.0.1:1", port=1)


def test_a_swap_cuts_requests_that_outlast_max_wait_and_max_hold() -> None:
    s = Scheduler(Config(models={m: model(m) for m in "ab"}, max_wait=10, max_hold=100))
    s.request(1, "a", 0)
    s.ready("a", 1)  # request 1 in flight on a, and it never ends
    assert s.request(2, "b", 2) == []  # the swap waits
    assert s.next_deadline() == 12  # the hold begins
    assert s.tick(12) == [] and s.next_deadline(12) == 112  # the hold's passed deadline is not re-armed
    assert s.tick(111.9) == []  # still waiting
    assert s.tick(112) == [Stop("a", "evicted to start 'b' (requests in flight cut after x-maxHold)")]
    assert s.models["a"].inflight == set()
    assert s.stopped("a", 113) == [Start("b", 2)]
    assert s.done(1, 114) == []  # the cut request ends later: nothing more to do


def test_max_hold_zero_waits_as_long_as_requests_take() -> None:
    s = Scheduler(Config(models={m: model(m) for m in "ab"}, max_wait=10, max_hold=0))
    s.request(1, "a", 0)
    s.ready("a", 1)
    s.request(2, "b", 2)
    assert s.next_deadline() == 12
    assert s.next_deadline(12) is None  # nothing to wake for: no timer spinning during the hold
    assert s.tick(10_000) == [] and s.models["a"].state is State.READY
    assert s.done(1, 10_001) == [Stop("a", "evicted to start 'b'")]


def test_max_hold_from_the_config() -> None:
    text = "x-maxHold: 42\nmodels:\n  a:\n    cmd: llama-server --port ${PORT}\n"
    assert parse_config(text).max_hold == 42
    assert parse_config(text.replace("x-maxHold: 42\n", "")).max_hold == 600


async def test_a_wedged_request_does_not_hold_the_swap(serve) -> None:
    config = make_config(fake_model("a", "--request-delay", "3600"), fake_model("b"), max_wait=0.2, max_hold=0.3)
    running = await serve(config)
    async with aiohttp.ClientSession() as s:
        wedged = asyncio.ensure_future(chat(s, running.url, "a"))
        for _ in range(200):
            state = running.sup.scheduler.models["a"]
            if state.state is State.READY and state.inflight:
                break
            await asyncio.sleep(0.05)
        pid = running.sup.backends["a"].pid
        status, body = await asyncio.wait_for(chat(s, running.url, "b"), 30)
        assert status == 200 and body["x_server"] == "b"
        assert await wait_dead(pid)
        status, body = await asyncio.wait_for(wedged, 10)
    assert status == 502 and body["error"]["code"] == "backend_failed"


async def test_a_hold_does_not_spin_the_timer(serve) -> None:
    """During a hold the passed x-maxWait deadline must not re-arm the timer at once: before the
    fix the driver ticked the scheduler in a loop (thousands of times a second) until the hold ended."""
    config = make_config(fake_model("a", "--request-delay", "3600"), fake_model("b"), max_wait=0.1, max_hold=0)
    running = await serve(config)
    scheduler = running.sup.scheduler
    ticks = 0
    tick = scheduler.tick

    def counting_tick(now: float) -> list:
        nonlocal ticks
        ticks += 1
        return tick(now)

    scheduler.tick = counting_tick  # type: ignore[method-assign]
    async with aiohttp.ClientSession() as s:
        wedged = asyncio.ensure_future(chat(s, running.url, "a"))
        for _ in range(200):
            if scheduler.models["a"].state is State.READY and scheduler.models["a"].inflight:
                break
            await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(chat(s, running.url, "b"))
        await asyncio.sleep(1.0)  # the hold began after 0.1 s
        assert scheduler.blocked_since and not waiting.done()
        assert ticks <= 3, f"{ticks} ticks in one second of hold"
        waiting.cancel()
        wedged.cancel()
