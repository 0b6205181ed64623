"""The dashboard's JSON API on its own: /api/state, /api/events, load, the page files, the key."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from homelab.supervisor.activity import ACTIVITY_EVERY
from homelab.supervisor.config import Filters, PeerConfig
from homelab.supervisor.config_load import load_config
from homelab.supervisor.scheduler import Scheduler, State
from homelab.supervisor.selection import Selection

from .conftest import FAKE, fake_model, free_port, make_config
from .helpers import chat
from .test_selection_e2e import config_with, put_profile

TIMEOUT = 15.0


async def state(s: aiohttp.ClientSession, url: str, **kw: Any) -> dict[str, Any]:
    async with s.get(url + "/api/state", **kw) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()  # type: ignore[no-any-return]


def by_id(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in st["models"]}


async def wait_state(s: aiohttp.ClientSession, url: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        st = await state(s, url)
        if check(st):
            return st
        await asyncio.sleep(0.05)
    raise AssertionError(f"state never matched; last: {json.dumps(st)[:2000]}")


async def test_page_files_and_root_redirect(serve) -> None:
    running = await serve(make_config(fake_model("a")))
    async with aiohttp.ClientSession() as s:
        async with s.get(running.url + "/", headers={"Accept": "text/html,*/*"}, allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/ui/"
        async with s.get(running.url + "/", headers={"Accept": "application/json"}) as resp:
            assert resp.status == 404  # what API clients always got
        async with s.post(running.url + "/", headers={"Accept": "text/html"}) as resp:
            assert resp.status == 404
        async with s.get(running.url + "/ui", allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/ui/"
        async with s.get(running.url + "/ui/") as resp:
            page = await resp.text()
            assert resp.status == 200 and resp.content_type == "text/html"
            assert 'src="app.js"' in page and "default-src 'self'" in resp.headers["Content-Security-Policy"]
        for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
            async with s.get(running.url + "/ui/" + name) as resp:
                assert resp.status == 200 and resp.content_type == kind
        async with s.get(running.url + "/ui/../server.py") as resp:
            assert resp.status == 404
        async with s.get(running.url + "/ui/server.py") as resp:
            assert resp.status == 404


async def test_api_key_guards_the_api_not_the_page(serve) -> None:
    running = await serve(make_config(fake_model("a"), api_keys=("sekrit",)))
    async with aiohttp.ClientSession() as s:
        async with s.get(running.url + "/ui/app.js") as resp:
            assert resp.status == 200
        async with s.get(running.url + "/", headers={"Accept": "text/html"}, allow_redirects=False) as resp:
            assert resp.status == 302
        async with s.get(running.url + "/") as resp:
            assert resp.status == 401  # non-browser clients: unchanged
        for path in ("/api/state", "/api/events"):
            async with s.get(running.url + path) as resp:
                assert resp.status == 401
        async with s.post(running.url + "/api/models/load/a") as resp:
            assert resp.status == 401
        st = await state(s, running.url, headers={"Authorization": "Bearer sekrit"})
        assert [m["id"] for m in st["models"]] == ["a"]


async def test_state_load_swap_and_request_records(serve) -> None:
    filters = Filters(set_params_by_id={"b-creative": {"temperature": 1.2}})
    config = make_config(
        fake_model("a", "--load-time", "0.2", ttl=30),
        fake_model("b", "--load-time", "0.2", aliases=("bee",), filters=filters),
        aliases={"bee": "b", "b-creative": "b"},
    )
    running = await serve(config)
    async with aiohttp.ClientSession() as s:
        st = await state(s, running.url)
        models = by_id(st)
        assert {m["status"] for m in models.values()} == {"unloaded"}
        assert models["b"]["aliases"] == ["bee"] and models["b"]["profiles"] == ["b-creative"]
        assert models["a"]["evicts"] == [] and models["a"]["ttl"] == 30
        async with s.post(running.url + "/api/models/load/nope") as resp:
            assert resp.status == 404
        async with s.post(running.url + "/api/models/load/a") as resp:
            assert resp.status == 200 and (await resp.json())["loading"] == "a"
        st = await wait_state(s, running.url, lambda st: by_id(st)["a"]["status"] in ("loading", "ready"))
        st = await wait_state(s, running.url, lambda st: by_id(st)["a"]["status"] == "ready")
        a = by_id(st)["a"]
        assert 0 < a["ttl_left"] <= 30
        # one model at a time (the default group): starting b would evict a; asking changed nothing
        assert by_id(st)["b"]["evicts"] == ["a"]
        assert running.sup.status_of("a") is State.READY
        status, body = await chat(s, running.url, "bee")
        assert status == 200 and body["x_server"] == "b"
        st = await state(s, running.url)
    models = by_id(st)
    assert models["a"]["status"] == "unloaded" and models["b"]["status"] == "ready"
    load_a, load_b = st["swaps"]
    assert load_a["model"] == "a" and load_a["trigger"] == "load" and load_a["outcome"] == "ready"
    assert load_b["model"] == "b" and load_b["evicted"] == ["a"] and load_b["outcome"] == "ready"
    assert load_b["trigger"] == "request"
    assert load_b["load_seconds"] >= 0.2
    (req,) = st["requests"]
    assert req["model"] == "b" and req["status"] == 200 and req["swap"] == load_b["id"]
    assert load_b["caused_by"] == req["id"] and req["output_tokens"] == 8 and req["tokens_per_second"] > 0


async def read_events(resp: aiohttp.ClientResponse, until: Callable[[list[tuple[str, Any]]], bool]) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []
    buf = b""
    deadline = time.monotonic() + TIMEOUT
    while not until(seen):
        left = deadline - time.monotonic()
        assert left > 0, f"events never matched; got {[k for k, _ in seen]}"
        chunk = await asyncio.wait_for(resp.content.readany(), timeout=left)
        assert chunk, "the event stream ended"
        buf += chunk
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            lines = block.decode().split("\n")
            data = [ln[len("data: "):] for ln in lines if ln.startswith("data: ")]
            if data:
                assert "event: message" in lines
                env = json.loads(data[0])
                seen.append((env["type"], json.loads(env["data"])))
    return seen


async def test_events_follow_llama_swap_envelope_and_go_live(serve) -> None:
    running = await serve(make_config(fake_model("a", "--load-time", "0.2"), fake_model("b")))
    async with aiohttp.ClientSession() as s, s.get(running.url + "/api/events") as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        first = await read_events(resp, lambda seen: any(k == "inflight" for k, _ in seen))
        kinds = [k for k, _ in first]
        assert "modelStatus" in kinds and "metrics" in kinds
        status = dict(first)["modelStatus"]
        assert [(m["id"], m["state"], m["status"]) for m in status] == [("a", "stopped", "unloaded"),
                                                                        ("b", "stopped", "unloaded")]
        async with s.post(running.url + "/api/models/load/a") as load:
            assert load.status == 200

        def loaded(seen: list[tuple[str, Any]]) -> bool:
            return any(k == "swap" and d["outcome"] == "ready" for k, d in seen) and any(
                k == "modelStatus" and d[0]["status"] == "ready" for k, d in seen)

        live = await read_events(resp, loaded)
        statuses = [d[0]["status"] for k, d in live if k == "modelStatus"]
        assert "loading" in statuses and statuses[-1] == "ready"
        # the supervisor's log reaches the feed tagged as llama-swap tags it (live chunks are
        # batched, so read it from the history a new subscriber gets first: deterministic)
        async with s.get(running.url + "/api/events") as again:
            history = await read_events(again, lambda seen: any(k == "inflight" for k, _ in seen))
        logs = [d for k, d in history if k == "logData"]
        assert any(d["source"] == "proxy" and "starting model a" in d["data"] for d in logs)
        status_code, _ = await chat(s, running.url, "a")
        assert status_code == 200
        after = await read_events(resp, lambda seen: any(k == "metrics" for k, _ in seen))
        (record,) = next(d for k, d in after if k == "metrics")
        assert record["model"] == "a" and record["status"] == 200


async def load_with_page_open(s: aiohttp.ClientSession, url: str, events: aiohttp.ClientResponse, model: str) -> None:
    """Load ``model`` from an open page (after its first counts arrive) and wait until the page sees it ready."""
    await read_events(events, lambda seen: any(k == "inflight" for k, _ in seen))
    async with s.post(f"{url}/api/models/load/{model}") as resp:
        assert resp.status == 200
    await read_events(events, lambda seen: any(
        k == "modelStatus" and any(m["id"] == model and m["status"] == "ready" for m in d) for k, d in seen))


def records(seen: list[tuple[str, Any]]) -> int:
    return sum(len(d) for k, d in seen if k == "metrics")


async def test_an_open_page_costs_messages_per_flush_not_per_request(serve) -> None:
    """A page as it opens (its Logs panel on the supervisor's log) while a ready model serves
    requests: no model status, selection or backend log lines per request; the requests' records
    and counts come at most once per ACTIVITY_EVERY, however many requests ended in it."""
    running = await serve(make_config(fake_model("a", "--log-requests", ttl=30), fake_model("b")))
    async with aiohttp.ClientSession() as s, s.get(running.url + "/api/events?logs=proxy") as events:
        await load_with_page_open(s, running.url, events, "a")
        n = 40
        started = time.monotonic()
        for _ in range(n):
            assert (await chat(s, running.url, "a"))[0] == 200
        after = await read_events(events, lambda seen: records(seen) >= n)
        flushes = math.ceil((time.monotonic() - started) / ACTIVITY_EVERY) + 1
    kinds = Counter(k for k, _ in after)
    assert kinds["modelStatus"] == 0 and kinds["selection"] == 0  # a's state never changed
    assert records(after) == n and kinds["metrics"] <= flushes
    assert kinds["inflight"] <= flushes + 1  # + the load's last counts
    assert not [d for k, d in after if k == "logData" and d.get("source") != "proxy"]
    assert running.sup.model_log("a").contents().count(b"processing task") > 0  # written, not sent
    last = [d for k, d in after if k == "inflight"][-1]
    assert last["total"] == 0 and last["models"]["a"]["inflight"] == 0 and last["models"]["a"]["status"] == "ready"
    assert 0 < last["models"]["a"]["ttl_left"] <= 30


async def test_counts_show_a_busy_model_without_a_status_message(serve) -> None:
    """A request in flight turns the model busy on the page through the small inflight message;
    the full model status is not sent again."""
    running = await serve(make_config(fake_model("a", "--request-delay", "1.5")))
    async with aiohttp.ClientSession() as s, s.get(running.url + "/api/events?logs=") as events:
        await load_with_page_open(s, running.url, events, "a")
        slow = asyncio.ensure_future(chat(s, running.url, "a"))
        busy = await read_events(events, lambda seen: any(
            k == "inflight" and d["models"]["a"]["status"] == "busy" for k, d in seen))
        assert (await slow)[0] == 200
        idle = await read_events(events, lambda seen: any(
            k == "inflight" and d["models"]["a"]["status"] == "ready" for k, d in seen))
    counts = next(d for k, d in busy if k == "inflight" and d["models"]["a"]["status"] == "busy")
    assert counts["total"] == 1 and counts["models"]["a"]["inflight"] == 1 and "ttl_left" not in counts["models"]["a"]
    assert not [k for k, _ in busy + idle if k in ("modelStatus", "logData")]


async def test_the_page_gets_the_logs_it_follows(serve) -> None:
    """``?logs=`` names the logs sent: a followed model's lines (its history, then live), not
    the supervisor's; ``logs=`` none; an unknown name is refused with the choices."""
    running = await serve(make_config(fake_model("a", "--log-requests", aliases=("alpha",)), aliases={"alpha": "a"}))
    async with aiohttp.ClientSession() as s:
        async with s.get(running.url + "/api/events?logs=proxy,nope") as resp:
            assert resp.status == 400
            message = (await resp.json())["error"]["message"]
        assert message == "GET /api/events?logs=: unknown log 'nope'; expected proxy, upstream or a model: a, proxy, upstream"
        assert (await chat(s, running.url, "a"))[0] == 200
        async with s.get(running.url + "/api/events?logs=alpha") as page, s.get(running.url + "/api/events?logs=") as quiet:
            history = await read_events(page, lambda seen: any(k == "inflight" for k, _ in seen))
            logs = [d for k, d in history if k == "logData"]
            assert logs and all(d == {"source": "upstream", "model": "a", "data": d["data"]} for d in logs)
            assert "--name a" in logs[0]["data"]
            assert (await chat(s, running.url, "a"))[0] == 200
            await read_events(page, lambda seen: any(k == "logData" and "task 2 " in d["data"] for k, d in seen))
            unlogged = await read_events(quiet, lambda seen: records(seen) >= 2)
    assert not [k for k, _ in unlogged if k == "logData"]


async def test_failed_then_backing_off_with_log_lines(serve) -> None:
    running = await serve(make_config(fake_model("bad", "--crash-on-start", "--load-time", "0.1")))
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, running.url, "bad"))[0] == 503
        bad = by_id(await state(s, running.url))["bad"]
        assert bad["status"] == "failed" and "exited with status 1" in bad["last_error"]
        assert "fake failure" in bad["log_tail"]
        assert (await chat(s, running.url, "bad"))[0] == 503
        st = await state(s, running.url)
    bad = by_id(st)["bad"]
    assert bad["status"] == "backoff" and 0 < bad["retry_in"] <= 1
    assert [s["outcome"] for s in st["swaps"]] == ["failed", "failed"]


