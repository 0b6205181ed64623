"""The prompt cache end to end: the real llama-server evicted by another model and started again
restores its slots (the shared prefix is not evaluated again); a restore that does not match is
refused, counted in /metrics and the request still served; file modes; the disk cap."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from homelab.supervisor.config_load import load_config, parse_config

from .conftest import free_port

pytestmark = pytest.mark.e2e

PREFIX = "".join(f"line {i}: the agent's long shared context goes on and on. " for i in range(20))
"""About 1600 tokens with the tiny models' byte vocabulary."""


def write_config(path: Path, server: Path, models: dict[str, Path], *, alpha_flags: str = "-c 4096 -np 1",
                 cache: str = "{}", alpha_cache: str = "true") -> Path:
    """alpha (prompt cache on) and beta, which cannot be resident together (one default group)."""
    a, b = free_port(), free_port()
    path.write_text(textwrap.dedent(f"""\
        healthCheckTimeout: 30
        x-promptCache: {cache}
        models:
          alpha:
            cmd: {server} -m {models['alpha']} --host 127.0.0.1 --port {a} -t 1 --no-webui {alpha_flags}
            proxy: http://127.0.0.1:{a}
            x-promptCache: {alpha_cache}
          beta:
            cmd: {server} -m {models['beta']} --host 127.0.0.1 --port {b} -t 1 -c 512 --no-webui
            proxy: http://127.0.0.1:{b}
        """))
    return path


async def ask(s: aiohttp.ClientSession, url: str, model: str, content: str) -> dict[str, Any]:
    async with s.post(url + "/v1/chat/completions", json={
            "model": model, "max_tokens": 1, "messages": [{"role": "user", "content": content}]}) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 200, body
        return body  # type: ignore[no-any-return]


async def metric(s: aiohttp.ClientSession, url: str, name: str, **labels: str) -> float:
    async with s.get(url + "/metrics") as resp:
        text = await resp.text()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    prefix = f"{name}{{{want}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_slots_survive_eviction_and_a_mismatch_is_refused(serve, llama_server_bin: Path,
                                                               tiny_models: dict[str, Path], tmp_path: Path) -> None:
    config_path = write_config(tmp_path / "config.yaml", llama_server_bin, tiny_models)
    running = await serve(parse_config(config_path.read_text(), config_path))
    cache = tmp_path / "prompt-cache"
    async with aiohttp.ClientSession() as s:
        first = await ask(s, running.url, "alpha", PREFIX + "first question?")
        assert first["timings"]["prompt_n"] > 1400  # evaluated in full
        await ask(s, running.url, "beta", "hello")  # evicts alpha: its slot is saved
        assert await metric(s, running.url, "homelab_prompt_cache_saves_total", model="alpha", outcome="saved") == 1
        assert cache.stat().st_mode & 0o777 == 0o700
        files = [p for p in cache.rglob("*") if p.is_file()]
        assert files and all(p.stat().st_mode & 0o777 == 0o600 for p in files)
        assert all(p.parent.stat().st_mode & 0o777 == 0o700 for p in files)
        again = await ask(s, running.url, "alpha", PREFIX + "second question?")
        assert await metric(s, running.url, "homelab_prompt_cache_restores_total",
                            model="alpha", outcome="restored") == 1
        # the shared prefix came from the restored slot: only the new tail was evaluated
        assert again["timings"]["cache_n"] > 1400
        assert again["timings"]["prompt_n"] < 40
    await running.close()  # saves alpha's slot again on the way out

    # Same cache folder, alpha with another context size: the saved slot does not match.
    config_path = write_config(tmp_path / "config.yaml", llama_server_bin, tiny_models,
                               alpha_flags="-c 8192 -np 1")
    running = await serve(parse_config(config_path.read_text(), config_path))
    async with aiohttp.ClientSession() as s:
        served = await ask(s, running.url, "alpha", PREFIX + "third question?")
        assert served["timings"]["prompt_n"] > 1400 and served["timings"].get("cache_n", 0) == 0
        assert await metric(s, running.url, "homelab_prompt_cache_restores_total",
                            model="alpha", outcome="refused") == 1
        assert await metric(s, running.url, "homelab_prompt_cache_restores_total",
                            model="alpha", outcome="restored") == 0
    index = json.loads((cache / "index.json").read_text())
    assert index["entries"] == []  # the stale file is gone with its entry
    assert (cache / "index.json").stat().st_mode & 0o777 == 0o600


