"""Selectors, profiles, capabilities and timeouts end to end: real supervisor, fake backends."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from homelab.supervisor.config import Config, Timeouts
from homelab.supervisor.config_load import parse_config

from .conftest import FAKE, free_port
from .helpers import chat


def config_with(models: dict[str, str], extra: str) -> Config:
    """A config from text whose models run the fake backend (``models``: ID -> extra flags)."""
    lines = ["healthCheckTimeout: 15", "models:"]
    for model_id, flags in models.items():
        port = free_port()
        lines += [
            f"  {model_id}:",
            f'    cmd: "{sys.executable} -S {FAKE} --port {port} --name {model_id} {flags}"',
            f"    proxy: http://127.0.0.1:{port}",
            "    unloadTimeout: 2",
        ]
    return parse_config("\n".join(lines) + "\n" + textwrap.dedent(extra), Path("/tmp/compat.yaml"), {})


async def get_json(s: aiohttp.ClientSession, url: str) -> Any:
    async with s.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def put_profile(s: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with s.put(url + "/api/profiles/active", json=body) as resp:
        return resp.status, await resp.json()


async def test_selectors_and_profiles_route_requests(serve) -> None:
    config = config_with(
        {"a": "--request-delay 0.4", "b": "--request-delay 0.4"},
        """
        routing: {router: {settings: {groups: {both: {swap: false, members: [a, b]}}}}}
        selectors:
          pick: {strategy: warm, targets: [a, b], name: Pick, metadata: {purpose: test}}
          spill: {strategy: spillover, targets: [a, b]}
          hidden: {strategy: pin, targets: [b], unlisted: true}
        profiles:
          night: {description: quiet, pins: {x: pick, b: ~}}
        """,
    )
    running = await serve(config)
    url = running.url
    async with aiohttp.ClientSession() as s:
        status, body = await chat(s, url, "pick")
        assert status == 200 and body["x_server"] == "a"
        assert body["x_received"]["model"] == "a"  # the backend sees the chosen model, not the selector
        listing = {m["id"]: m for m in (await get_json(s, url + "/v1/models"))["data"]}
        assert "hidden" not in listing and "x" not in listing
        pick = listing["pick"]
        assert pick["status"]["value"] == "loaded" and pick["name"] == "Pick"
        assert pick["meta"]["llamaswap"] == {"purpose": "test", "type": "selector", "strategy": "warm",
                                             "targets": ["a", "b"]}
        assert listing["spill"]["meta"]["llamaswap"]["spillover"] == 1
        assert [m["id"] for m in (await get_json(s, url + "/v1/models"))["data"]] == sorted(listing)

        # spillover: a is busy with one request (its share), so the next goes to b
        results = await asyncio.gather(chat(s, url, "spill"), chat(s, url, "spill"))
        assert sorted(r[1]["x_server"] for r in results) == ["a", "b"]

        assert (await get_json(s, url + "/api/profiles")) == {
            "active": None, "profiles": [{"id": "night", "description": "quiet", "pins": {"x": "pick", "b": ""}}]}
        events = running.sup.activity.subscribe()  # the /api/events feed
        assert await put_profile(s, url, {"name": "night"}) == (200, {"active": "night"})
        messages = []
        while not events.empty():
            data_line = events.get_nowait().decode().split("data: ", 1)[1]
            messages.append(json.loads(data_line))
        changed = [json.loads(m["data"]) for m in messages if m["type"] == "profileChanged"]
        assert changed == [{"active": "night"}]
        status, body = await chat(s, url, "x")  # pin -> selector -> a warm target
        assert status == 200 and body["x_server"] in ("a", "b")
        status, body = await chat(s, url, "b")
        assert status == 404 and "disabled by profile 'night'" in body["error"]["message"]
        listing = {m["id"]: m for m in (await get_json(s, url + "/v1/models"))["data"]}
        assert listing["x"]["meta"]["llamaswap"] == {"type": "profile"}
        assert (await put_profile(s, url, {"name": "nope"}))[0] == 404
        assert (await put_profile(s, url, {"nom": "night"}))[0] == 400
        assert (await put_profile(s, url, {"name": 3}))[0] == 400
        assert await put_profile(s, url, {"name": None}) == (200, {"active": None})
        status, body = await chat(s, url, "b")
        assert status == 200 and body["x_server"] == "b"


async def test_capabilities_in_the_listing(serve) -> None:
    text = textwrap.dedent(
        """
        capabilities: {in: [text, image, audio], out: [text], tools: true, reranker: true, context: 32000}
        metadata: {capabilities: mine, keep: 1}
        """
    )
    indented = "\n".join("    " + line for line in text.strip().splitlines())
    source = "healthCheckTimeout: 15\nmodels:\n  vis:\n    cmd: srv --port ${PORT}\n" + indented + "\n"
    source += "  plain:\n    cmd: srv --port ${PORT}\n    metadata: {capabilities: mine}\n"
    config = parse_config(source, Path("/tmp/caps.yaml"), {})
    running = await serve(config)
    async with aiohttp.ClientSession() as s:
        listing = {m["id"]: m for m in (await get_json(s, running.url + "/v1/models"))["data"]}
    vis = listing["vis"]
    assert vis["architecture"] == {"input_modalities": ["text", "image", "audio"], "output_modalities": ["text"],
                                   "modality": "text+image+audio->text"}
    assert vis["capabilities"] == {"vision": True, "audio_transcriptions": True, "function_calling": True,
                                   "reranker": True}
    assert vis["supported_parameters"] == ["tools", "tool_choice"]
    assert vis["context_length"] == 32000 and vis["meta"]["n_ctx"] == 32000
    assert vis["meta"]["llamaswap"] == {"keep": 1, "type": "model"}  # capped keys give way to capabilities
    plain = listing["plain"]
    assert "capabilities" not in plain and plain["meta"]["llamaswap"] == {"capabilities": "mine", "type": "model"}


async def test_response_header_timeout(serve) -> None:
    """timeouts.responseHeader: a backend that sends no headers in time gets 502, as upstream."""
    config = config_with({"slow": "--request-delay 5"}, "")
    slow = config.models["slow"]
    config = replace(config, models={"slow": replace(slow, timeouts=Timeouts(response_header=1))})
    running = await serve(config)
    async with aiohttp.ClientSession() as s:
        status, body = await chat(s, running.url, "slow")
    assert status == 502
    assert "timeouts.responseHeader" in body["error"]["message"]