def test_would_evict_is_pure() -> None:
    config = make_config(fake_model("a", port=1), fake_model("b", port=2))
    sched = Scheduler(config)
    sched.request(1, "a", 0.0)
    sched.ready("a", 0.1)
    sched.done(1, 0.2)
    before = {m: (s.state, set(s.inflight), dict(s.waiters)) for m, s in sched.models.items()}
    assert sched.would_evict("b") == frozenset({"a"})
    assert sched.would_evict("a") == frozenset()
    assert {m: (s.state, set(s.inflight), dict(s.waiters)) for m, s in sched.models.items()} == before
    assert sched.next_deadline() is None and sched.requests == {}


async def test_vram_and_deploy_facts_from_the_generation(serve, tmp_path: Path) -> None:
    mib = 1 << 20
    terms = {"weights": 4000 * mib, "kv": 1000 * mib, "compute": 500 * mib, "output": 10 * mib,
             "overhead": 300 * mib, "total": 5810 * mib}
    (tmp_path / "plan.json").write_text(json.dumps({
        "version": 1, "host": "box", "backend": "vulkan",
        "devices": {"gpu0": {"name": "Radeon RX 7900 XTX", "budget_mib": 23000, "llama_cpp": "Vulkan0"}},
        "models": {"a": {"devices": {"gpu0": terms}, "source": "hf://org/a@abc"},
                   "b": {"devices": {"gpu0": terms, "cpu": {"weights": 100 * mib, "total": 100 * mib}}}},
    }))
    (tmp_path / "manifest.json").write_text(json.dumps({"host": "box", "build_number": 7000, "runtime": "supervisor",
                                                        "inputs": {"lock": "ab" * 32, "patches": {}}}))
    (tmp_path / ".homelab-generation.json").write_text(json.dumps({"number": 4, "created": 1700000000.0,
                                                                   "status": "ok"}))
    config = make_config(fake_model("a"), fake_model("b"), source=tmp_path / "config.yaml")
    running = await serve(config)
    async with aiohttp.ClientSession() as s:
        st = await state(s, running.url)
    vram = st["vram"]
    assert vram["source"] == "plan"
    # the plan's device with the config's name for it (x-devices, x-deviceBudgetMiB say Vulkan0)
    assert vram["devices"]["gpu0"] == {"name": "Radeon RX 7900 XTX", "budget_mib": 23000, "llama_cpp": "Vulkan0"}
    assert vram["devices"]["cpu"] == {"name": "system RAM", "budget_mib": None}
    assert vram["models"]["a"]["gpu0"] == {"weights": 4000, "kv": 1000, "compute": 500, "other": 310, "total": 5810}
    deploy = st["deploy"]
    assert deploy["generation"] == 4 and deploy["deployed"] == 1700000000.0 and deploy["backend"] == "vulkan"
    assert deploy["manifest"]["build_number"] == 7000 and deploy["model_sources"]["a"] == "hf://org/a@abc"


