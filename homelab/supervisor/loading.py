"""``sendLoadingState``: progress text streamed to a client while its model loads.

What llama-swap does (checked against its ``internal/router/loading.go`` and the older
``proxy/process.go``): only for a *streaming* request (JSON ``"stream": true``) to
``/v1/chat/completions`` whose model is not ready, it answers 200 with ``text/event-stream`` at
once and sends chat-completion chunks whose ``delta`` carries only ``reasoning_content``: a
banner ``━━━━━`` / ``llama-swap loading model: <id>``, a ``.`` every tick, then ``Done! (1.23s)``
and ``━━━━━``; then the backend's own stream follows in the same response. A load that fails is
reported in-band as a ``data: {"error": ...}`` frame followed by ``data: [DONE]`` (the 200 is
already sent); we send the same error frame but end the stream without ``[DONE]``, as every
stream that fails does here (:mod:`.http_errors` says why).

We do the same, on the same route only, and never for non-streaming requests: the other streaming
APIs have no field for side text (``/v1/completions`` and ``/completion`` would splice it into
the generated text; Anthropic ``/v1/messages`` and ``/v1/responses`` streams must begin with their
own ``message_start`` / ``response.created`` event, which only the backend can produce). The
banner text is llama-swap's, byte for byte, because clients already recognise it (some strip it
from the reasoning they replay, to keep the server's prompt cache matching).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

LOADING_ROUTES = ("/v1/chat/completions",)
RULE = "━━━━━"
TICK = 1.0


def wants_loading_state(path: str, payload: dict[str, Any] | None, enabled: bool) -> bool:
    """True when this request should get loading messages (the model must also be loading)."""
    return enabled and payload is not None and payload.get("stream") is True and path in LOADING_ROUTES


def reasoning_chunk(model_id: str, text: str) -> bytes:
    chunk = {
        "id": "loading",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model_id,
        "choices": [{"index": 0, "delta": {"reasoning_content": text}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"


async def stream_loading_state(request: web.Request, model_id: str, ready: asyncio.Future[Any]) -> web.StreamResponse:
    """Open the SSE response and send progress until ``ready`` completes (admitted or refused);
    the caller then closes the banner (:func:`finish_loading_state`) or ends the stream with the
    error (:func:`.http_errors.end_stream_with_error`)."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    await response.write(reasoning_chunk(model_id, f"{RULE}\nllama-swap loading model: {model_id}\n"))
    while not ready.done():
        await asyncio.wait([ready], timeout=TICK)
        if not ready.done():
            await response.write(reasoning_chunk(model_id, "."))
    return response


async def finish_loading_state(response: web.StreamResponse, model_id: str, began: float) -> None:
    """The model is ready: close the banner; the backend's stream follows."""
    await response.write(reasoning_chunk(model_id, f"\nDone! ({time.monotonic() - began:.2f}s)\n{RULE}\n \n"))
