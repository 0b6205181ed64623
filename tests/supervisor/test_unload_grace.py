"""``/unload`` and ``/api/models/unload`` stop a model even when one of its requests is wedged,
after ``x-unloadGrace`` (llama-swap stops at once; we let requests finish for a while first)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from homelab.supervisor.config_load import parse_config
from homelab.supervisor.scheduler import State

from .conftest import fake_model, make_config
from .helpers import alive, chat, wait_dead


async def _wedge(running, s: aiohttp.ClientSession) -> asyncio.Task:
    """A request that the backend never answers, in flight once this returns."""
    task = asyncio.ensure_future(chat(s, running.url, "a"))
    for _ in range(200):
        state = running.sup.scheduler.models["a"]
        if state.state is State.READY and state.inflight:
            return task
        await asyncio.sleep(0.05)
    raise AssertionError("the request never reached the backend")


@pytest.mark.parametrize("route", ["/api/models/unload/a", "/api/models/unload", "/unload"])
async def test_unload_stops_a_model_whose_request_never_answers(serve, route: str) -> None:
    running = await serve(make_config(fake_model("a", "--request-delay", "3600"), unload_grace=0.3))
    async with aiohttp.ClientSession() as s:
        wedged = await _wedge(running, s)
        pid = running.sup.backends["a"].pid
        async with s.request("GET" if route == "/unload" else "POST", running.url + route) as resp:
            assert resp.status == 200
        assert running.sup.status_of("a") is State.STOPPED
        assert await wait_dead(pid)
        status, body = await asyncio.wait_for(wedged, 10)
    assert status == 502 and body["error"]["code"] == "backend_failed"
    assert "still serving after 0.3s (x-unloadGrace)" in running.sup.supervisor_log.contents().decode()


async def test_unload_lets_a_request_finish_within_the_grace(serve) -> None:
    running = await serve(make_config(fake_model("a", "--request-delay", "0.5"), unload_grace=30))
    async with aiohttp.ClientSession() as s:
        pending = await _wedge(running, s)
        pid = running.sup.backends["a"].pid
        async with s.post(running.url + "/api/models/unload/a") as resp:
            assert resp.status == 200
        status, _ = await pending
        assert status == 200 and running.sup.status_of("a") is State.STOPPED and not alive(pid)


def test_unload_grace_from_the_config() -> None:
    text = "x-unloadGrace: 2.5\nmodels:\n  a:\n    cmd: llama-server --port ${PORT}\n"
    assert parse_config(text).unload_grace == 2.5
    assert parse_config(text.replace("2.5", "0")).unload_grace == 0


def test_force_stop_as_pure_state() -> None:
    from homelab.supervisor.scheduler import Scheduler, Start, Stop

    scheduler = Scheduler(make_config(fake_model("a"), fake_model("b")))
    scheduler.request(1, "a", 0.0)
    scheduler.ready("a", 1.0)
    assert scheduler.models["a"].inflight == {1}
    assert not [a for a in scheduler.unload(["a"], 2.0) if isinstance(a, Stop)]  # busy: held
    assert scheduler.force_stop(["b"], 3.0) == []  # not asked to unload, not running
    assert Stop("a", "unloaded (in-flight requests cut after the grace period)") in scheduler.force_stop(["a"], 3.0)
    assert scheduler.models["a"].inflight == set()
    assert scheduler.done(1, 4.0) == []  # the cut request ends later: nothing more to do
    scheduler.stopped("a", 5.0)
    assert scheduler.request(2, "a", 6.0) == [Start("a", requested_at=6.0)]  # starts it again
