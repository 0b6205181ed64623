"""llama-swap's model-dispatched routes: one test per route, with the fake backend reporting the
path and the body (size, SHA-256) it received. Audio, rerank and count_tokens calls go through
the ``openai`` client, as the users who come from llama-swap make them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from typing import Any

import aiohttp
import httpx2
import pytest
from openai import AsyncOpenAI

from homelab.supervisor import inference

from .conftest import fake_model, make_config


class Sent:
    """The bodies the openai client put on the wire (read from its own request objects)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def hook(self, request: httpx2.Request) -> None:
        self.bodies.append(await request.aread())


def client(url: str, sent: Sent | None = None) -> AsyncOpenAI:
    hooks = {"request": [sent.hook]} if sent else {}
    return AsyncOpenAI(base_url=url, api_key="unused", max_retries=0,
                       http_client=httpx2.AsyncClient(event_hooks=hooks))


def received(answer: Any) -> dict[str, Any]:
    """The fake backend's report, from an openai answer object (extra fields) or raw bytes."""
    if isinstance(answer, (bytes, bytearray)):
        return json.loads(answer)
    if isinstance(answer, dict):
        return answer
    return answer.model_extra or {}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_transcription_multipart_reaches_backend_byte_identical(serve) -> None:
    running = await serve(make_config(fake_model("whisper")))
    audio = os.urandom(3 << 20)  # several reads of the client's stream: the rest is streamed on
    sent = Sent()
    async with client(running.url + "/v1", sent) as c:
        answer = await c.audio.transcriptions.create(model="whisper", file=("a.wav", audio))
    got = received(answer)
    assert answer.text == "fake transcript"
    assert got["x_path"] == "/v1/audio/transcriptions" and got["x_server"] == "whisper"
    assert got["x_raw_bytes"] == len(sent.bodies[0]) and got["x_sha256"] == sha(sent.bodies[0])
    assert audio in sent.bodies[0]


async def test_image_edit_multipart_with_file_before_model(serve) -> None:
    """A client that sends the file first: buffered up to the model field, still byte-identical."""
    running = await serve(make_config(fake_model("sd")))
    image = os.urandom(1 << 20)
    form = aiohttp.FormData()
    form.add_field("image", image, filename="a.png", content_type="image/png")
    form.add_field("prompt", "a cat")
    form.add_field("model", "sd")
    writer = form()
    raw = await _form_bytes(writer)
    async with aiohttp.ClientSession() as s, s.post(running.url + "/v1/images/edits", data=raw,
                                                    headers={"Content-Type": writer.content_type}) as resp:
        got = await resp.json()
    assert resp.status == 200, got
    assert got["x_path"] == "/v1/images/edits" and got["x_sha256"] == sha(raw)


async def _form_bytes(writer: Any) -> bytes:
    chunks: list[bytes] = []

    class Sink:
        async def write(self, data: bytes) -> None:
            chunks.append(bytes(data))

    await writer.write(Sink())
    return b"".join(chunks)


async def test_image_edit_with_openai_client(serve) -> None:
    running = await serve(make_config(fake_model("sd")))
    sent = Sent()
    async with client(running.url + "/v1", sent) as c:
        raw = await c.images.with_raw_response.edit(model="sd", image=("a.png", os.urandom(4096)), prompt="x")
    got = json.loads(raw.content)
    assert got["x_path"] == "/v1/images/edits" and got["x_sha256"] == sha(sent.bodies[0])


async def test_multipart_model_from_query(serve) -> None:
    running = await serve(make_config(fake_model("whisper")))
    form = aiohttp.FormData()
    form.add_field("file", b"RIFF" + os.urandom(5000), filename="a.wav")
    writer = form()
    raw = await _form_bytes(writer)
    async with aiohttp.ClientSession() as s, s.post(running.url + "/v1/audio/transcriptions?model=whisper",
                                                    data=raw, headers={"Content-Type": writer.content_type}) as resp:
        got = await resp.json()
    assert got["x_path"] == "/v1/audio/transcriptions?model=whisper" and got["x_sha256"] == sha(raw)


