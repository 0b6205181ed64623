"""The leaf helpers every stage shares: atomic writes, file digests, did-you-mean, listen
addresses, the HTTP session."""

from __future__ import annotations

import hashlib
import socket
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from homelab.address import (
    base_url,
    free_loopback_port,
    free_port_below_ephemeral,
    is_any_address,
    is_loopback,
    split_host_port,
    wait_until_accepting,
)
from homelab.files import CHUNK, atomic_write_bytes, atomic_write_text, sha256_file
from homelab.http_client import USER_AGENT, http_session
from homelab.suggest import closest, did_you_mean


def test_atomic_write_replaces_the_file_with_the_mode_asked_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_text(target, "old\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    atomic_write_text(target, "secret=1\n", mode=0o600)
    assert target.read_text() == "secret=1\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "lock.json"
    atomic_write_bytes(target, b"good")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["lock.json"]


@pytest.mark.parametrize("size", [0, 5, CHUNK + 3])
def test_sha256_file_matches_hashlib_and_reports_every_byte(tmp_path: Path, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    path = tmp_path / "blob"
    path.write_bytes(data)
    seen: list[int] = []
    assert sha256_file(path, seen.append) == hashlib.sha256(data).hexdigest()
    assert sum(seen) == size


def test_did_you_mean_near_miss_separator_listing_and_fallback() -> None:
    assert did_you_mean("ctx-sise", ["ctx-size", "parallel"]) == "; did you mean 'ctx-size'?"
    assert closest("CTX_SIZE", ["ctx-size"], cutoff=0.99) == "ctx-size"
    assert did_you_mean("zzz", ["a", "b"], listing="models") == "; models: a, b"
    assert did_you_mean("zzz", ["a", "b"]) == ""
    assert did_you_mean("zzz", [f"m{i}" for i in range(30)], listing="models", fallback="; none") == "; none"


def test_listen_addresses() -> None:
    assert split_host_port("[::1]:8080") == ("::1", 8080)
    assert split_host_port("192.168.1.21:50052") == ("192.168.1.21", 50052)
    assert is_loopback("127.0.0.2") and is_loopback("localhost") and not is_loopback("192.168.1.2")
    assert is_any_address("0.0.0.0") and is_any_address("[::]") and not is_any_address("127.0.0.1")
    assert base_url("0.0.0.0:8080") == "http://127.0.0.1:8080"
    assert base_url(":8080") == "http://127.0.0.1:8080"
    assert base_url("10.0.0.5:9") == "http://10.0.0.5:9"


def test_wait_until_accepting_sees_a_listener_and_a_dead_process() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert wait_until_accepting(f"0.0.0.0:{port}", 5) is None
    closed = free_loopback_port()
    error = wait_until_accepting(f"127.0.0.1:{closed}", 5, alive=lambda: False, what="rpc-server")
    assert error == f"the rpc-server exited before 127.0.0.1:{closed} accepted a connection"


def test_ports_for_servers_started_later_are_below_the_ephemeral_range() -> None:
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        port = free_port_below_ephemeral(room=1000)
        assert port + 1000 < ephemeral_low  # no outgoing connection is given one of them
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))  # and it was free


def test_http_session_says_who_is_asking() -> None:
    agents: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            agents.append(self.headers["User-Agent"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with http_session() as http:
            assert http.get(f"http://127.0.0.1:{server.server_address[1]}/", timeout=10).status_code == 204
    finally:
        server.shutdown()
        server.server_close()
    assert agents == [USER_AGENT]
