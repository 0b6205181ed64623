"""Deferred bookkeeping (homelab.supervisor.deferred): queued work runs in order, when the thread
would wait (run_soon), when read (run_now) or at the latest after MAX_DELAY; one failure does not
stop the rest; nothing queued is lost at shutdown. And through a real server: a request's counts
are in /metrics as soon as it is read, while the answer went out before they were made."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from homelab.supervisor import deferred
from homelab.supervisor.deferred import DeferredWork

from .conftest import fake_model, make_config
from .helpers import chat


async def test_queued_work_runs_in_order_on_the_next_turn_after_run_soon() -> None:
    work = DeferredWork()
    done: list[int] = []
    work.defer(done.append, 1)
    work.defer(done.append, 2)
    assert done == []  # not while the answer is being written
    work.run_soon()
    work.run_soon()  # once is enough
    assert done == []  # not in the current callback either
    await asyncio.sleep(0)
    assert done == [1, 2]
    work.close()


async def test_queued_work_runs_after_max_delay_without_a_next_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deferred, "MAX_DELAY", 0.02)
    work = DeferredWork()
    done: list[str] = []
    work.defer(done.append, "last of a burst")
    await asyncio.sleep(0.005)
    assert done == []
    await asyncio.sleep(0.05)
    assert done == ["last of a burst"]
    work.defer(done.append, "later")  # the timer is armed again
    await asyncio.sleep(0.05)
    assert done == ["last of a burst", "later"]
    work.close()


async def test_a_failing_piece_is_logged_and_the_rest_still_run(caplog: pytest.LogCaptureFixture) -> None:
    work = DeferredWork()
    done: list[int] = []

    def broken() -> None:
        raise ValueError("bad record")

    work.defer(broken)
    work.defer(done.append, 3)
    with caplog.at_level(logging.ERROR, logger="homelab.supervisor"):
        work.run_now()
    assert done == [3]
    assert "bookkeeping failed" in caplog.text and "bad record" in caplog.text
    work.close()


async def test_close_runs_what_is_queued() -> None:
    work = DeferredWork()
    done: list[int] = []
    work.defer(done.append, 4)
    work.close()
    assert done == [4]


async def test_a_request_is_answered_before_it_is_counted_and_counted_when_read(
    serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deferred, "MAX_DELAY", 30.0)  # only the next request or a reader runs it
    running = await serve(make_config(fake_model("a")))
    async with aiohttp.ClientSession() as s:
        def counted() -> float:
            return sum(running.sup.metrics.requests.values.values())

        await chat(s, running.url, "a", max_tokens=1)  # (loads the model)
        assert counted() == 0  # answered; counted once the next request is sent, or when read
        await chat(s, running.url, "a", max_tokens=1)
        assert counted() == 1
        async with s.get(running.url + "/metrics") as resp:
            assert 'homelab_requests_total{code="200",model="a"} 2' in await resp.text()