async def test_multipart_model_field_after_the_limit(serve, monkeypatch) -> None:
    monkeypatch.setattr(inference, "FORM_LIMIT", 64 << 10)
    running = await serve(make_config(fake_model("whisper")))
    form = aiohttp.FormData()
    form.add_field("file", os.urandom(256 << 10), filename="a.wav")
    form.add_field("model", "whisper")
    writer = form()
    raw = await _form_bytes(writer)
    async with aiohttp.ClientSession() as s, s.post(running.url + "/v1/audio/transcriptions", data=raw,
                                                    headers={"Content-Type": writer.content_type}) as resp:
        got = await resp.json()
    assert resp.status == 413 and "before the files" in got["error"]["message"]
    assert running.sup.status_of("whisper").value == "stopped"
    # with ?model= the field need not be found: the whole form still goes through as it is
    async with aiohttp.ClientSession() as s, s.post(running.url + "/v1/audio/transcriptions?model=whisper",
                                                    data=raw, headers={"Content-Type": writer.content_type}) as resp:
        got = await resp.json()
    assert resp.status == 200 and got["x_sha256"] == sha(raw)


async def test_speech(serve) -> None:
    running = await serve(make_config(fake_model("tts")))
    async with client(running.url + "/v1") as c:
        answer = await c.audio.speech.create(model="tts", voice="alloy", input="hello")
    got = received(answer.content)
    assert got["x_path"] == "/v1/audio/speech"
    assert got["x_received"] == {"model": "tts", "voice": "alloy", "input": "hello"}


async def test_voices_post_multipart(serve) -> None:
    running = await serve(make_config(fake_model("tts")))
    sent = Sent()
    async with client(running.url + "/v1", sent) as c:
        raw = await c.audio.voices.with_raw_response.create(name="me", model="tts", consent="yes",
                                                            audio_sample=("me.wav", os.urandom(2048)))
    got = json.loads(raw.content)
    assert got["x_path"] == "/v1/audio/voices" and got["x_sha256"] == sha(sent.bodies[0])


@pytest.mark.parametrize("route", ["/v1/audio/voices", "/props", "/sdapi/v1/loras"])
async def test_model_get_routes(serve, route: str) -> None:
    running = await serve(make_config(fake_model("m")))
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{running.url}{route}?model=m") as resp:
            got = await resp.json()
        assert resp.status == 200 and got["x_path"] == f"{route}?model=m"
        async with s.get(running.url + route) as resp:
            missing = await resp.json()
    assert resp.status == 400 and "?model=" in missing["error"]["message"]


async def test_image_generation(serve) -> None:
    running = await serve(make_config(fake_model("sd")))
    async with client(running.url + "/v1") as c:
        raw = await c.images.with_raw_response.generate(model="sd", prompt="a cat")
    got = json.loads(raw.content)
    assert got["x_path"] == "/v1/images/generations" and got["x_received"]["prompt"] == "a cat"


async def test_count_tokens(serve) -> None:
    running = await serve(make_config(fake_model("claude-ish")))
    body = {"model": "claude-ish", "messages": [{"role": "user", "content": "hi"}]}
    async with client(running.url + "/v1") as c:
        answer = await c.post("/messages/count_tokens", body=body, cast_to=object)
    got = received(answer)
    assert got["input_tokens"] == 7 and got["x_path"] == "/v1/messages/count_tokens"
    assert got["x_received"] == body


@pytest.mark.parametrize("route", ["/rerank", "/reranking", "/v1/rerank", "/v1/reranking"])
async def test_rerank_routes(serve, route: str) -> None:
    running = await serve(make_config(fake_model("reranker")))
    body = {"model": "reranker", "query": "q", "documents": ["a", "b"]}
    async with client(running.url) as c:  # the openai client has no rerank: its generic post
        answer = await c.post(route, body=body, cast_to=object)
    got = received(answer)
    assert got["x_path"] == route and got["x_received"] == body and got["results"][0]["index"] == 0