async def test_the_disk_cap_drops_the_least_recently_saved_slot(serve, llama_server_bin: Path,
                                                                tiny_models: dict[str, Path], tmp_path: Path) -> None:
    # Two slots of ~1600 tokens take ~0.8 MiB each with the tiny models; the cap keeps one.
    config_path = write_config(tmp_path / "config.yaml", llama_server_bin, tiny_models,
                               alpha_flags="-c 8192 -np 2 --no-kv-unified", cache="{maxMiBPerModel: 1}")
    running = await serve(parse_config(config_path.read_text(), config_path))
    async with aiohttp.ClientSession() as s:
        await ask(s, running.url, "alpha", PREFIX + "one")
        await ask(s, running.url, "alpha", "z" + PREFIX[::-1])  # nothing in common: the other slot
        await ask(s, running.url, "beta", "hello")
        assert await metric(s, running.url, "homelab_prompt_cache_saves_total", model="alpha", outcome="saved") == 2
        assert await metric(s, running.url, "homelab_prompt_cache_dropped_total") == 1
    index = json.loads((tmp_path / "prompt-cache" / "index.json").read_text())
    assert len(index["entries"]) == 1 and index["entries"][0]["bytes"] <= 1 << 20
    files = [p for p in (tmp_path / "prompt-cache").rglob("*.bin")]
    assert len(files) == 1


async def test_a_save_over_its_time_bound_does_not_hold_the_eviction(serve, llama_server_bin: Path,
                                                                    tiny_models: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    # saveTimeout 0: the bound is spent before the first slot is written (a disk that never answers)
    config_path = write_config(tmp_path / "config.yaml", llama_server_bin, tiny_models, cache="{saveTimeout: 0}")
    running = await serve(parse_config(config_path.read_text(), config_path))
    async with aiohttp.ClientSession() as s:
        await ask(s, running.url, "alpha", PREFIX + "one")
        await ask(s, running.url, "beta", "hello")  # served: the eviction went on without the save
        assert await metric(s, running.url, "homelab_prompt_cache_saves_total",
                            model="alpha", outcome="timeout") == 1
        again = await ask(s, running.url, "alpha", PREFIX + "two")
        assert again["timings"].get("cache_n", 0) == 0  # nothing was restored
    assert not list((tmp_path / "prompt-cache").rglob("*.bin"))  # no partial file left


async def test_every_occupied_slot_is_saved_with_a_unified_kv_cache(serve, llama_server_bin: Path,
                                                                   tiny_models: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    """With one KV buffer for all slots, llama-server clears an idle slot when another one starts
    a task (its copy goes to the RAM prompt cache, which dies with the process): the supervisor
    keeps idle slots, so both conversations survive the eviction."""
    config_path = write_config(tmp_path / "config.yaml", llama_server_bin, tiny_models,
                               alpha_flags="-c 8192 -np 2 -kvu")
    running = await serve(parse_config(config_path.read_text(), config_path))
    other = "z" + PREFIX[::-1]  # nothing in common with PREFIX: the other slot
    async with aiohttp.ClientSession() as s:
        await ask(s, running.url, "alpha", PREFIX + "one")
        await ask(s, running.url, "alpha", other + "one")
        await ask(s, running.url, "beta", "hello")  # evicts alpha
        assert await metric(s, running.url, "homelab_prompt_cache_saves_total", model="alpha", outcome="saved") == 2
        for prompt in (PREFIX, other):
            again = await ask(s, running.url, "alpha", prompt + "two")
            assert again["timings"]["cache_n"] > 1400 and again["timings"]["prompt_n"] < 40
        assert await metric(s, running.url, "homelab_prompt_cache_restores_total",
                            model="alpha", outcome="restored") == 2


async def test_reload_applies_the_prompt_cache_settings(serve, llama_server_bin: Path,
                                                        tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """x-promptCache read again on reload: a lower minCtx turns the cache on for alpha's next
    start, and a new dir is where it saves."""
    path = tmp_path / "config.yaml"
    write_config(path, llama_server_bin, tiny_models, alpha_cache="null")  # -c 4096 < minCtx 16384: off
    running = await serve(load_config(path), loader=load_config)
    moved = tmp_path / "moved-cache"
    async with aiohttp.ClientSession() as s:
        await ask(s, running.url, "alpha", PREFIX + "one")
        await ask(s, running.url, "beta", "hello")
        assert await metric(s, running.url, "homelab_prompt_cache_saves_total", model="alpha", outcome="saved") == 0
        text = path.read_text().replace("x-promptCache: {}", f"x-promptCache: {{minCtx: 1024, dir: {moved}}}")
        path.write_text(text)
        async with s.post(running.url + "/x-reload") as resp:
            assert (await resp.json())["reloaded"] is True
        first = await ask(s, running.url, "alpha", PREFIX + "two")  # started with the cache now
        assert first["timings"]["prompt_n"] > 1400
        await ask(s, running.url, "beta", "hello")
        assert await metric(s, running.url, "homelab_prompt_cache_saves_total", model="alpha", outcome="saved") == 1
        assert list(moved.rglob("*.bin")) and not (tmp_path / "prompt-cache").exists()
        again = await ask(s, running.url, "alpha", PREFIX + "three")
        assert again["timings"]["cache_n"] > 1400 and again["timings"]["prompt_n"] < 40
