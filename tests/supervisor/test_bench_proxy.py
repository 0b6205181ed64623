"""``homelab bench proxy`` end to end with the real llama-server, and its relay floor: the front
that only relays (homelab.bench.relay_floor), measured beside the supervisor."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from homelab.address import free_loopback_port
from homelab.bench.supervisor import _wait_healthy
from homelab.cli import main

from .test_relay import serve_route

EVENTS = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'


async def test_the_relay_floor_sends_the_backends_key_from_its_environment_never_the_clients(
    tmp_path: Path,
) -> None:
    seen: list[tuple[str | None, str | None]] = []

    async def backend(request: web.Request) -> web.StreamResponse:
        seen.append((request.headers.get("Authorization"), request.headers.get("x-api-key")))
        if (await request.json()).get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(EVENTS)
            await response.write_eof()
            return response
        return web.json_response({"id": "x", "usage": {"prompt_tokens": 2, "completion_tokens": 1}})

    async with serve_route(backend) as backend_url:
        port = free_loopback_port()
        argv = [sys.executable, "-m", "homelab.bench.relay_floor", str(port), backend_url]
        env = {**os.environ, "LLAMA_API_KEY": "backend-secret"}
        with (tmp_path / "floor.log").open("wb") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as s:
                await _wait_healthy(s, url, proc, tmp_path / "floor.log", timeout=20, poll=0.05)
                client_key = {"Authorization": "Bearer client-key"}
                body = {"model": "m0", "messages": []}
                async with s.post(url + "/v1/chat/completions", json=body, headers=client_key) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["usage"] == {"prompt_tokens": 2, "completion_tokens": 1}
                async with s.post(
                    url + "/v1/chat/completions", json={**body, "stream": True}, headers=client_key
                ) as resp:
                    assert resp.status == 200
                    assert await resp.read() == EVENTS
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    assert "backend-secret" not in " ".join(argv)
    assert seen == [("Bearer backend-secret", "backend-secret")] * 2


def _row(table: str, front: str) -> list[str]:
    found = re.search(rf"^\s+(?:1 )?{front}\s+(.+)$", table, re.M)
    assert found, f"no {front!r} row in:\n{table}"
    return found.group(1).split()


def test_bench_proxy_measures_the_relay_floor_beside_the_supervisor_and_router_mode(
    llama_server_bin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "proxy", "--server", str(llama_server_bin), "--server-args", "-c 512 -np 2 -t 1"]
    assert main([*argv, "--requests", "3", "--clients", "1", "--tokens", "4", "--rounds", "1"]) == 0
    short, streaming = capsys.readouterr().out.split("\nstreaming, tokens/s")
    for front in ("supervisor", "relay floor", "router"):
        row = _row(short, front)
        direct, through, added = (float(v) for v in row[:3])
        assert direct > 0 and through > 0 and added == pytest.approx(through - direct, abs=0.011)
        assert row[-1] == "us" and float(row[-2]) > 0  # the front's CPU per request, read from /proc
        assert _row(streaming, front)[-1] == "4.0"  # every stream was 4 tokens long, on every path