async def test_vram_from_the_config_budget_without_a_plan(serve) -> None:
    config = make_config(fake_model("a", vram_mib=6000), fake_model("b", vram_mib=9000), vram_budget_mib=12000)
    running = await serve(config)
    async with aiohttp.ClientSession() as s:
        st = await state(s, running.url)
    assert st["vram"] == {"source": "config",
                          "devices": {"budget": {"name": "VRAM budget (x-vramBudgetMiB)", "budget_mib": 12000}},
                          "models": {"a": {"budget": {"total": 6000}}, "b": {"budget": {"total": 9000}}}}
    assert st["deploy"]["manifest"] is None


async def test_peer_models_listed_with_the_peers_health(serve) -> None:
    remote = await serve(make_config(fake_model("far")))
    local = await serve(make_config(fake_model("near"), peers={
        "lab": PeerConfig(name="lab", proxy=remote.url, models=("far",))}))
    async with aiohttp.ClientSession() as s:
        st = await wait_state(s, local.url, lambda st: by_id(st)["lab/far"]["state"] == "up")
    peer = by_id(st)["lab/far"]
    assert peer["peerID"] == "lab" and peer["status"] == "peer up" and peer["evicts"] == []
    assert by_id(st)["near"]["status"] == "unloaded"


async def test_vram_per_device_from_the_config_without_a_plan(serve) -> None:
    """x-deviceBudgetMiB and x-devices: one bar per device, each model's share on it (#17)."""
    config = make_config(fake_model("a", devices_mib={"CUDA0": 6000}),
                         fake_model("b", devices_mib={"CUDA0": 2000, "CUDA1": 7000}),
                         device_budget_mib={"CUDA0": 11427, "CUDA1": 11427})
    running = await serve(config)
    async with aiohttp.ClientSession() as s:
        st = await state(s, running.url)
    assert st["vram"] == {"source": "config",
                          "devices": {"CUDA0": {"name": "CUDA0", "budget_mib": 11427},
                                      "CUDA1": {"name": "CUDA1", "budget_mib": 11427}},
                          "models": {"a": {"CUDA0": {"total": 6000}},
                                     "b": {"CUDA0": {"total": 2000}, "CUDA1": {"total": 7000}}}}


