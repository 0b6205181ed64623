"""A bounded load test: mixed requests over 3 models and 2 sets while backends are killed at random.

Every request must end, within a bound, in a complete answer or a clean OpenAI-shaped error, and
no backend process may be left behind once the supervisor has stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import uuid
from pathlib import Path

import aiohttp

from homelab.matrix import compile_matrix

from .conftest import FAKE, fake_model, make_config
from .helpers import alive

REQUESTS = 300
CONCURRENCY = 24
KILLS = 8


def fake_pids(marker: str) -> set[int]:
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(FAKE).encode() in cmdline and marker.encode() in cmdline and alive(int(proc.name)):
            pids.add(int(proc.name))
    return pids


def judge(status: int, body: bytes, stream: bool) -> str:
    """'ok' for a complete answer, 'error' for a clean error; anything else fails the test."""
    text = body.decode(errors="replace")
    if status == 200 and stream:
        events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        if events and events[-1] == "[DONE]":
            return "ok"
        last = json.loads(events[-1])
        assert last["error"].get("source") == "supervisor", text
        return "error"
    payload = json.loads(text)
    if status == 200:
        assert isinstance(payload["choices"][0]["message"]["content"], str), text
        return "ok"
    assert status in (429, 502, 503), text
    assert payload["error"]["message"] and payload["error"].get("source") == "supervisor", (status, text)
    return "error"


async def test_mixed_load_with_random_backend_kills(serve) -> None:
    marker = f"load-{uuid.uuid4().hex[:8]}"
    models = [fake_model(m, "--token-rate", "200", "--tokens", "6", "--load-time", "0.05",
                         concurrency_limit=100)
              for m in ("a", "b", "c")]
    models = [type(m)(**{**m.__dict__, "cmd": m.cmd + ("--x-marker", marker)}) for m in models]
    matrix = compile_matrix({"pair": "a & b", "solo": "c"}, evict_costs={"c": 2})
    running = await serve(make_config(*models, matrix=matrix, max_wait=0.5))
    rng = random.Random(7)
    outcomes: dict[str, int] = {"ok": 0, "error": 0}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(REQUESTS):
        queue.put_nowait(i)

    async def worker(s: aiohttp.ClientSession) -> None:
        while not queue.empty():
            queue.get_nowait()
            model = rng.choice("aaabbc")
            stream = rng.random() < 0.5
            async with s.post(running.url + "/v1/chat/completions",
                              json={"model": model, "stream": stream, "messages": []}) as resp:
                body = await resp.read()
            outcomes[judge(resp.status, body, stream)] += 1

    async def killer() -> None:
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(0.2, 0.6))
            backends = [b for b in running.sup.backends.values() if b.pid]
            if backends:
                victim = rng.choice(backends)
                try:
                    os.killpg(victim.pid, signal.SIGKILL)
                except OSError:
                    pass

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        kill_task = asyncio.ensure_future(killer())
        try:
            await asyncio.wait_for(asyncio.gather(*(worker(s) for _ in range(CONCURRENCY))), timeout=90)
        finally:
            kill_task.cancel()
    assert outcomes["ok"] + outcomes["error"] == REQUESTS
    assert outcomes["ok"] >= REQUESTS // 10, outcomes  # kills cause back-off 503s
    # nothing is queued or in flight any more (a handler may still be finishing the request
    # whose last byte the client just read)
    for _ in range(100):
        if not running.sup.scheduler.requests:
            break
        await asyncio.sleep(0.02)
    assert not running.sup.scheduler.requests
    # the matrix was respected at the end: never c together with a or b
    resident = {m for m, st in running.sup.scheduler.models.items() if st.state.value != "stopped"}
    assert not ("c" in resident and resident & {"a", "b"})
    await running.close()
    for _ in range(100):
        if not fake_pids(marker):
            break
        await asyncio.sleep(0.05)
    assert not fake_pids(marker)
