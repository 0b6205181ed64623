"""Behaviour of the running supervisor against fake llama-server processes."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest

from homelab.supervisor.config import Filters, HooksConfig, PeerConfig
from homelab.supervisor.scheduler import State

from .conftest import fake_model, make_config
from .helpers import alive, chat, wait_dead, wait_for_file


async def test_swap_running_models_and_readiness(serve) -> None:
    a = fake_model("a", "--load-time", "0.3", name="Alpha", description="the first")
    running = await serve(make_config(a, fake_model("b")))
    async with aiohttp.ClientSession() as s:
        status, body = await chat(s, running.url, "a")
        assert status == 200 and body["x_server"] == "a"
        async with s.get(running.url + "/running") as resp:
            listed = (await resp.json())["running"]
        assert [(r["model"], r["state"]) for r in listed] == [("a", "ready")]
        # llama-swap's fields, name and description included
        assert set(listed[0]) == {"model", "state", "cmd", "proxy", "ttl", "name", "description"}
        assert (listed[0]["name"], listed[0]["description"]) == ("Alpha", "the first")
        status, body = await chat(s, running.url, "b")
        assert status == 200 and body["x_server"] == "b"
        async with s.get(running.url + "/v1/models") as resp:
            models = {m["id"]: m["status"]["value"] for m in (await resp.json())["data"]}
        assert models == {"a": "unloaded", "b": "loaded"}
    # readiness is seen within tens of ms of the 0.3 s load, not on a 1 s poll
    hist = running.sup.metrics.time_to_ready
    key = (("model", "a"),)
    assert hist.sums[key] < 0.3 + 0.5


async def test_crash_on_start_fails_waiters_at_once_with_log(serve) -> None:
    running = await serve(make_config(fake_model("bad", "--crash-on-start", "--load-time", "0.1")))
    async with aiohttp.ClientSession() as s:
        started = time.monotonic()
        results = await asyncio.gather(*(chat(s, running.url, "bad") for _ in range(3)))
        assert time.monotonic() - started < 5
    for status, body in results:
        assert status == 503
        assert "exited with status 1 while loading" in body["error"]["message"]
        assert "error loading model: fake failure" in body["error"]["message"]
        assert body["error"]["source"] == "supervisor"


async def test_health_timeout_gives_503(serve) -> None:
    running = await serve(make_config(fake_model("hang", "--hang-health"), health_check_timeout=1.0))
    async with aiohttp.ClientSession() as s:
        status, body = await chat(s, running.url, "hang")
    assert status == 503 and "not ready after 1s" in body["error"]["message"]
    assert not running.sup.backends


async def test_crash_later_restarts_on_next_request(serve, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    running = await serve(make_config(fake_model("c", "--crash-after", "0.5", "--pid-file", str(pid_file))))
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, running.url, "c"))[0] == 200
        first = int(pid_file.read_text())
        assert await wait_dead(first)
        for _ in range(100):
            if running.sup.status_of("c") is State.STOPPED:
                break
            await asyncio.sleep(0.02)
        assert running.sup.status_of("c") is State.STOPPED
        # its last line comes before the exit line, although a ready backend's output is read in batches
        text = running.sup.logs["c"].contents().decode()
        assert "fake crash\n" in text.split("exited with status 3")[0]
        pid_file.unlink()
        assert (await chat(s, running.url, "c"))[0] == 200
        assert int(pid_file.read_text()) != first
    assert running.sup.metrics.crashes.values[(("model", "c"),)] == 1


async def test_ignore_sigterm_is_killed_after_unload_timeout(serve, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    running = await serve(make_config(fake_model("stubborn", "--ignore-sigterm", "--pid-file", str(pid_file),
                                                 unload_timeout=0.5)))
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, running.url, "stubborn"))[0] == 200
        pid = int(pid_file.read_text())
        started = time.monotonic()
        async with s.post(running.url + "/api/models/unload/stubborn") as resp:
            assert (await resp.json())["unloaded"] == ["stubborn"]
        assert time.monotonic() - started >= 0.5
    assert not alive(pid)


async def test_forked_child_dies_with_backend(serve, tmp_path: Path) -> None:
    child_file = tmp_path / "child"
    running = await serve(make_config(fake_model("forky", "--fork-child", "--child-pid-file", str(child_file))))
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, running.url, "forky"))[0] == 200
        child = int(await wait_for_file(child_file))
        assert alive(child)
        async with s.get(running.url + "/unload") as resp:
            assert await resp.text() == "OK"
    assert await wait_dead(child)


async def test_cmd_stop_with_pid(serve, tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    m = fake_model("s", cmd_stop=("sh", "-c", f"echo ${{PID}} > {marker}; kill ${{PID}}"))
    running = await serve(make_config(m))
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, running.url, "s"))[0] == 200
        pid = running.sup.backends["s"].pid
        await running.sup.unload(None)
    assert marker.read_text().strip() == str(pid)
    assert not alive(pid)


async def test_sse_streams_chunk_by_chunk(serve) -> None:
    running = await serve(make_config(fake_model("s", "--token-rate", "20", "--tokens", "10")))
    async with aiohttp.ClientSession() as s:
        await chat(s, running.url, "s", max_tokens=1)  # load first
        arrivals = []
        async with s.post(running.url + "/v1/chat/completions", json={"model": "s", "stream": True}) as resp:
            assert resp.headers["X-Accel-Buffering"] == "no"
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    arrivals.append(time.monotonic())
    assert len(arrivals) == 11  # 10 tokens and the usage chunk
    # the first token arrived long before the last one: nothing was buffered
    assert arrivals[-1] - arrivals[0] > 0.3
    async with aiohttp.ClientSession() as s, s.get(running.url + "/metrics") as resp:
        assert 'homelab_tokens_total{kind="completion",model="s"} 20' in await resp.text()  # both answers report usage


async def test_backend_dies_mid_stream_gets_error_event(serve) -> None:
    running = await serve(make_config(fake_model("d", "--die-mid-stream", "3", "--tokens", "10")))
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/v1/chat/completions", json={"model": "d", "stream": True}) as resp:
            assert resp.status == 200
            text = (await resp.read()).decode()
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert len(events) == 4
    assert events[-1]["error"]["code"] == "backend_failed"
    assert events[-1]["error"]["source"] == "supervisor"


async def test_backend_dies_mid_request_gives_502_and_restarts(serve, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    running = await serve(make_config(fake_model("d", "--die-on-request", "--pid-file", str(pid_file))))
    async with aiohttp.ClientSession() as s:
        status, body = await chat(s, running.url, "d")
        assert status == 502 and body["error"]["source"] == "supervisor"
        assert await wait_dead(int(pid_file.read_text()))
        for _ in range(100):
            if running.sup.status_of("d") is State.STOPPED:
                break
            await asyncio.sleep(0.02)
        pid_file.unlink()
        status, _ = await chat(s, running.url, "d")  # restarted on demand (and dies again)
        assert status == 502 and pid_file.exists()


async def test_backend_unreachable_gives_502(serve) -> None:
    m = fake_model("x", check_endpoint=None)
    m = type(m)(**{**m.__dict__, "proxy": "http://127.0.0.1:9"})
    running = await serve(make_config(m))
    async with aiohttp.ClientSession() as s:
        status, body = await chat(s, running.url, "x")
    assert status == 502 and body["error"]["code"] == "backend_failed"


async def test_concurrency_limit_gives_429(serve) -> None:
    running = await serve(make_config(fake_model("slow", "--request-delay", "0.5", concurrency_limit=1)))
    async with aiohttp.ClientSession() as s:
        await chat(s, running.url, "slow")
        first = asyncio.ensure_future(chat(s, running.url, "slow"))
        await asyncio.sleep(0.1)
        async with s.post(running.url + "/v1/chat/completions", json={"model": "slow"}) as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "1"
            assert (await resp.json())["error"]["type"] == "rate_limit_error"
        assert (await first)[0] == 200


async def test_client_disconnect_while_queued_is_dropped(serve) -> None:
    running = await serve(make_config(fake_model("slowload", "--load-time", "1.5")))
    async with aiohttp.ClientSession() as s:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(chat(s, running.url, "slowload"), timeout=0.3)
        for _ in range(50):
            if not running.sup.scheduler.models["slowload"].waiters:
                break
            await asyncio.sleep(0.02)
        assert not running.sup.scheduler.models["slowload"].waiters
        assert not running.sup.scheduler.requests


async def test_in_flight_request_is_never_evicted(serve) -> None:
    config = make_config(fake_model("a", "--token-rate", "20", "--tokens", "10"), fake_model("b"), max_wait=30)
    running = await serve(config)
    async with aiohttp.ClientSession() as s:
        await chat(s, running.url, "a", max_tokens=1)

        async def stream_a() -> str:
            async with s.post(running.url + "/v1/chat/completions", json={"model": "a", "stream": True}) as resp:
                return (await resp.read()).decode()

        streaming = asyncio.ensure_future(stream_a())
        await asyncio.sleep(0.1)
        status, body = await chat(s, running.url, "b")
        text = await streaming
    assert status == 200 and body["x_server"] == "b"
    assert "[DONE]" in text and '"error"' not in text


async def test_api_keys(serve) -> None:
    running = await serve(make_config(fake_model("a"), api_keys=("sekret",)))
    async with aiohttp.ClientSession() as s:
        async with s.get(running.url + "/v1/models") as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["type"] == "authentication_error"
        async with s.get(running.url + "/health") as resp:
            assert resp.status == 200
        async with s.get(running.url + "/v1/models", headers={"x-api-key": "sekret"}) as resp:
            assert resp.status == 200
        async with s.post(running.url + "/upstream/a/echo", json={},
                          headers={"Authorization": "Bearer sekret"}) as resp:
            seen = (await resp.json())["headers"]
        assert "Authorization" not in seen


async def test_filters_aliases_and_use_model_name(serve) -> None:
    filters = Filters(strip_params=("temperature",), set_params={"top_k": 5},
                      set_params_by_id={"a:code": {"temperature": 0.2}})
    m = fake_model("a", aliases=("alpha",), filters=filters, use_model_name="served-name")
    running = await serve(make_config(m, aliases={"alpha": "a", "a:code": "a"}))
    async with aiohttp.ClientSession() as s:
        _, body = await chat(s, running.url, "alpha", temperature=0.9)
        assert body["x_received"]["model"] == "served-name"
        assert "temperature" not in body["x_received"] and body["x_received"]["top_k"] == 5
        _, body = await chat(s, running.url, "a:code", temperature=0.9)
        assert body["x_received"]["temperature"] == 0.2


async def test_model_from_query_multipart_and_upstream(serve) -> None:
    running = await serve(make_config(fake_model("org/a")))
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/v1/embeddings?model=org/a", data=b"\x00raw") as resp:
            assert resp.status == 200 and (await resp.json())["x_server"] == "org/a"
        form = aiohttp.FormData()
        form.add_field("model", "org/a")
        form.add_field("file", b"abc" * 1000, filename="a.wav")
        async with s.post(running.url + "/v1/completions", data=form) as resp:
            assert (await resp.json())["x_server"] == "org/a"
        async with s.get(running.url + "/upstream/org/a/echo?x=1") as resp:
            body = await resp.json()
        assert body["path"] == "/echo?x=1"
        big = "x" * (8 << 20)
        async with s.post(running.url + "/upstream/org/a/echo", json={"prompt": big}) as resp:
            assert (await resp.json())["x_raw_bytes"] > 8 << 20


async def test_unknown_model_404_lists_known(serve) -> None:
    running = await serve(make_config(fake_model("a"), fake_model("hidden", unlisted=True)))
    async with aiohttp.ClientSession() as s:
        status, body = await chat(s, running.url, "nope")
        async with s.get(running.url + "/v1/models") as resp:
            listed = [m["id"] for m in (await resp.json())["data"]]
    assert status == 404 and body["error"]["known"] == ["a"] and "'nope'" in body["error"]["message"]
    assert listed == ["a"]


async def test_ttl_unloads_idle_model(serve) -> None:
    running = await serve(make_config(fake_model("a", ttl=0.5)))
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, running.url, "a"))[0] == 200
        assert running.sup.status_of("a") is State.READY
        for _ in range(100):
            if running.sup.status_of("a") is State.STOPPED:
                break
            await asyncio.sleep(0.05)
    assert running.sup.status_of("a") is State.STOPPED and not running.sup.backends


async def test_requests_do_not_move_the_ttl_timer(serve) -> None:
    """Each request made the model busy (timer cancelled) and idle again (timer re-armed); now the
    timer armed at the first idle moment stays, wakes early, finds the model used since and
    re-arms: the TTL still counts from the last request."""
    running = await serve(make_config(fake_model("a", ttl=1)))
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, running.url, "a"))[0] == 200
        timer = running.sup._timer
        assert timer is not None
        for _ in range(3):
            assert (await chat(s, running.url, "a"))[0] == 200
        assert running.sup._timer is timer
        await asyncio.sleep(0.6)
        assert (await chat(s, running.url, "a"))[0] == 200  # the first timer wakes before its TTL ends
        last = running.sup.scheduler.models["a"].last_used
        for _ in range(200):
            if running.sup.status_of("a") is not State.READY:
                break
            await asyncio.sleep(0.02)
    assert running.sup.status_of("a") is not State.READY
    assert running.sup.now() >= last + 1  # stopped by the TTL of the last request, not the first


async def test_logs_and_log_stream(serve) -> None:
    running = await serve(make_config(fake_model("a")))
    async with aiohttp.ClientSession() as s:
        async with s.get(running.url + "/logs/stream/a") as stream:
            await chat(s, running.url, "a")
            seen = b""
            while b"all slots are idle" not in seen:
                seen += await asyncio.wait_for(stream.content.readany(), 5)
        async with s.get(running.url + "/logs") as resp:
            text = await resp.text()
    assert "starting a" in text and "all slots are idle" in text


async def test_metrics_exposition(serve) -> None:
    running = await serve(make_config(fake_model("a")))
    async with aiohttp.ClientSession() as s:
        await chat(s, running.url, "a")
        await chat(s, running.url, "nope")
        async with s.get(running.url + "/metrics") as resp:
            text = await resp.text()
    for needle in ('homelab_requests_total{code="200",model="a"} 1', 'homelab_swaps_total{model="a",outcome="ready"} 1',
                   'homelab_time_to_ready_seconds_count{model="a"} 1', 'homelab_swap_duration_seconds_count{model="a"} 1',
                   'homelab_tokens_total{kind="completion",model="a"} 8', 'homelab_model_loaded{model="a"} 1',
                   'homelab_request_duration_seconds_count{model="a"} 1'):
        assert needle in text, needle


async def test_peer_routing_with_api_key(serve) -> None:
    remote = await serve(make_config(fake_model("far"), api_keys=("peerkey",)))
    local = await serve(make_config(fake_model("near"), peers={
        "lab": PeerConfig(name="lab", proxy=remote.url, models=("far",), api_key="peerkey")}))
    async with aiohttp.ClientSession() as s:
        status, body = await chat(s, local.url, "lab/far")
        assert status == 200 and body["x_server"] == "far" and body["x_received"]["model"] == "far"
        async with s.post(local.url + "/v1/chat/completions", json={"model": "far", "stream": True}) as resp:
            assert b"[DONE]" in await resp.read()


async def test_send_loading_state(serve) -> None:
    running = await serve(make_config(fake_model("a", "--load-time", "1.2", send_loading_state=True)))
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/v1/chat/completions", json={"model": "a", "stream": True}) as resp:
            text = (await resp.read()).decode()
    assert "llama-swap loading model: a" in text and "[DONE]" in text


async def test_preload_hook(serve) -> None:
    running = await serve(make_config(fake_model("a"), hooks=HooksConfig(preload=("a",))))
    for _ in range(200):
        if running.sup.status_of("a") is State.READY:
            break
        await asyncio.sleep(0.02)
    assert running.sup.status_of("a") is State.READY


async def test_vram_budget_keeps_what_fits_and_evicts_lru(serve) -> None:
    models = [fake_model(m, vram_mib=10) for m in ("a", "b", "c")]
    running = await serve(make_config(*models, vram_budget_mib=20))
    async with aiohttp.ClientSession() as s:
        for m in ("a", "b", "a", "c"):  # a used after b, so b is the least recently used
            assert (await chat(s, running.url, m))[0] == 200
    resident = {m for m in "abc" if running.sup.status_of(m) is State.READY}
    assert resident == {"a", "c"}


async def test_aliases_listed_when_asked(serve) -> None:
    m = fake_model("a", aliases=("alpha",))
    running = await serve(make_config(m, aliases={"alpha": "a"}, include_aliases_in_list=True))
    async with aiohttp.ClientSession() as s:
        async with s.get(running.url + "/v1/models") as resp:
            listed = [entry["id"] for entry in (await resp.json())["data"]]
        assert listed == ["a", "alpha"]
        status, body = await chat(s, running.url, "alpha")
    assert status == 200 and body["x_received"]["model"] == "alpha"  # as requested, like llama-swap


async def test_log_requests_and_upstream_to_stdout(serve, capfd) -> None:
    running = await serve(make_config(fake_model("a"), log_requests=True, log_to_stdout="both"))
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, running.url, "a"))[0] == 200
        async with s.get(running.url + "/logs") as resp:
            text = await resp.text()
    assert "POST /v1/chat/completions 200" in text
    assert "all slots are idle" in capfd.readouterr().out


async def test_swaps_on_different_devices_load_in_parallel(serve) -> None:
    """#15: two swaps whose evictions are disjoint (one per GPU) run at the same time. The
    outgoing models ignore SIGTERM (slow to stop); the incoming ones take a while to load. The
    swap records' intervals [began, began + load_seconds] must overlap: serialized, the second
    eviction would only begin once the first swap's model had started."""
    budget = {"CUDA0": 11427, "CUDA1": 11427}
    slow_stop = {"unload_timeout": 1.5}
    models = [
        fake_model("a0", "--ignore-sigterm", devices_mib={"CUDA0": 8000}, **slow_stop),
        fake_model("b0", "--ignore-sigterm", devices_mib={"CUDA1": 8000}, **slow_stop),
        fake_model("a1", "--load-time", "1.0", devices_mib={"CUDA0": 8000}),
        fake_model("b1", "--load-time", "1.0", devices_mib={"CUDA1": 8000}),
    ]
    running = await serve(make_config(*models, device_budget_mib=budget))
    async with aiohttp.ClientSession() as s:
        for m in ("a0", "b0"):
            assert (await chat(s, running.url, m))[0] == 200
        results = await asyncio.gather(chat(s, running.url, "a1"), chat(s, running.url, "b1"))
    assert [status for status, _ in results] == [200, 200]
    swaps = {r.model: r for r in running.sup.activity.swaps}
    a1, b1 = swaps["a1"], swaps["b1"]
    assert a1.evicted == ["a0"] and b1.evicted == ["b0"]
    assert a1.load_seconds is not None and b1.load_seconds is not None
    assert a1.began < b1.began + b1.load_seconds and b1.began < a1.began + a1.load_seconds, (
        f"loads did not overlap: a1 {a1.began:.3f}+{a1.load_seconds}, b1 {b1.began:.3f}+{b1.load_seconds}"
    )
    assert {m for m in ("a0", "b0", "a1", "b1") if running.sup.status_of(m) is State.READY} == {"a1", "b1"}