SELECTION_YAML = """
    routing: {router: {settings: {groups: {both: {swap: false, members: [a, b]}}}}}
    selectors:
      pick: {strategy: warm, targets: [a, b]}
      spill: {strategy: spillover, targets: [a, b], settings: {spillover: 2}}
      solo: {strategy: pin, targets: [b], unlisted: true}
    profiles:
      night: {description: quiet, pins: {pick: b, solo: ""}}
    """


def after_profile_change(seen: list[tuple[str, Any]]) -> dict[str, Any]:
    """The messages after the first ``profileChanged`` (the last of each kind)."""
    kinds = [k for k, _ in seen]
    return dict(seen[kinds.index("profileChanged") + 1 :]) if "profileChanged" in kinds else {}


async def test_state_shows_selectors_and_profiles_live(serve) -> None:
    """/api/state's ``selection``: each selector's pick now (after warm state and pins) and the
    profiles; the event stream sends it again on a profile switch and on a load."""
    running = await serve(config_with({"a": "", "b": ""}, SELECTION_YAML))
    async with aiohttp.ClientSession() as s, s.get(running.url + "/api/events") as events:
        sel = (await state(s, running.url))["selection"]
        assert sel["active"] is None
        assert sel["profiles"] == [{"id": "night", "description": "quiet", "pins": {"pick": "b", "solo": ""}}]
        selectors = {x["id"]: x for x in sel["selectors"]}
        assert selectors["pick"] == {"id": "pick", "name": "", "strategy": "warm", "targets": ["a", "b"],
                                     "unlisted": False, "status": "unloaded", "picks": "a"}
        assert selectors["spill"]["spillover"] == 2 and selectors["spill"]["picks"] == "a"
        assert selectors["solo"]["picks"] == "b" and selectors["solo"]["unlisted"] is True
        first = await read_events(events, lambda seen: any(k == "selection" for k, _ in seen))
        assert dict(first)["selection"] == sel

        # b warm: the warm selector and the spillover one now pick b (asking reserved nothing)
        async with s.post(running.url + "/api/models/load/b") as resp:
            assert resp.status == 200
        loaded = await read_events(events, lambda seen: any(
            k == "selection" and d["selectors"][0]["picks"] == "b" for k, d in seen))
        latest = {x["id"]: x for x in [d for k, d in loaded if k == "selection"][-1]["selectors"]}
        assert latest["pick"]["status"] == "loaded" and latest["spill"]["picks"] == "b"
        status, body = await chat(s, running.url, "spill")
        assert status == 200 and body["x_server"] == "b"

        status, _ = await put_profile(s, running.url, {"name": "night"})
        assert status == 200
        # a selection message from the request before may still come first: read on to the switch's
        switched = await read_events(events, lambda seen: "selection" in after_profile_change(seen))
        assert dict(switched)["profileChanged"] == {"active": "night"}
        sel = after_profile_change(switched)["selection"]
        picks = {x["id"]: (x["picks"], x.get("error")) for x in sel["selectors"]}
        assert sel["active"] == "night"
        assert picks["pick"] == ("b", None) and picks["spill"] == ("b", None)
        assert picks["solo"] == (None, "model 'solo' is disabled by profile 'night'")
        assert (await state(s, running.url))["selection"] == sel


