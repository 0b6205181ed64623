"""End to end with the real llama-server (built by the build stage) on tiny GGUF models."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp
import pytest
from processes import descendants, executable

from homelab.matrix import compile_matrix
from homelab.supervisor.config import Config, ModelConfig
from homelab.supervisor.scheduler import State

from .conftest import free_port
from .helpers import wait_dead
from .test_load import judge

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def real_model(model_id: str, server: Path, gguf: Path, **fields: object) -> ModelConfig:
    port = free_port()
    cmd = (str(server), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-c", "512",
           "-t", "1", "-np", "4", "--no-webui")
    return ModelConfig(id=model_id, cmd=cmd, proxy=f"http://127.0.0.1:{port}", port=port, **fields)  # type: ignore[arg-type]


def backend_pids(server: Path, under: int | None = None) -> set[int]:
    """The live ``server`` processes below ``under`` (default: this test process, where the
    in-process supervisor runs): other test runs on this machine use the same binary."""
    binary = str(server.resolve())
    return {pid for pid in descendants(os.getpid() if under is None else under) if executable(pid) == binary}


async def stream_chat(s: aiohttp.ClientSession, url: str, model: str) -> str:
    async with s.post(url + "/v1/chat/completions", json={
            "model": model, "stream": True, "max_tokens": 8,
            "messages": [{"role": "user", "content": "hello"}]}) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.read()).decode()


async def test_two_models_swap_under_concurrent_streaming(serve, llama_server_bin: Path,
                                                         tiny_models: dict[str, Path]) -> None:
    before = backend_pids(llama_server_bin)
    config = Config(models={m: real_model(m, llama_server_bin, tiny_models[m], ttl=0)
                            for m in ("alpha", "beta")}, health_check_timeout=30, max_wait=0.5)
    running = await serve(config)
    async with aiohttp.ClientSession() as s:
        async def client(i: int) -> list[str]:
            out = []
            for j in range(4):
                out.append(await stream_chat(s, running.url, ("alpha", "beta")[(i + j) % 2]))
            return out

        results = await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(6))), 120)
        for texts in results:
            for text in texts:
                assert text.rstrip().endswith("data: [DONE]") and '"error"' not in text
        async with s.get(running.url + "/v1/models") as resp:
            statuses = {m["id"]: m["status"]["value"] for m in (await resp.json())["data"]}
        async with s.get(running.url + "/running") as resp:
            listed = (await resp.json())["running"]
    # the two models cannot coexist: at most one is loaded, and swaps happened
    assert sorted(statuses.values()) == ["loaded", "unloaded"]
    assert len(listed) == 1 and listed[0]["state"] == "ready"
    swaps = sum(v for k, v in running.sup.metrics.swaps.values.items() if ("outcome", "ready") in k)
    assert swaps >= 2
    assert len(backend_pids(llama_server_bin) - before) == 1


async def test_models_running_unload_and_ttl(serve, llama_server_bin: Path, tiny_models: dict[str, Path]) -> None:
    config = Config(models={"alpha": real_model("alpha", llama_server_bin, tiny_models["alpha"], ttl=1)},
                    health_check_timeout=30)
    running = await serve(config)
    async with aiohttp.ClientSession() as s:
        assert "[DONE]" in await stream_chat(s, running.url, "alpha")
        async with s.get(running.url + "/running") as resp:
            assert [r["model"] for r in (await resp.json())["running"]] == ["alpha"]
        async with s.post(running.url + "/api/models/unload/alpha") as resp:
            assert (await resp.json())["unloaded"] == ["alpha"]
        async with s.get(running.url + "/running") as resp:
            assert (await resp.json())["running"] == []
        assert "[DONE]" in await stream_chat(s, running.url, "alpha")
        for _ in range(100):  # ttl 1 s after the last request
            if running.sup.status_of("alpha") is State.STOPPED:
                break
            await asyncio.sleep(0.05)
        assert running.sup.status_of("alpha") is State.STOPPED


async def test_openai_client(serve, llama_server_bin: Path, tiny_models: dict[str, Path]) -> None:
    # Deferred: openai takes about a second to import, paid only by this test.
    import openai

    config = Config(models={"alpha": real_model("alpha", llama_server_bin, tiny_models["alpha"])},
                    health_check_timeout=30, api_keys=("k",))
    running = await serve(config)
    client = openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="k")
    models = await client.models.list()
    assert [m.id for m in models.data] == ["alpha"]
    reply = await client.chat.completions.create(model="alpha", max_tokens=5,
                                                 messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message is not None and reply.usage is not None
    chunks = [c async for c in await client.chat.completions.create(
        model="alpha", max_tokens=5, stream=True, messages=[{"role": "user", "content": "hi"}])]
    assert chunks and chunks[-1].choices[0].finish_reason is not None
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    bad = openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="wrong")
    with pytest.raises(openai.AuthenticationError):
        await bad.models.list()
    await client.close()
    await bad.close()


async def test_sigkill_of_serve_leaves_no_llama_server(tmp_path: Path, llama_server_bin: Path,
                                                      tiny_models: dict[str, Path]) -> None:
    config = tmp_path / "config.yaml"
    pa, pb = free_port(), free_port()
    config.write_text(textwrap.dedent(f"""\
        groups:
          all: {{swap: false, exclusive: false, members: [alpha, beta]}}
        models:
          alpha:
            cmd: {llama_server_bin} -m {tiny_models['alpha']} --host 127.0.0.1 --port {pa} -c 256 -t 1
            proxy: http://127.0.0.1:{pa}
          beta:
            cmd: {llama_server_bin} -m {tiny_models['beta']} --host 127.0.0.1 --port {pb} -c 256 -t 1
            proxy: http://127.0.0.1:{pb}
        """))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "homelab.cli", "serve", "--config", str(config),
                             "--listen", f"127.0.0.1:{port}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                try:
                    async with s.get(url + "/health") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            for model in ("alpha", "beta"):
                assert "[DONE]" in await stream_chat(s, url, model)
        # only this supervisor's children: other tests may run llama-server at the same time
        started = backend_pids(llama_server_bin, under=proc.pid)
        assert len(started) == 2
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for pid in started:
            assert await wait_dead(pid), f"llama-server {pid} outlived its supervisor"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()




async def test_small_load_with_real_backends_and_kills(serve, llama_server_bin: Path,
                                                       tiny_models: dict[str, Path]) -> None:
    """The load test's smaller sibling on real llama-servers: 60 mixed requests over 3 models and
    2 sets, 3 random SIGKILLs; every request ends cleanly and no llama-server is left."""
    before = backend_pids(llama_server_bin)
    matrix = compile_matrix({"pair": "alpha & beta", "solo": "gamma"})
    config = Config(models={m: real_model(m, llama_server_bin, p) for m, p in tiny_models.items()},
                    matrix=matrix, health_check_timeout=30, max_wait=0.5)
    running = await serve(config)
    rng = random.Random(3)
    outcomes = {"ok": 0, "error": 0}
    jobs = list(range(60))

    async def worker(s: aiohttp.ClientSession) -> None:
        while jobs:
            jobs.pop()
            model, stream = rng.choice(["alpha", "alpha", "beta", "gamma"]), rng.random() < 0.5
            async with s.post(running.url + "/v1/chat/completions", json={
                    "model": model, "stream": stream, "max_tokens": 6,
                    "messages": [{"role": "user", "content": "hi"}]}) as resp:
                body = await resp.read()
            outcomes[judge(resp.status, body, stream)] += 1

    async def killer() -> None:
        for _ in range(3):
            await asyncio.sleep(rng.uniform(0.3, 0.8))
            backends = [b for b in running.sup.backends.values() if b.pid]
            if backends:
                with contextlib.suppress(OSError):
                    os.killpg(rng.choice(backends).pid, signal.SIGKILL)

    async with aiohttp.ClientSession() as s:
        kill = asyncio.ensure_future(killer())
        await asyncio.wait_for(asyncio.gather(*(worker(s) for _ in range(8))), 120)
        await kill
    assert outcomes["ok"] + outcomes["error"] == 60 and outcomes["ok"] > 0, outcomes
    await running.close()
    leftover = backend_pids(llama_server_bin) - before
    for pid in leftover:
        assert await wait_dead(pid), f"llama-server {pid} left behind"
