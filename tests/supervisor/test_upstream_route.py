"""``/upstream/<model>/...`` as llama-swap's: ignorePaths, redirects, raw encoding, websockets."""

from __future__ import annotations

import asyncio
import re
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from homelab.supervisor.config import ModelConfig, ProfileConfig
from homelab.supervisor.scheduler import State
from homelab.supervisor.upstream import escaped_suffix

from .conftest import fake_model, free_port, make_config
from .helpers import chat

WS_SERVER = textwrap.dedent(
    """
    import sys
    from aiohttp import web

    async def health(request):
        return web.json_response({"status": "ok"})

    async def ws(request):
        sock = web.WebSocketResponse(protocols=("chat.v1",))
        await sock.prepare(request)
        await sock.send_str("path " + request.raw_path)
        async for message in sock:
            if message.type is web.WSMsgType.TEXT:
                await sock.send_str("echo " + message.data)
            elif message.type is web.WSMsgType.BINARY:
                await sock.send_bytes(message.data[::-1])
        return sock

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/ws", ws)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=lambda *_: print("listening", flush=True))
    """
)


def ws_model(tmp_path: Path, model_id: str, **fields: object) -> ModelConfig:
    script = tmp_path / "ws_server.py"
    script.write_text(WS_SERVER)
    port = free_port()
    return ModelConfig(
        id=model_id, cmd=(sys.executable, str(script), str(port)), proxy=f"http://127.0.0.1:{port}", port=port,
        unload_timeout=2.0, **fields,  # type: ignore[arg-type]
    )


async def test_ignore_paths_never_start_a_model(serve) -> None:
    running = await serve(make_config(fake_model("a")))
    sup = running.sup
    async with aiohttp.ClientSession() as s:
        async with s.get(running.url + "/upstream/a/static/app.js") as resp:
            assert resp.status == 409
            assert "matches upstream.ignorePaths" in (await resp.json())["error"]["message"]
        await asyncio.sleep(0.2)
        assert sup.status_of("a") is State.STOPPED and "a" not in sup.backends  # no process started
        assert (await chat(s, running.url, "a"))[0] == 200  # now loaded
        async with s.get(running.url + "/upstream/a/echo/app.js") as resp:
            assert resp.status == 200 and (await resp.json())["path"] == "/echo/app.js"


async def test_configured_ignore_paths_replace_the_default(serve) -> None:
    config = make_config(fake_model("a"), ignore_paths=(re.compile(r"^/ws$"),))
    running = await serve(config)
    async with aiohttp.ClientSession() as s:
        async with s.get(running.url + "/upstream/a/ws") as resp:
            assert resp.status == 409
        async with s.get(running.url + "/upstream/a/echo/app.js") as resp:  # .js is no longer ignored
            assert resp.status == 200
    assert running.sup.status_of("a") is State.READY


async def test_redirects_and_raw_encoding(serve) -> None:
    running = await serve(make_config(fake_model("a"), fake_model("org/m")))
    async with aiohttp.ClientSession() as s:
        async with s.get(running.url + "/upstream/a?x=1", allow_redirects=False) as resp:
            assert resp.status == 301 and resp.headers["Location"] == "/upstream/a/?x=1"
        async with s.post(running.url + "/upstream/org/m", allow_redirects=False) as resp:
            assert resp.status == 308 and resp.headers["Location"] == "/upstream/org/m/"
        async with s.get(running.url + "/upstream", allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/ui/"
        raw = URL(running.url + "/upstream/a/echo/x%2Fy%20z%41?q=%41&r=a%2Bb", encoded=True)
        async with s.get(raw) as resp:
            assert (await resp.json())["path"] == "/echo/x%2Fy%20z%41?q=%41&r=a%2Bb"  # byte for byte
        raw = URL(running.url + "/upstream/org%2Fm/echo/p%2F", encoded=True)  # the model ID encoded too
        async with s.post(raw, json={"k": 1}) as resp:
            body = await resp.json()
            assert body["path"] == "/echo/p%2F" and body["x_server"] == "org/m" and body["x_received"] == {"k": 1}


def test_escaped_suffix() -> None:
    assert escaped_suffix("/upstream/org%2Fm/a%20b", "/upstream/org/m") == "/a%20b"
    assert escaped_suffix("/upstream/a/x", "/upstream/b") is None


async def test_websockets_pass_through_and_count_as_activity(serve, tmp_path: Path) -> None:
    running = await serve(make_config(ws_model(tmp_path, "w")))
    sup = running.sup
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(URL(running.url + "/upstream/w/ws?a=%41", encoded=True),
                                protocols=("chat.v1",)) as ws:  # starts the stopped model
            assert ws.protocol == "chat.v1"
            assert (await ws.receive_str()) == "path /ws?a=%41"
            await ws.send_str("hi")
            assert (await ws.receive_str()) == "echo hi"
            await ws.send_bytes(b"abc")
            assert (await ws.receive_bytes()) == b"cba"
            assert len(sup.scheduler.models["w"].inflight) == 1  # held like any request
        await asyncio.sleep(0.2)
        assert not sup.scheduler.models["w"].inflight


async def test_ignore_websockets(serve, tmp_path: Path) -> None:
    running = await serve(make_config(ws_model(tmp_path, "w", ignore_websockets=True)))
    sup = running.sup
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await s.ws_connect(running.url + "/upstream/w/ws")
        assert refused.value.status == 409
        await asyncio.sleep(0.2)
        assert sup.status_of("w") is State.STOPPED and "w" not in sup.backends  # it did not start it
        async with s.get(running.url + "/upstream/w/health") as resp:  # plain HTTP starts it
            assert resp.status == 200
        async with s.ws_connect(running.url + "/upstream/w/ws") as ws:
            assert (await ws.receive_str()) == "path /ws"
            await ws.send_str("x")
            assert (await ws.receive_str()) == "echo x"
            assert not sup.scheduler.models["w"].inflight  # not counted as activity


async def test_profile_pins_apply_to_upstream_paths(serve) -> None:
    config = make_config(fake_model("a"), fake_model("b"))
    config = replace(config, profiles={"p": ProfileConfig("p", {"alias/x": "b", "a": ""})})
    running = await serve(config)
    async with aiohttp.ClientSession() as s:
        async with s.put(running.url + "/api/profiles/active", json={"name": "p"}) as resp:
            assert resp.status == 200
        async with s.get(running.url + "/upstream/alias/x/echo/1") as resp:
            assert (await resp.json())["x_server"] == "b"
        async with s.get(running.url + "/upstream/a/echo/1") as resp:
            assert resp.status == 404