def test_preview_reserves_nothing() -> None:
    """The dashboard asks what a request would reach on every status message: asking must not
    move the spillover's reservations or its round-robin turn."""
    config = config_with({"a": "", "b": ""}, SELECTION_YAML)
    selection = Selection(config)
    states = {"a": "ready", "b": "ready"}
    first = selection.preview("spill", states)
    assert [selection.preview("spill", states) for _ in range(3)] == [first] * 3
    assert selection.spills == {}
    chosen = [selection.choose("spill", states).name for _ in range(2)]
    assert chosen == ["a", "b"] and selection.preview("spill", states) == "a"
    assert {k: dict(v.inflight) for k, v in selection.spills.items()} == {"spill": {"a": 1, "b": 1}}


def write_models(path: Path, ports: dict[str, int], *model_ids: str, described: str = "", extra: str = "") -> None:
    """The config file with these fake models (``ports`` keeps each model's command the same
    across rewrites, so a reload does not restart it)."""
    lines = ["healthCheckTimeout: 15", "models:"]
    for model_id in model_ids:
        port = ports.setdefault(model_id, free_port())
        lines += [f"  {model_id}:", f'    cmd: "{sys.executable} -S {FAKE} --port {port} --name {model_id}"',
                  f"    proxy: http://127.0.0.1:{port}", "    unloadTimeout: 2"]
        if model_id == described:
            lines.append(f"    description: {model_id} described")
    path.write_text("\n".join(lines) + "\n" + extra)


