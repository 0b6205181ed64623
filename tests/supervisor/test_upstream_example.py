"""llama-swap's own config.example.yaml, adapted only where it names binaries and hosts that do
not exist here, passes ``homelab serve --check`` and serves.

Besides its binaries, upstream's example names models it never defines (it calls them
illustrative): selector targets ``qwen-unlisted``, ``modelA``, ``modelB``, fifo priorities for
``A``..``D``, group members. llama-swap's own loader refuses the example for those (its first
error: ``routing.scheduler.settings.fifo.priority references unknown model "A"``), so the
adaptation defines them as fake-backend models too; only ``llama`` (a selector listed as a group
member) stays undefined, which both loaders accept (ours with a warning).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import aiohttp
import pytest

from homelab.cli import main as homelab_main
from homelab.supervisor.config_load import load_config

from .conftest import FAKE, free_port

EXAMPLE = Path(__file__).parents[1] / "data" / "llama-swap" / "config.example.yaml"
ENV = {"HOME": "/home/user", "API_KEY_1": "sk-one", "API_KEY_2": "sk-two", "OPENROUTER_API_KEY": "sk-or"}
UNDEFINED = ["qwen-unlisted", "modelA", "modelB", "forever-modelA", "forever-modelB", "forever-modelc",
             "A", "B", "C", "D"]  # fmt: skip


def adapted_example(tmp_path: Path) -> Path:
    fake = f"{sys.executable} -S {FAKE}"
    text = EXAMPLE.read_text()
    replacements = [
        ("/path/to/llama-server/llama-server-ec9e0301", fake),  # the latest-llama macro
        ("cmd: some-upstream-server", f"cmd: {fake} --port ${{PORT}} --name unlisted-model"),
        ("http://192.168.1.23", f"http://127.0.0.1:{free_port()}"),  # peers: loopback, nothing listening
        ("https://openrouter.ai/api", f"http://127.0.0.1:{free_port()}"),
        ("cmdStop: docker stop ${MODEL_ID}", "cmdStop: kill ${PID}"),
    ]
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    docker = re.compile(r"    cmd: \|\n      docker run .*?\n(?=\n|    \w)", re.S)
    text, count = docker.subn(f"    cmd: {fake} --port ${{PORT}} --name docker-llama\n", text)
    assert count == 1
    stubs = "".join(f'  "{name}":\n    cmd: {fake} --port ${{PORT}} --name {name}\n' for name in UNDEFINED)
    text = text.replace("\n# hooks: a dictionary", "\n" + stubs + "\n# hooks: a dictionary", 1)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_serve_check_passes_on_upstream_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = adapted_example(tmp_path)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    assert homelab_main(["serve", "--config", str(path), "--check"]) == 0
    out, err = capsys.readouterr()
    assert "ok" in out and "3 selectors" in out and "1 profile" in out
    assert "group member 'llama' is not a model" in err  # the one name left undefined: a warning


async def test_upstream_example_serves(tmp_path: Path, serve) -> None:
    config = load_config(adapted_example(tmp_path), env=ENV)
    gpt = config.models["gpt-oss-120b"]
    assert gpt.timeouts.response_header == 60 and gpt.ignore_websockets and gpt.capabilities.context == 32000
    assert config.peers["openrouter"].timeouts.keepalive == 30
    assert [p.pattern for p in config.ignore_paths] == [r".*\.(js|json|css|png|gif|jpg|jpeg|ico|txt)$",
                                                        r"^\/ws$|^\/api\/jobs$"]
    assert config.fifo_priority == {"A": 10, "B": 5, "C": 5, "D": 1}
    assert config.groups["group2"].members == ("docker-llama", "modelA", "modelB")
    assert config.profiles["coding"].pins["image-gen"] == ""
    running = await serve(config)
    auth = {"Authorization": "Bearer sk-hunter2"}
    async with aiohttp.ClientSession(headers=auth) as s:
        # "llama" is the example's spillover selector: its first target, docker-llama, starts cold
        body = {"model": "llama", "messages": [{"role": "user", "content": "hi"}]}
        async with s.post(running.url + "/v1/chat/completions", json=body) as resp:
            answer = await resp.json()
            assert resp.status == 200, answer
        assert answer["x_server"] == "docker-llama"
        async with s.get(running.url + "/v1/models") as resp:
            listing = {m["id"]: m for m in (await resp.json())["data"]}
        assert listing["llama"]["meta"]["llamaswap"]["type"] == "selector"
        assert listing["gpt-oss-120b"]["capabilities"]["function_calling"] is True
        assert "unlisted-model" not in listing
        async with s.get(running.url + "/v1/models", headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
