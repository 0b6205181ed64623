"""Weights prefetch: a request for a stopped model reads its files ahead (counted in /metrics),
likely-next models are kept warm, and nothing is read when RAM is short."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from homelab.supervisor.config import PrefetchSettings

from .conftest import fake_model, make_config
from .helpers import chat


def prefetched(running, model: str) -> float:  # noqa: ANN001
    return running.sup.metrics.prefetch_bytes.values.get((("model", model),), 0.0)


async def wait_prefetched(running, model: str) -> float:  # noqa: ANN001
    for _ in range(200):
        if prefetched(running, model):
            break
        await asyncio.sleep(0.01)
    return prefetched(running, model)


def weights(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(bytes(size))
    return path


async def test_a_swap_reads_the_incoming_models_file_ahead(serve, tmp_path: Path) -> None:
    a, b = weights(tmp_path, "a", 3 << 20), weights(tmp_path, "b", 5 << 20)
    config = make_config(fake_model("a", "-m", str(a)), fake_model("b", "-m", str(b)),
                         prefetch=PrefetchSettings(reserve_mib=0))
    running = await serve(config)
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, running.url, "a"))[0] == 200
        assert await wait_prefetched(running, "a") == 3 << 20  # a cold start reads ahead too
        assert (await chat(s, running.url, "b"))[0] == 200
        assert await wait_prefetched(running, "b") == 5 << 20
        assert (await chat(s, running.url, "b"))[0] == 200  # already running: nothing more to read
        assert prefetched(running, "b") == 5 << 20


async def test_keep_warm_reads_the_likely_next_model_after_a_swap(serve, tmp_path: Path) -> None:
    a, b = weights(tmp_path, "a", 1 << 20), weights(tmp_path, "b", 2 << 20)
    config = make_config(fake_model("a", "-m", str(a)), fake_model("b", "-m", str(b)),
                         prefetch=PrefetchSettings(keep_warm=("b",), reserve_mib=0))
    running = await serve(config)
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, running.url, "a"))[0] == 200
        assert await wait_prefetched(running, "b") == 2 << 20  # never asked for, read anyway


async def test_short_ram_or_disabled_reads_nothing(serve, tmp_path: Path) -> None:
    a = weights(tmp_path, "a", 1 << 20)
    for settings in (PrefetchSettings(reserve_mib=1 << 30), PrefetchSettings(enabled=False)):
        running = await serve(make_config(fake_model("a", "-m", str(a)), prefetch=settings))
        async with aiohttp.ClientSession() as s:
            assert (await chat(s, running.url, "a"))[0] == 200
        await asyncio.sleep(0.1)
        assert prefetched(running, "a") == 0
        await running.close()