def last_status(seen: list[tuple[str, Any]]) -> list[tuple[str, str, str]]:
    (*_, models) = [d for k, d in seen if k == "modelStatus"]
    return [(m["id"], m["status"], m["description"]) for m in models]


async def test_reload_reaches_an_open_event_stream(serve, tmp_path: Path) -> None:
    """A reload shows on a page that stays connected: added, changed and removed models at
    once, an added model's log lines once it runs (before, the page had to reconnect)."""
    path, ports = tmp_path / "config.yaml", {}
    write_models(path, ports, "a")
    running = await serve(load_config(path), loader=load_config)
    async with aiohttp.ClientSession() as s, s.get(running.url + "/api/events") as events:
        first = await read_events(events, lambda seen: any(k == "inflight" for k, _ in seen))
        assert last_status(first) == [("a", "unloaded", "")]
        write_models(path, ports, "a", "b", "c")
        async with s.post(running.url + "/x-reload") as resp:
            assert (await resp.json())["reloaded"] is True
        after = await read_events(events, lambda seen: any(k == "modelStatus" for k, _ in seen))
        assert last_status(after) == [("a", "unloaded", ""), ("b", "unloaded", ""), ("c", "unloaded", "")]

        async with s.post(running.url + "/api/models/load/b") as resp:
            assert resp.status == 200

        def b_ready_and_logged(seen: list[tuple[str, Any]]) -> bool:
            return any(k == "logData" and d.get("model") == "b" for k, d in seen) and any(
                k == "modelStatus" and ("b", "ready") in [(m["id"], m["status"]) for m in d] for k, d in seen)

        logs = await read_events(events, b_ready_and_logged)
        (b_log, *_) = [d for k, d in logs if k == "logData" and d.get("model") == "b"]
        assert b_log["source"] == "upstream" and "--name b" in b_log["data"]

        # c never ran and a only gains a description: no scheduler state changes, the reload tells
        write_models(path, ports, "a", "b", described="a")
        async with s.post(running.url + "/x-reload") as resp:
            assert (await resp.json())["reloaded"] is True
        removed = await read_events(events, lambda seen: any(k == "modelStatus" for k, _ in seen))
        assert last_status(removed) == [("a", "unloaded", "a described"), ("b", "ready", "")]


async def test_reload_logs_the_config_warnings(serve, tmp_path: Path) -> None:
    """What ``serve`` prints at start about keys llama-swap ignores, a reload logs (before, a
    reload that brought such a key in said nothing); a rejected reload logs only its error."""
    path, ports = tmp_path / "config.yaml", {}
    write_models(path, ports, "a")
    running = await serve(load_config(path), loader=load_config)
    ghost = "routing: {router: {settings: {groups: {pair: {members: [a, zzqqxx]}}}}}\n"
    write_models(path, ports, "a", extra=ghost)
    (note,) = load_config(path).warnings
    assert "group member 'zzqqxx' is not a model, so it is ignored" in note
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/x-reload") as resp:
            assert (await resp.json())["reloaded"] is True
        async with s.get(running.url + "/logs") as resp:
            logs = await resp.text()
        assert f"reload: {note}" in logs
        path.write_text("models: [")
        async with s.post(running.url + "/x-reload") as resp:
            assert (await resp.json())["reloaded"] is False
        async with s.get(running.url + "/logs") as resp:
            assert (await resp.text()).count(note) == 1
