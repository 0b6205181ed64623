"""``homelab serve --listen``: ``:PORT`` binds every interface as llama-swap does, and a bind
beyond loopback without API keys prints the warning (docs/security.md quotes it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

from homelab.errors import HomelabError
from homelab.address import parse_listen
from homelab.supervisor.commands import no_key_warning
from homelab.supervisor.config import Config

from .conftest import FAKE, free_port

REPO = Path(__file__).resolve().parents[2]


def test_parse_listen() -> None:
    assert parse_listen(":8080") == (None, 8080)
    assert parse_listen("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    for bad in ("8080", "host:", "host:99999", "host:http"):
        with pytest.raises(HomelabError, match="expected HOST:PORT or :PORT"):
            parse_listen(bad)


def test_no_key_warning() -> None:
    open_config = Config(models={}, source=Path("/srv/config.yaml"))
    assert no_key_warning("127.0.0.1", 1, open_config) is None
    assert no_key_warning("localhost", 1, open_config) is None
    assert no_key_warning("0.0.0.0", 1, Config(models={}, api_keys=("k",))) is None
    warning = no_key_warning(None, 12434, open_config)
    assert warning == (
        "warning: homelab serve listens on every interface (:12434) without API keys: anyone who can "
        "reach this port can use every model and read other users' prompts. Set apiKeys in "
        "/srv/config.yaml (runtime.api_key_env in the host file), or listen on 127.0.0.1"
    )
    assert "listens on 192.168.1.5:80 without API keys" in (no_key_warning("192.168.1.5", 80, open_config) or "")


def listening(port: int) -> set[str]:
    """Local addresses with a TCP listener on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_listen_on_every_interface_warns_without_keys(tmp_path: Path) -> None:
    backend = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent(f"""\
        models:
          a:
            cmd: {sys.executable} -S {FAKE} --port {backend} --name a
            proxy: http://127.0.0.1:{backend}
        """))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "homelab.cli", "serve", "--config", str(config), "--listen", f":{port}"],
        cwd=REPO, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not listening(port):
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not start listening"
            time.sleep(0.05)
        # every IPv4 and IPv6 address, not only loopback
        assert listening(port) & {"00000000", "00000000000000000000000000000000"}
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        answer = requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=10)
        assert answer.status_code == 200
        # a foreign name is still refused, whatever interface it arrived on
        refused = requests.get(f"http://127.0.0.1:{port}/v1/models", headers={"Host": "evil.example"}, timeout=10)
        assert refused.status_code == 421
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert f"warning: homelab serve listens on every interface (:{port}) without API keys" in err.decode()