@pytest.mark.parametrize("route", sorted(inference.STRIPPED_ROUTES))
async def test_stripped_routes_reach_backend_without_prefix(serve, route: str) -> None:
    running = await serve(make_config(fake_model("m")))
    body = {"model": "m", "input": "x"}
    async with aiohttp.ClientSession() as s, s.post(running.url + route + "?x=1", json=body) as resp:
        got = await resp.json()
    prefix = inference.STRIPPED_ROUTES[route]
    assert resp.status == 200 and got["x_path"] == route.removeprefix(prefix) + "?x=1"
    assert got["x_received"] == body


@pytest.mark.parametrize("route", ["/sdapi/v1/txt2img", "/sdapi/v1/img2img"])
async def test_sdapi_routes(serve, route: str) -> None:
    running = await serve(make_config(fake_model("sd")))
    async with aiohttp.ClientSession() as s, s.post(running.url + route, json={"model": "sd", "steps": 2}) as resp:
        got = await resp.json()
    assert got["x_path"] == route and got["x_received"] == {"model": "sd", "steps": 2}


async def test_versionless_chat_with_openai_client(serve) -> None:
    running = await serve(make_config(fake_model("m")))
    async with client(running.url + "/v") as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    got = json.loads(raw.content)
    assert got["x_path"] == "/chat/completions" and got["x_received"]["messages"][0]["content"] == "hi"


async def test_models_without_version(serve) -> None:
    running = await serve(make_config(fake_model("a"), fake_model("b")))
    async with aiohttp.ClientSession() as s:
        async with s.get(running.url + "/models") as resp:
            plain = await resp.json()
        async with s.get(running.url + "/v1/models") as resp:
            versioned = await resp.json()
    assert [m["id"] for m in plain["data"]] == ["a", "b"] and plain == versioned


async def test_use_model_name_renames_form_field_and_json(serve) -> None:
    running = await serve(make_config(fake_model("whisper", use_model_name="large-v3"),
                                      aliases={"stt": "whisper"}))
    sent = Sent()
    async with client(running.url + "/v1", sent) as c:
        answer = await c.audio.transcriptions.create(model="stt", file=("a.wav", os.urandom(10000)))
        speech = await c.audio.speech.create(model="stt", voice="alloy", input="x")
    got = received(answer)
    expected = sent.bodies[0].replace(b"\r\n\r\nstt\r\n", b"\r\n\r\nlarge-v3\r\n", 1)
    assert expected != sent.bodies[0] and got["x_sha256"] == sha(expected)
    assert got["x_raw_bytes"] == len(expected)
    assert received(speech.content)["x_received"]["model"] == "large-v3"


async def test_without_use_model_name_the_requested_name_is_forwarded(serve) -> None:
    """llama-swap forwards the model field as the client wrote it (an alias stays the alias)."""
    running = await serve(make_config(fake_model("whisper"), aliases={"stt": "whisper"}))
    sent = Sent()
    async with client(running.url + "/v1", sent) as c:
        answer = await c.audio.transcriptions.create(model="stt", file=("a.wav", os.urandom(1000)))
        speech = await c.audio.speech.create(model="stt", voice="alloy", input="x")
    assert received(answer)["x_sha256"] == sha(sent.bodies[0])
    assert received(speech.content)["x_received"]["model"] == "stt"


async def test_upstream_log_stream_has_every_backend_and_no_supervisor_lines(serve) -> None:
    """llama-swap's /logs/stream/upstream: the backends' output as they wrote it (no prefix),
    without the supervisor's own log."""
    running = await serve(make_config(fake_model("a"), fake_model("b")))
    async with aiohttp.ClientSession() as s:
        async with s.get(running.url + "/logs/stream/upstream") as stream:
            for model in ("a", "b"):
                async with s.post(running.url + "/v1/rerank", json={"model": model}) as resp:
                    assert resp.status == 200
            seen = b""
            while seen.count(b"all slots are idle") < 2:
                seen += await asyncio.wait_for(stream.content.readany(), 5)
    text = seen.decode()
    assert "fake llama-server a pid" in text and "fake llama-server b pid" in text
    assert "[a]" not in text and "starting model" not in text
    assert "starting model a" in running.sup.all_log.contents().decode()
