"""The supervisor's front door, attacked over real HTTP: foreign Host (DNS rebinding), foreign
Origin (cross-site simple requests), preflights, keys, oversized and nested bodies, a client that
trickles its body. Every refusal must leave the models untouched."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import socket
from pathlib import Path

import aiohttp
import pytest

from homelab.supervisor.config import SecuritySettings, Timeouts
from homelab.supervisor.config_load import parse_config
from homelab.supervisor.config_load.values import ConfigError
from homelab.supervisor.http_errors import RequestError
from homelab.supervisor.proxy import json_depth, parse_body
from homelab.supervisor.security import HttpPolicy, normalize_origin, presented_keys

from .conftest import fake_model, make_config

CHAT = {"model": "a", "messages": [{"role": "user", "content": "hi"}]}
EVIL = "http://evil.example"


async def running_models(s: aiohttp.ClientSession, url: str) -> list[str]:
    async with s.get(url + "/running") as resp:
        return [entry["model"] for entry in (await resp.json())["running"]]


def error_of(body: dict) -> dict:
    return body["error"]


# ---------------------------------------------------------------- Host (DNS rebinding)


async def test_foreign_host_gets_421_naming_the_setting(serve) -> None:
    running = await serve(make_config(fake_model("a")))
    async with aiohttp.ClientSession() as s:
        # A rebinding page: its own name, now resolving to 127.0.0.1, and its own origin.
        async with s.post(running.url + "/v1/chat/completions", json=CHAT,
                          headers={"Host": f"evil.example:{running.port}",
                                   "Origin": f"http://evil.example:{running.port}"}) as resp:
            assert resp.status == 421
            error = error_of(await resp.json())
            assert error["code"] == "host_not_allowed"
            assert "x-security.allowedHosts" in error["message"] and "evil.example" in error["message"]
            assert "Access-Control-Allow-Origin" not in resp.headers
        async with s.get(running.url + "/upstream/a/slots", headers={"Host": "evil.example"}) as resp:
            assert resp.status == 421
        assert await running_models(s, running.url) == []  # nothing was started for the attacker


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST.", "app.localhost", "127.0.0.1", "[::1]",
                                  "192.168.1.7", "[fe80::1]"])
async def test_loopback_names_and_ip_addresses_are_answered(serve, host: str) -> None:
    running = await serve(make_config(fake_model("a")))
    async with aiohttp.ClientSession() as s:
        async with s.get(running.url + "/v1/models", headers={"Host": f"{host}:{running.port}"}) as resp:
            assert resp.status == 200, await resp.text()


async def test_allowed_hosts_from_the_config(serve) -> None:
    running = await serve(make_config(fake_model("a"), security=SecuritySettings(allowed_hosts=("nas.lan",))))
    async with aiohttp.ClientSession() as s:
        async with s.get(running.url + "/v1/models", headers={"Host": f"NAS.lan:{running.port}"}) as resp:
            assert resp.status == 200
        async with s.get(running.url + "/v1/models", headers={"Host": "nas.lan.evil.example"}) as resp:
            assert resp.status == 421


# ---------------------------------------------------------------- Origin, CORS, simple requests


async def test_cross_site_simple_post_is_refused_and_reads_nothing(serve) -> None:
    """The attack from #14: text/plain from another site, answered 200 with that site's CORS."""
    running = await serve(make_config(fake_model("a", "--cors")))
    async with aiohttp.ClientSession() as s:
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            async with s.post(running.url + "/v1/chat/completions", data=json.dumps(CHAT),
                              headers={"Origin": EVIL, "Content-Type": content_type}) as resp:
                assert resp.status == 403
                error = error_of(await resp.json())
                assert error["code"] == "origin_not_allowed" and "x-security.allowedOrigins" in error["message"]
                assert not [h for h in resp.headers if h.lower().startswith("access-control-")]
        async with s.get(running.url + "/upstream/a/slots", headers={"Origin": "null"}) as resp:
            assert resp.status == 403
        assert await running_models(s, running.url) == []


