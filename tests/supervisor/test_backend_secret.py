"""Backends only the supervisor can use: the real llama-server gets a key of its own per start,
never on its command line; the supervisor sends it, a direct call to the port gets 401."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from homelab.supervisor.config import Config
from homelab.supervisor.process import BACKEND_KEY_ENV

from .test_e2e import real_model

pytestmark = pytest.mark.e2e
CHAT = {"model": "alpha", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


async def test_backend_port_needs_the_supervisors_secret(serve, llama_server_bin: Path,
                                                         tiny_models: dict[str, Path]) -> None:
    model = real_model("alpha", llama_server_bin, tiny_models["alpha"])
    running = await serve(Config(models={"alpha": model}, health_check_timeout=60))
    async with aiohttp.ClientSession() as s:
        # through the supervisor: fine, whatever Authorization the client sends (no keys here)
        async with s.post(running.url + "/v1/chat/completions", json=CHAT,
                          headers={"Authorization": "Bearer not-a-key"}) as resp:
            assert resp.status == 200, await resp.text()
            assert "Access-Control-Allow-Origin" not in resp.headers
        async with s.get(running.url + "/upstream/alpha/slots") as resp:
            assert resp.status == 200
            assert isinstance(await resp.json(), list)

        backend = running.sup.backends["alpha"]
        secret = backend.secret
        assert secret and len(secret) >= 40
        cmdline = Path(f"/proc/{backend.pid}/cmdline").read_bytes()
        assert secret.encode() not in cmdline  # every local user can read a command line
        environ = Path(f"/proc/{backend.pid}/environ").read_bytes().split(b"\0")
        assert f"{BACKEND_KEY_ENV}={secret}".encode() in environ  # readable only by this user
        assert Path(f"/proc/{backend.pid}/environ").stat().st_mode & 0o077 == 0

        # another local user, or a page that found the port: 401 on completions and /slots
        direct = model.proxy
        async with s.post(direct + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 401
            assert "Access-Control-Allow-Origin" in resp.headers  # llama-server's own CORS ...
        async with s.get(direct + "/slots") as resp:
            assert resp.status == 401
        async with s.get(direct + "/slots", headers={"Authorization": "Bearer not-a-key"}) as resp:
            assert resp.status == 401
        async with s.get(direct + "/slots", headers={"Authorization": f"Bearer {secret}"}) as resp:
            assert resp.status == 200  # (the key is what makes the difference)
        async with s.post(running.url + "/v1/chat/completions", json=CHAT,
                          headers={"Origin": "http://localhost:3000"}) as resp:
            assert resp.status == 200
            # ... is never passed on: only ours, for an allowed page
            assert resp.headers.getall("Access-Control-Allow-Origin") == ["http://localhost:3000"]

        # a new start, a new key; the old one is worthless
        async with s.post(running.url + "/unload") as resp:
            assert resp.status == 200
        async with s.post(running.url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
        renewed = running.sup.backends["alpha"].secret
        assert renewed and renewed != secret
        async with s.get(direct + "/slots", headers={"Authorization": f"Bearer {secret}"}) as resp:
            assert resp.status == 401


def test_only_llama_server_gets_a_key() -> None:
    from homelab.supervisor.process import is_llama_server

    assert is_llama_server(["/opt/llama/bin/llama-server", "-m", "x"])
    assert not is_llama_server(["/usr/bin/python3", "fake_llama_server.py"])
    assert not is_llama_server(["/opt/wrap/llama-server-wrapper.sh"])
    assert not is_llama_server([])
