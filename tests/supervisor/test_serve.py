"""``homelab serve`` as a real process: no orphans on SIGKILL, SIGTERM drain, systemd notify, reload."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from .conftest import FAKE, free_port
from .helpers import alive, chat, wait_dead, wait_for_file

REPO = Path(__file__).resolve().parents[2]


def write_config(path: Path, tmp: Path, a_flags: str = "", b_flags: str = "", extra: str = "",
                 ports: tuple[int, int] | None = None) -> None:
    # explicit ports (not ${PORT} from startPort) so both are known to be free
    pa, pb = ports or (free_port(), free_port())
    fake = f"{sys.executable} -S {FAKE}"
    path.write_text(textwrap.dedent(f"""\
        healthCheckTimeout: 15
        {extra}
        groups:
          both:
            swap: false
            members: [a, b]
        models:
          a:
            cmd: {fake} --port {pa} --name a --pid-file {tmp}/a.pid --fork-child --child-pid-file {tmp}/a.child {a_flags}
            proxy: http://127.0.0.1:{pa}
            unloadTimeout: 2
          b:
            cmd: {fake} --port {pb} --name b --pid-file {tmp}/b.pid {b_flags}
            proxy: http://127.0.0.1:{pb}
            unloadTimeout: 2
        """))


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, pid_file: Path) -> None:
        self.proc, self.url, self.pid_file = proc, url, pid_file


@pytest.fixture
def served(tmp_path: Path) -> Iterator[callable]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: Path, env: dict[str, str] | None = None) -> Served:
        port = free_port()
        pid_file = tmp_path / "serve.pid"
        proc = subprocess.Popen(
            [sys.executable, "-m", "homelab.cli", "serve", "--config", str(config),
             "--listen", f"127.0.0.1:{port}", "--pid-file", str(pid_file), "--drain-timeout", "3"],
            cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return Served(proc, url, pid_file)
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(proc.stdout.read().decode() if proc.stdout else "serve exited") from None
                time.sleep(0.05)
        raise AssertionError("homelab serve did not start listening")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_sigkill_leaves_no_backend_and_no_grandchild(tmp_path: Path, served) -> None:
    config = tmp_path / "config.yaml"
    write_config(config, tmp_path)
    server = served(config)
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, server.url, "a"))[0] == 200
        assert (await chat(s, server.url, "b"))[0] == 200
    backend_a = int(await wait_for_file(tmp_path / "a.pid"))
    backend_b = int(await wait_for_file(tmp_path / "b.pid"))
    grandchild = int(await wait_for_file(tmp_path / "a.child"))
    assert alive(backend_a) and alive(backend_b) and alive(grandchild)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    for pid in (backend_a, backend_b, grandchild):
        assert await wait_dead(pid), f"process {pid} outlived a SIGKILLed supervisor"


async def test_sigterm_drains_notifies_and_stops_backends(tmp_path: Path, served) -> None:
    config = tmp_path / "config.yaml"
    write_config(config, tmp_path, b_flags="--request-delay 1")
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(20)
    try:
        server = served(config, env={"NOTIFY_SOCKET": str(notify_path)})
        assert sock.recv(4096).startswith(b"READY=1")
        async with aiohttp.ClientSession() as s:
            assert (await chat(s, server.url, "a"))[0] == 200
            assert (await chat(s, server.url, "b"))[0] == 200
            slow = asyncio.ensure_future(chat(s, server.url, "b"))
            await asyncio.sleep(0.3)
            server.proc.send_signal(signal.SIGTERM)
            status, body = await slow  # in flight when SIGTERM came: completes
        assert status == 200 and body["x_server"] == "b"
        assert sock.recv(4096) == b"STOPPING=1"
        assert await asyncio.get_running_loop().run_in_executor(None, server.proc.wait, 20) == 0
    finally:
        sock.close()
    for name in ("a.pid", "b.pid", "a.child"):
        assert await wait_dead(int((tmp_path / name).read_text()))


async def test_reload_restarts_only_changed_and_rejects_bad_config(tmp_path: Path, served) -> None:
    config = tmp_path / "config.yaml"
    write_config(config, tmp_path)
    server = served(config)
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, server.url, "a"))[0] == 200
        assert (await chat(s, server.url, "b"))[0] == 200
        pid_a, pid_b = (int((tmp_path / n).read_text()) for n in ("a.pid", "b.pid"))
        # change a's command only (the ports stay)
        text = config.read_text().replace("--name a ", "--name a --tokens 3 ")
        config.write_text(text)
        reload = subprocess.run([sys.executable, "-m", "homelab.cli", "reload", "--pid-file",
                                 str(server.pid_file)], cwd=REPO, capture_output=True, text=True)
        assert reload.returncode == 0, reload.stderr
        assert await wait_dead(pid_a)
        status, body = await chat(s, server.url, "a")
        assert status == 200 and body["choices"][0]["message"]["content"] == "t0 t1 t2"
        assert alive(pid_b) and int((tmp_path / "b.pid").read_text()) == pid_b
        # a broken config is rejected; the old one keeps serving
        config.write_text(text.replace("models:", "modelz:"))
        port = server.url.rsplit(":", 1)[1]
        bad = subprocess.run([sys.executable, "-m", "homelab.cli", "reload", "--listen", f"127.0.0.1:{port}"],
                             cwd=REPO, capture_output=True, text=True)
        assert bad.returncode == 2 and "reload rejected" in bad.stderr
        assert (await chat(s, server.url, "b"))[0] == 200
        assert int((tmp_path / "b.pid").read_text()) == pid_b
        async with s.get(server.url + "/logs") as resp:
            assert "reload rejected" in await resp.text()


def test_check_flag(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    write_config(config, tmp_path)
    ok = subprocess.run([sys.executable, "-m", "homelab.cli", "serve", "--config", str(config), "--check"],
                        cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0 and "2 models" in ok.stdout
    config.write_text("models:\n  a:\n    cmdd: x\n")
    bad = subprocess.run([sys.executable, "-m", "homelab.cli", "serve", "--config", str(config), "--check"],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "cmdd" in bad.stderr and "Traceback" not in bad.stderr


def test_listen_address_in_use_is_refused_clearly(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    write_config(config, tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "homelab.cli", "serve", "--config", str(config),
                                 "--listen", f"127.0.0.1:{port}"], cwd=REPO, capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr
