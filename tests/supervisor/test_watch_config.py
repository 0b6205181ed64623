"""``--watch-config``: an edit of the config file reloads it; only the changed model restarts, and
a bad edit keeps the running config (the error names the file and the key)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp

from homelab.supervisor.config_load import load_config
from homelab.supervisor.scheduler import State
from homelab.supervisor.watch import WatchTiming

from .conftest import FAKE, free_port
from .helpers import chat

FAST = WatchTiming(interval=0.05, debounce=0.1)


def write_config(path: Path, ports: dict[str, int], marker: str = "1") -> None:
    lines = ["models:"]
    for model, port in ports.items():
        extra = f" --x-marker {marker}" if model == "b" else ""
        lines += [f"  {model}:",
                  f"    cmd: {sys.executable} -S {FAKE} --port {port} --name {model}{extra}",
                  f"    proxy: http://127.0.0.1:{port}"]
    # both resident: a group that does not swap
    lines += ["groups:", "  g:", "    swap: false", f"    members: [{', '.join(ports)}]"]
    path.write_text("\n".join(lines) + "\n")


async def wait_until(check, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition never met")


async def test_edit_restarts_only_the_changed_model(serve, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    ports = {"a": free_port(), "b": free_port()}
    write_config(path, ports)
    running = await serve(load_config(path), loader=load_config, watch=FAST)
    sup = running.sup
    async with aiohttp.ClientSession() as s:
        for model in ports:
            assert (await chat(s, running.url, model))[0] == 200
        before = {m: sup.backends[m].pid for m in ports}
        write_config(path, ports, marker="2")
        await wait_until(lambda: "--x-marker 2" in " ".join(sup.config.models["b"].cmd))
        await wait_until(lambda: sup.status_of("b") is State.STOPPED)
        status, body = await chat(s, running.url, "b")
        assert status == 200 and sup.backends["b"].pid != before["b"]
        assert "2" in sup.backends["b"].model.cmd
    assert sup.status_of("a") is State.READY and sup.backends["a"].pid == before["a"]
    assert "restarting changed models: b" in sup.supervisor_log.contents().decode()


async def test_bad_edit_keeps_the_running_config(serve, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    ports = {"a": free_port()}
    write_config(path, ports)
    running = await serve(load_config(path), loader=load_config, watch=FAST)
    sup = running.sup
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, running.url, "a"))[0] == 200
        pid = sup.backends["a"].pid
        path.write_text(path.read_text().replace("    proxy:", "    proxyy:"))
        await wait_until(lambda: "reload rejected" in sup.supervisor_log.contents().decode())
        assert (await chat(s, running.url, "a"))[0] == 200
    text = sup.supervisor_log.contents().decode()
    assert str(path) in text and "proxyy" in text and "still serving the previous config" in text
    assert sup.backends["a"].pid == pid and sup.status_of("a") is State.READY
