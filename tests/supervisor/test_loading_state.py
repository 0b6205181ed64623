"""sendLoadingState (#7): loading messages only where llama-swap sends them, in its shape."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from homelab.supervisor.loading import LOADING_ROUTES, wants_loading_state

from .conftest import fake_model, make_config


def test_which_requests_get_loading_messages() -> None:
    stream = {"model": "a", "stream": True}
    assert wants_loading_state("/v1/chat/completions", stream, True)
    assert not wants_loading_state("/v1/chat/completions", stream, False)  # setting off
    assert not wants_loading_state("/v1/chat/completions", {"model": "a"}, True)  # not streaming
    assert not wants_loading_state("/v1/chat/completions", {"model": "a", "stream": "true"}, True)
    assert not wants_loading_state("/v1/chat/completions", None, True)  # not JSON
    for path in ("/v1/completions", "/completion", "/v1/messages", "/v1/responses", "/infill", "/v1/embeddings"):
        assert not wants_loading_state(path, stream, True), path
    assert LOADING_ROUTES == ("/v1/chat/completions",)


def events(text: str) -> list[Any]:
    out: list[Any] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def post(s: aiohttp.ClientSession, url: str, path: str, body: dict[str, Any]) -> tuple[int, str, str]:
    async with s.post(url + path, json=body) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), (await resp.read()).decode()


async def test_streaming_chat_gets_the_banner_then_the_answer(serve) -> None:
    running = await serve(make_config(fake_model("a", "--load-time", "1.2", "--tokens", "3", send_loading_state=True)))
    async with aiohttp.ClientSession() as s:
        status, ctype, text = await post(s, running.url, "/v1/chat/completions", {"model": "a", "stream": True})
    assert status == 200 and ctype.startswith("text/event-stream")
    evs = events(text)
    reasoning = "".join(e["choices"][0]["delta"].get("reasoning_content", "") for e in evs[:-1]
                        if isinstance(e, dict))
    content = [e["choices"][0]["delta"].get("content") for e in evs if isinstance(e, dict)]
    assert reasoning.startswith("━━━━━\nllama-swap loading model: a\n")
    assert "\nDone! (" in reasoning and reasoning.endswith("s)\n━━━━━\n \n")
    assert "." in reasoning.split("\n")[2]  # at least one progress tick during the 1.2 s load
    assert [c for c in content if c] == ["t0 ", "t1 ", "t2 "]
    # every loading chunk comes before the first token, and the stream ends normally
    first_token = next(i for i, e in enumerate(evs) if isinstance(e, dict) and e["choices"][0]["delta"].get("content"))
    assert all("reasoning_content" in e["choices"][0]["delta"] for e in evs[:first_token])
    assert evs[-1] == "[DONE]"


async def test_no_loading_messages_for_other_routes_or_non_streaming(serve) -> None:
    config = make_config(fake_model("a", "--load-time", "1.2", "--tokens", "2", send_loading_state=True), max_wait=0)
    running = await serve(config)
    async with aiohttp.ClientSession() as s:
        status, ctype, text = await post(s, running.url, "/v1/chat/completions", {"model": "a"})
        assert status == 200 and ctype.startswith("application/json")
        assert "loading model" not in text and json.loads(text)["x_server"] == "a"
        async with s.post(running.url + "/unload") as resp:
            assert resp.status == 200
        status, ctype, text = await post(s, running.url, "/v1/completions", {"model": "a", "stream": True})
    assert status == 200 and "loading model" not in text and "reasoning_content" not in text
    assert events(text)[-1] == "[DONE]"


async def test_failed_load_is_reported_in_band_and_ends_the_stream(serve) -> None:
    # --hang-health: /health never answers, so the load can only end with the crash at 1.2 s
    running = await serve(make_config(fake_model("a", "--load-time", "1.2", "--crash-on-start", "--hang-health",
                                                 send_loading_state=True)))
    async with aiohttp.ClientSession() as s:
        status, _, text = await post(s, running.url, "/v1/chat/completions", {"model": "a", "stream": True})
    evs = events(text)
    assert status == 200  # committed before the load failed
    assert "llama-swap loading model: a" in evs[0]["choices"][0]["delta"]["reasoning_content"]
    assert "Done!" not in text
    assert evs[-1]["error"]["code"] == "model_unavailable" and "exited" in evs[-1]["error"]["message"]
    # the error is the last event: no [DONE], which would tell a client the answer was complete
    assert "[DONE]" not in evs