async def test_allowed_origin_gets_cors_and_the_backends_own_cors_is_dropped(serve) -> None:
    running = await serve(make_config(fake_model("a", "--cors")))
    async with aiohttp.ClientSession() as s:
        # no Origin (curl, SDKs): the backend's "Access-Control-Allow-Origin: *" never comes through
        async with s.post(running.url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
            assert "Access-Control-Allow-Origin" not in resp.headers
        async with s.post(running.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
            assert resp.status == 200
            await resp.read()
            assert "Access-Control-Allow-Origin" not in resp.headers
        # the pass-through relays with aiohttp's client: the same
        async with s.post(running.url + "/upstream/a/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
            assert "Access-Control-Allow-Origin" not in resp.headers
        async with s.post(running.url + "/upstream/a/v1/chat/completions", json=CHAT,
                          headers={"Origin": "http://localhost:3000"}) as resp:
            assert resp.status == 200
            assert resp.headers.getall("Access-Control-Allow-Origin") == ["http://localhost:3000"]
        # Open WebUI on another loopback port: allowed, with its own origin echoed (never "*")
        for origin in ("http://localhost:3000", "http://127.0.0.1:8080", "http://[::1]:5173"):
            async with s.post(running.url + "/v1/chat/completions", json=CHAT, headers={"Origin": origin}) as resp:
                assert resp.status == 200
                assert resp.headers.getall("Access-Control-Allow-Origin") == [origin]
        # the dashboard: the server's own origin
        own = f"http://127.0.0.1:{running.port}"
        async with s.post(running.url + "/v1/chat/completions", json=CHAT, headers={"Origin": own}) as resp:
            assert resp.status == 200


async def test_configured_origin(serve) -> None:
    security = SecuritySettings(allowed_hosts=("llm.lan",), allowed_origins=("http://WebUI.lan:3000",))
    running = await serve(make_config(fake_model("a"), security=security))
    async with aiohttp.ClientSession() as s:
        async with s.get(running.url + "/v1/models", headers={"Origin": "http://webui.lan:3000"}) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == "http://webui.lan:3000"
        async with s.get(running.url + "/v1/models", headers={"Origin": "http://webui.lan:3001"}) as resp:
            assert resp.status == 403
        # a page served by this supervisor under an allowed name is same-origin
        async with s.get(running.url + "/v1/models", headers={"Host": "llm.lan:8080",
                                                            "Origin": "http://llm.lan:8080"}) as resp:
            assert resp.status == 200


async def test_preflight_is_answered_by_the_supervisor(serve) -> None:
    running = await serve(make_config(fake_model("a"), security=SecuritySettings()))
    async with aiohttp.ClientSession() as s:
        await s.post(running.url + "/v1/chat/completions", json=CHAT)
        assert await running_models(s, running.url) == ["a"]
        ask = {"Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"}
        async with s.options(running.url + "/v1/chat/completions",
                             headers={"Origin": "http://localhost:3000", **ask}) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]
            allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
            assert {"authorization", "content-type", "x-stainless-os"} <= allowed
        async with s.options(running.url + "/v1/chat/completions", headers={"Origin": EVIL, **ask}) as resp:
            assert resp.status == 403
            assert not [h for h in resp.headers if h.lower().startswith("access-control-")]
        # OPTIONS never reaches a route: /unload takes every method and would unload
        async with s.options(running.url + "/unload", headers={"Origin": "http://localhost:3000", **ask}) as resp:
            assert resp.status == 204
        async with s.options(running.url + "/unload") as resp:
            assert resp.status == 204
        async with s.options(running.url + "/upstream/a/slots", headers={"Origin": "http://localhost:3000", **ask}):
            pass
        assert await running_models(s, running.url) == ["a"]


async def test_a_page_must_send_json_but_curl_may_send_a_form(serve) -> None:
    running = await serve(make_config(fake_model("a")))
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/v1/chat/completions", data=json.dumps(CHAT),
                          headers={"Origin": "http://localhost:3000", "Content-Type": "text/plain"}) as resp:
            assert resp.status == 415
            assert error_of(await resp.json())["code"] == "unsupported_media_type"
        assert await running_models(s, running.url) == []
        # `curl -d '{...}'` sends a form content type and no Origin: it keeps working
        async with s.post(running.url + "/v1/chat/completions", data=json.dumps(CHAT),
                          headers={"Content-Type": "application/x-www-form-urlencoded"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["x_received"]["messages"] == CHAT["messages"]


async def test_cross_site_subresources_without_origin_are_refused(serve) -> None:
    running = await serve(make_config(fake_model("a")))
    async with aiohttp.ClientSession() as s:
        await s.post(running.url + "/v1/chat/completions", json=CHAT)
        img = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
        async with s.get(running.url + "/unload", headers=img) as resp:
            assert resp.status == 403
            assert error_of(await resp.json())["code"] == "cross_site_refused"
        link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
        async with s.get(running.url + "/unload", headers=link) as resp:
            assert resp.status == 403
        assert await running_models(s, running.url) == ["a"]
        async with s.get(running.url + "/ui/", headers=link) as resp:  # a link to the dashboard works
            assert resp.status == 200


# ---------------------------------------------------------------- API keys


async def test_keys_bearer_basic_and_header(serve) -> None:
    running = await serve(make_config(fake_model("a"), api_keys=("sk-one", "sk-two")))
    basic = base64.b64encode(b"anyone:sk-two").decode()
    async with aiohttp.ClientSession() as s:
        for headers in ({"Authorization": "Bearer sk-one"}, {"authorization": "bearer sk-two"},
                        {"x-api-key": "sk-one"}, {"Authorization": f"Basic {basic}"}):
            async with s.get(running.url + "/v1/models", headers=headers) as resp:
                assert resp.status == 200, headers
        wrong_basic = base64.b64encode(b"sk-two:nope").decode()  # the key is the password, not the user
        for headers in ({}, {"Authorization": "Bearer sk-on"}, {"Authorization": "Bearer sk-one2"},
                        {"Authorization": f"Basic {wrong_basic}"}, {"Authorization": "Basic !!!"},
                        {"x-api-key": ""}):
            async with s.get(running.url + "/v1/models", headers=headers) as resp:
                assert resp.status == 401, headers
                body = await resp.json()
                assert body["error"]["code"] == "invalid_api_key"
                assert "WWW-Authenticate" not in resp.headers  # no browser login prompt over the dashboard
        # a preflight carries no key and must still be answered
        async with s.options(running.url + "/v1/models", headers={"Origin": "http://localhost:3000",
                                                                  "Access-Control-Request-Method": "GET"}) as resp:
            assert resp.status == 204


def test_key_compare_and_presented_keys() -> None:
    policy = HttpPolicy.build((), (), ("k1", "a-much-longer-key"), "127.0.0.1")
    assert policy.key_valid(["x", "a-much-longer-key"])
    assert not policy.key_valid(["k", "k12", "a-much-longer-ke", ""])
    assert not HttpPolicy.build((), (), (), None).key_valid(["anything"])
    basic = base64.b64encode(b"u:p:with:colons").decode()
    assert presented_keys({"Authorization": f"Basic {basic}", "x-api-key": "h"}) == ["p:with:colons", "h"]
    assert presented_keys({"Authorization": "Token abc"}) == []


# ---------------------------------------------------------------- bodies


async def test_oversized_bodies_get_413_and_the_model_keeps_serving(serve) -> None:
    running = await serve(make_config(fake_model("a"), security=SecuritySettings(max_body_mib=1)))
    big = json.dumps({**CHAT, "pad": "x" * (2 << 20)}).encode()

    async def chunked():  # no Content-Length: the cap holds while reading
        for i in range(0, len(big), 1 << 16):
            yield big[i:i + (1 << 16)]

    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/v1/chat/completions", data=big,
                          headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 413
            error = error_of(await resp.json())
            assert error["code"] == "body_too_large" and "x-security.maxBodyMiB" in error["message"]
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/v1/chat/completions", data=chunked(),
                          headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 413
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200


async def test_a_reload_changes_the_policy_from_the_next_request(serve) -> None:
    config = make_config(fake_model("a"))
    running = await serve(config)
    big = json.dumps({**CHAT, "pad": "x" * (2 << 20)}).encode()

    async def chunked():
        yield big

    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/v1/chat/completions", data=chunked()) as resp:
            assert resp.status == 200
    # what a reload does: the new config is in force from the next request
    async with aiohttp.ClientSession() as s:
        async with s.get(running.url + "/v1/models", headers={"Host": "nas.lan"}) as resp:
            assert resp.status == 421
    running.sup.config = dataclasses.replace(
        config, security=SecuritySettings(max_body_mib=1, allowed_hosts=("nas.lan",))
    )
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/v1/chat/completions", data=chunked()) as resp:
            assert resp.status == 413
            assert "larger than 1 MiB" in error_of(await resp.json())["message"]
        async with s.get(running.url + "/v1/models", headers={"Host": "nas.lan"}) as resp:
            assert resp.status == 200


async def test_invalid_and_deeply_nested_json_get_400_never_500(serve) -> None:
    running = await serve(make_config(fake_model("a"), security=SecuritySettings(max_json_depth=32)))
    async with aiohttp.ClientSession() as s:
        cases = {
            b'{"model": "a", "messages": [': "invalid_json",
            b'{"model": "a"} trailing': "invalid_json",
            b'{"model": "a", "x": ' + b"[" * 40 + b"]" * 40 + b"}": "json_too_deep",
            b'{"model": "a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}": "json_too_deep",
            b"\xff\xfe{": "invalid_json",
        }
        for body, code in cases.items():
            async with s.post(running.url + "/v1/chat/completions", data=body,
                              headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 400, body[:40]
                error = error_of(await resp.json())
                assert error["code"] == code
        # a deep message that is within the limit goes through, strings full of brackets too
        fine = {**CHAT, "x": json.loads("[" * 20 + "]" * 20), "y": "[{" * 1000}
        async with s.post(running.url + "/v1/chat/completions", json=fine) as resp:
            assert resp.status == 200
            assert (await resp.json())["x_received"]["y"] == fine["y"]
        assert await running_models(s, running.url) == ["a"]


def test_json_depth_and_parse_body() -> None:
    assert json_depth(b'{"a": [1, {"b": []}], "c": "]]]{{"}', 99) == 4
    assert json_depth(b"[" * 50 + b"]" * 50, 10) == 10  # counting stops early
    assert json_depth(b'"just a string"', 5) == 0
    payload, model = parse_body("text/plain", b'{"model": "m"}')  # curl -d, no Origin
    assert model == "m" and payload == {"model": "m"}
    assert parse_body("text/plain", b"hello") == (None, None)
    with pytest.raises(RequestError) as info:
        parse_body("application/json", b"[" * 10 + b"]" * 10, max_depth=5)
    assert info.value.status == 400 and info.value.code == "json_too_deep"


async def test_a_client_that_trickles_its_body_is_cut_off(serve) -> None:
    """A raw socket sends headers and then a byte now and then: the supervisor answers 408 once
    bodyTimeout has passed and meanwhile serves everyone else."""
    running = await serve(make_config(fake_model("a"), security=SecuritySettings(body_timeout=1)))
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
    await writer.drain()

    async def trickle() -> None:
        for _ in range(100):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.2)

    trickling = asyncio.ensure_future(trickle())
    try:
        async with aiohttp.ClientSession() as s:  # not held up by the slow client
            async with s.post(running.url + "/v1/chat/completions", json=CHAT) as resp:
                assert resp.status == 200
        head = await asyncio.wait_for(reader.read(65536), timeout=30)
        assert head.startswith(b"HTTP/1.1 408"), head[:200]
        assert b"x-security.bodyTimeout" in head
        assert await asyncio.wait_for(reader.read(), timeout=30) == b""  # and the connection is closed
    finally:
        trickling.cancel()
        writer.close()


@pytest.mark.parametrize("path", ["lean relay", "aiohttp client"])
async def test_a_client_that_stops_reading_a_stream_frees_the_model(serve, caplog, path: str) -> None:
    """A raw socket asks for a long stream and never reads it. Once the client's socket and the
    supervisor's buffers are full, writeTimeout later both connections are closed, the error is
    counted and logged, and the model's only slot serves the next request. ``responseHeader``
    sends the request through aiohttp's client (proxy.forward) instead of the lean relay."""
    timeouts = Timeouts(response_header=30) if path == "aiohttp client" else Timeouts()
    model = fake_model("a", "--tokens", "200000", concurrency_limit=1, timeouts=timeouts)
    running = await serve(make_config(model, security=SecuritySettings(write_timeout=1)))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # full after a few tokens
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", running.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    body = json.dumps({**CHAT, "stream": True}).encode()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
    await writer.drain()
    state = running.sup.scheduler.models
    try:
        for _ in range(600):  # the stream is admitted, then cut off
            if "a" in state and not state["a"].inflight and running.sup.metrics.errors.values:
                break
            await asyncio.sleep(0.05)
        assert not state["a"].inflight
        async with aiohttp.ClientSession() as s:
            async with s.post(running.url + "/v1/chat/completions", json=CHAT) as resp:
                assert resp.status == 200  # not 429: the slot is free
            async with s.get(running.url + "/metrics") as resp:
                assert 'homelab_errors_total{model="a",reason="write_timeout"} 1' in await resp.text()
        assert any("client" in r.message and "x-security.writeTimeout" in r.message and r.message.startswith("a:")
                   for r in caplog.records)
        received = b""  # what the client gets when it reads at last: a cut stream, then the end
        while data := await asyncio.wait_for(reader.read(1 << 20), timeout=30):
            received += data
        assert received.startswith(b"HTTP/1.1 200") and b"[DONE]" not in received
    finally:
        writer.close()


# ---------------------------------------------------------------- config


def test_x_security_config(tmp_path: Path) -> None:
    config = parse_config(
        "x-security:\n  allowedHosts: [NAS.lan]\n  allowedOrigins: ['http://webui.lan:3000']\n"
        "  maxBodyMiB: 8\n  maxJsonDepth: 16\n  bodyTimeout: 5\n  writeTimeout: 7\nmodels: {}\n"
    )
    assert config.security == SecuritySettings(("nas.lan",), ("http://webui.lan:3000",), 8, 16, 5.0, 7.0)
    with pytest.raises(ConfigError, match=r"<config>:3: x-security.allowedOrigins\[0\]: '\*' lets a page .*apiKeys"):
        parse_config("models: {}\nx-security:\n  allowedOrigins: ['*']\n")
    assert parse_config("apiKeys: [k]\nx-security:\n  allowedOrigins: ['*']\n").security.allowed_origins == ("*",)
    with pytest.raises(ConfigError, match=r"'http://webui.lan/path' is not a web origin"):
        parse_config("x-security:\n  allowedOrigins: ['http://webui.lan/path']\n")
    with pytest.raises(ConfigError, match=r"x-security.maxBodyMiB: must be at least 1"):
        parse_config("x-security:\n  maxBodyMiB: 0\n")
    with pytest.raises(ConfigError, match=r"did you mean 'allowedHosts'"):
        parse_config("x-security:\n  allowedHost: [a]\n")


def test_normalize_origin() -> None:
    assert normalize_origin("HTTP://WebUI.lan:80") == "http://webui.lan"
    assert normalize_origin("https://x.lan:8443/") == "https://x.lan:8443"
    assert normalize_origin("http://[::1]:3000") == "http://[::1]:3000"
    for bad in ("null", "file:///etc", "http://", "http://a.lan/x", "http://a.lan:99999"):
        assert normalize_origin(bad) is None


async def test_multipart_uploads_are_left_to_their_route_but_capped(serve) -> None:
    """Multipart bodies are not read by the front door (routes stream files to the backend), but
    their announced length is held to the cap, and a page may send them only where files go."""
    running = await serve(make_config(fake_model("a"), security=SecuritySettings(max_body_mib=1)))

    def form(size: int) -> aiohttp.FormData:
        data = aiohttp.FormData()
        data.add_field("model", "a")
        data.add_field("file", b"\0" * size, filename="clip.wav", content_type="audio/wav")
        return data

    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/v1/chat/completions", data=form(1000)) as resp:
            assert resp.status == 200  # no Origin (an SDK): reaches the backend
            assert (await resp.json())["x_received"]["x_raw_bytes"] > 1000
        async with s.post(running.url + "/v1/chat/completions", data=form(2 << 20)) as resp:
            assert resp.status == 413
        async with s.post(running.url + "/v1/chat/completions", data=form(10),
                          headers={"Origin": "http://localhost:3000"}) as resp:
            assert resp.status == 415  # chat takes JSON from a page


def upload_parts(file_size: int, *, model_first: bool = True) -> tuple[str, list[bytes]]:
    """A multipart body (model field, then a file, or the other way round) in 64 KiB pieces."""
    boundary = "upload-boundary"
    model = b'--upload-boundary\r\nContent-Disposition: form-data; name="model"\r\n\r\na\r\n'
    file = (b'--upload-boundary\r\nContent-Disposition: form-data; name="file"; filename="clip.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n" + b"\0" * file_size + b"\r\n")
    body = (model + file if model_first else file + model) + b"--upload-boundary--\r\n"
    return f"multipart/form-data; boundary={boundary}", [body[i:i + (1 << 16)] for i in range(0, len(body), 1 << 16)]


async def test_a_streamed_upload_is_held_to_the_cap_whatever_its_length_said(serve) -> None:
    """A chunked upload (no Content-Length) is counted as it arrives: over maxBodyMiB it gets 413,
    whether the cap is broken while looking for the model field or after the backend's request
    started (that request is aborted); one under the cap reaches the backend whole."""
    model = fake_model("a", concurrency_limit=1)
    running = await serve(make_config(model, security=SecuritySettings(max_body_mib=1)))

    async def send(parts: list[bytes]):
        for part in parts:
            yield part

    async with aiohttp.ClientSession() as s:
        kind, parts = upload_parts(500 << 10)
        async with s.post(running.url + "/v1/audio/transcriptions", data=send(parts),
                          headers={"Content-Type": kind}) as resp:
            assert resp.status == 200
            assert (await resp.json())["x_raw_bytes"] == sum(map(len, parts))
        for model_first in (True, False):
            kind, parts = upload_parts(2 << 20, model_first=model_first)
            async with s.post(running.url + "/v1/audio/transcriptions", data=send(parts),
                              headers={"Content-Type": kind}) as resp:
                assert resp.status == 413, model_first
                error = error_of(await resp.json())
                assert error["code"] == "body_too_large" and "x-security.maxBodyMiB" in error["message"]
        assert not running.sup.scheduler.models["a"].inflight
        async with s.post(running.url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
        async with s.get(running.url + "/metrics") as resp:
            assert 'homelab_errors_total{model="a",reason="body_too_large"} 1' in await resp.text()


async def test_an_upload_that_stalls_between_pieces_is_cut_off(serve) -> None:
    """A raw socket sends a chunked upload's model field and the start of its file, then nothing:
    bodyTimeout later it gets 408 and its connection closes, the backend's request is aborted,
    and the model's only slot serves the next request."""
    running = await serve(make_config(fake_model("a", concurrency_limit=1), security=SecuritySettings(body_timeout=1)))
    kind, parts = upload_parts(200 << 10)
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    writer.write(f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode())
    for part in parts[:2]:
        writer.write(b"%x\r\n%b\r\n" % (len(part), part))
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(), timeout=30)  # read() waits for the close
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"x-security.bodyTimeout" in answer and b"next piece of the upload" in answer
        assert not running.sup.scheduler.models["a"].inflight
        async with aiohttp.ClientSession() as s:
            async with s.post(running.url + "/v1/chat/completions", json=CHAT) as resp:
                assert resp.status == 200
    finally:
        writer.close()
