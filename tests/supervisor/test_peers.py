"""Peers (#9): several supervisors on loopback addresses acting as hosts.

Host A (127.0.0.1) lists hosts B (127.0.0.2) and C (127.0.0.3) as peers; Linux routes all of
127/8 to loopback, so each "host" has its own address like on a LAN. Backends are the fake
llama-server (real processes) and, in the e2e test, the real llama-server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from homelab.supervisor.app import Running, start_server
from homelab.supervisor.config import Config, ModelConfig, PeerConfig
from homelab.supervisor.config_load import load_config, parse_config
from homelab.supervisor.peers import PeerHealth, PeerState, ProbeTimings, probe_error

from .conftest import FAKE, fake_model, free_port, make_config
from .helpers import chat

REPO = Path(__file__).resolve().parents[2]
HOST_A, HOST_B, HOST_C = "127.0.0.1", "127.0.0.2", "127.0.0.3"
GUARD = 30.0
"""Upper bound for anything a test waits on: a hang fails the test instead of blocking CI."""


def free_port_on(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- pure state


def test_health_transitions_without_sleeps() -> None:
    timings = ProbeTimings(interval=5, recheck=0.5, fail_after=2)
    h = PeerHealth("b")
    assert h.state is PeerState.UNKNOWN and h.next_delay(timings) == 5
    # from unknown one failure is enough: nothing was ever served
    assert h.failed("cannot connect: Connection refused", now=10.0, fail_after=2)
    assert h.state is PeerState.DOWN and h.changed_at == 10.0 and h.next_delay(timings) == 0.5
    assert not h.failed("again", now=11.0, fail_after=2)  # no change: still down
    assert h.changed_at == 10.0 and h.last_error == "again" and h.failures == 2
    assert h.succeeded(now=12.0)
    assert h.state is PeerState.UP and h.last_error is None and h.failures == 0 and h.changed_at == 12.0
    assert h.next_delay(timings) == 5
    # from up, one lost probe is tolerated (fast recheck), the second turns it down
    assert not h.failed("no answer within 2s", now=13.0, fail_after=2)
    assert h.state is PeerState.UP and h.next_delay(timings) == 0.5
    assert h.failed("no answer within 2s", now=13.5, fail_after=2)
    assert h.state is PeerState.DOWN and h.changed_at == 13.5
    assert h.describe() == {"state": "down", "lastError": "no answer within 2s", "since": 13.5, "checkedAt": 13.5}
    # a success in between resets the count
    h2 = PeerHealth("c", state=PeerState.UP)
    h2.failed("x", 1.0, 2)
    h2.succeeded(2.0)
    assert not h2.failed("y", 3.0, 2) and h2.state is PeerState.UP


def test_probe_outcomes() -> None:
    assert probe_error(200, None, 2) is None
    assert probe_error(404, None, 2) is None  # an OpenAI-compatible server without /health is there
    assert probe_error(401, None, 2) is None
    assert probe_error(503, None, 2) == "/health answered 503"
    assert probe_error(None, TimeoutError(), 2) == "no answer within 2s"
    refused = aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None),
        ConnectionRefusedError(111, "Connection refused"))
    assert probe_error(None, refused, 2) == "cannot connect: connection refused (nothing listens there)"


# --------------------------------------------------------------------------- hosts


class Hosts:
    """In-process supervisors bound to given loopback addresses (restartable on the same port)."""

    def __init__(self) -> None:
        self.running: list[Running] = []

    async def start(self, config: Config, host: str, port: int = 0, **kwargs: Any) -> Running:
        running = await start_server(config, host, port, drain_timeout=1.0, **kwargs)
        self.running.append(running)
        return running

    async def close_all(self) -> None:
        for running in self.running:
            await running.close()


@pytest.fixture
async def hosts() -> AsyncIterator[Hosts]:
    h = Hosts()
    yield h
    await h.close_all()


def url(host: str, running: Running) -> str:
    return f"http://{host}:{running.port}"


async def wait_peer_state(s: aiohttp.ClientSession, base: str, peer: str, state: str) -> dict[str, Any]:
    """Poll /running until ``peer`` has ``state`` (bounded by GUARD)."""
    deadline = time.monotonic() + GUARD
    while time.monotonic() < deadline:
        async with s.get(base + "/running") as resp:
            entry = next(p for p in (await resp.json())["peers"] if p["peer"] == peer)
        if entry["state"] == state:
            return entry
        await asyncio.sleep(0.05)
    raise AssertionError(f"peer {peer} never became {state}: {entry}")


async def read_events(resp: aiohttp.ClientResponse) -> tuple[list[dict[str, Any]], int]:
    """SSE data events of a streamed answer and how many reads it took to get them."""
    events: list[dict[str, Any]] = []
    buffer, reads = b"", 0
    while True:
        chunk = await resp.content.readany()
        if not chunk:
            break
        reads += 1
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data: ") and line != b"data: [DONE]":
                    events.append(json.loads(line[6:]))
    return events, reads


async def three_hosts(hosts: Hosts, *, b_flags: tuple[str, ...] = ()) -> tuple[Running, Running, Running, int]:
    """B serves b and shared; C serves c and shared; A serves a and lists B and C as peers."""
    b_port = free_port_on(HOST_B)
    b_models = (fake_model("b", *b_flags), fake_model("shared", "--name", "shared-on-b"))
    b = await hosts.start(make_config(*b_models, groups={}), HOST_B, b_port)
    c = await hosts.start(make_config(fake_model("c"), fake_model("shared", "--name", "shared-on-c")), HOST_C)
    peers = {
        "hostb": PeerConfig(name="hostb", proxy=url(HOST_B, b), models=("b", "shared")),
        "hostc": PeerConfig(name="hostc", proxy=url(HOST_C, c), models=("c", "shared")),
    }
    a = await hosts.start(make_config(fake_model("a"), peers=peers), HOST_A)
    return a, b, c, b_port


async def test_one_endpoint_lists_and_serves_three_hosts(hosts: Hosts) -> None:
    a, b, c, _ = await three_hosts(hosts, b_flags=("--token-rate", "20", "--tokens", "6"))
    front = url(HOST_A, a)
    async with aiohttp.ClientSession() as s:
        for peer in ("hostb", "hostc"):
            await wait_peer_state(s, front, peer, "up")
        async with s.get(front + "/v1/models") as resp:
            listed = {m["id"]: m for m in (await resp.json())["data"]}
        assert sorted(listed) == ["a", "hostb/b", "hostb/shared", "hostc/c", "hostc/shared"]
        assert listed["a"]["owned_by"] == "homelab"
        assert listed["hostb/b"]["owned_by"] == "hostb" and listed["hostc/c"]["owned_by"] == "hostc"
        assert listed["hostb/b"]["status"]["value"] == "up"
        assert listed["hostc/c"]["meta"]["peer"]["state"] == "up"

        # non-streaming: local, qualified peer name, unambiguous bare name
        status, body = await chat(s, front, "a")
        assert status == 200 and body["x_server"] == "a"
        status, body = await chat(s, front, "hostb/b")
        assert status == 200 and body["x_server"] == "b" and body["x_received"]["model"] == "b"
        status, body = await chat(s, front, "c")
        assert status == 200 and body["x_server"] == "c"
        # a bare name two peers serve is refused with the qualified choices; qualified works
        status, body = await chat(s, front, "shared")
        assert status == 400 and body["error"]["choices"] == ["hostb/shared", "hostc/shared"]
        status, body = await chat(s, front, "hostc/shared")
        assert status == 200 and body["x_server"] == "shared-on-c"
        status, body = await chat(s, front, "hostc/nope")  # not listed for the peer: ours
        assert status == 404 and "hostc/c" in body["error"]["known"]

        # streaming through a peer (A -> B's supervisor -> B's backend), chunk by chunk
        started = time.perf_counter()
        async with s.post(front + "/v1/chat/completions", json={"model": "hostb/b", "stream": True}) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
            events, reads = await asyncio.wait_for(read_events(resp), GUARD)
        tokens = [e["choices"][0]["delta"].get("content") for e in events if e["choices"][0]["delta"]]
        assert tokens == [f"t{i} " for i in range(6)]
        assert reads > 1, "the 6 tokens (20/s) arrived in one read: the relay buffered the stream"
        print(f"\nstream through peer: 6 tokens at 20/s in {reads} reads, "
              f"{1000 * (time.perf_counter() - started):.0f} ms")

        async with s.get(front + "/metrics") as resp:
            metrics = await resp.text()
    for needle in ('homelab_peer_requests_total{code="200",peer="hostb"} 2',
                   'homelab_peer_requests_total{code="200",peer="hostc"} 2',
                   'homelab_peer_up{peer="hostb"} 1', 'homelab_requests_total{code="200",model="hostb/b"} 2'):
        assert needle in metrics, needle


async def test_peer_going_away_and_coming_back(hosts: Hosts) -> None:
    a, b, _, b_port = await three_hosts(hosts)
    front = url(HOST_A, a)
    async with aiohttp.ClientSession() as s:
        await wait_peer_state(s, front, "hostb", "up")
        assert (await chat(s, front, "hostb/b"))[0] == 200
        await b.close()  # host B goes away (its backends stop with it)

        started = time.perf_counter()
        status, body = await asyncio.wait_for(chat(s, front, "hostb/b"), GUARD)
        print(f"\nfirst request after the peer went away: {status} in {1000 * (time.perf_counter() - started):.0f} ms")
        assert status == 503 and body["error"]["code"] == "peer_unavailable"
        assert body["error"]["peer"] == "hostb" and "'hostb'" in body["error"]["message"]
        down = await wait_peer_state(s, front, "hostb", "down")
        assert "cannot connect" in down["lastError"]
        status, body = await asyncio.wait_for(chat(s, front, "b"), GUARD)  # bare name: same peer
        assert status == 503 and "cannot connect" in body["error"]["message"]
        async with s.get(front + "/v1/models") as resp:
            states = {m["id"]: m["status"]["value"] for m in (await resp.json())["data"]}
        assert states["hostb/b"] == "down" and states["hostc/c"] == "up"
        assert (await chat(s, front, "hostc/c"))[0] == 200  # the other host is unaffected

        # host B comes back on the same address: served again
        await hosts.start(b.sup.config, HOST_B, b_port)
        await wait_peer_state(s, front, "hostb", "up")
        status, body = await asyncio.wait_for(chat(s, front, "hostb/b"), GUARD)
        assert status == 200 and body["x_server"] == "b"


async def test_a_multipart_request_reaches_the_peer_under_the_peers_model_name(hosts: Hosts) -> None:
    a, _, _, _ = await three_hosts(hosts)
    front = url(HOST_A, a)
    form = aiohttp.FormData()
    form.add_field("file", b"\x00RIFF name=\"model\"\r\n\r\nnot-a-field", filename="a.wav", content_type="audio/wav")
    form.add_field("model", "hostb/b")
    async with aiohttp.ClientSession() as s:
        await wait_peer_state(s, front, "hostb", "up")
        # host B's supervisor routes by the multipart field: it knows the model as `b`
        async with s.post(front + "/v1/chat/completions", data=form) as resp:
            body = await resp.json()
    assert resp.status == 200, body
    assert body["model"] == "b"


async def test_unreachable_and_silent_addresses_answer_503(hosts: Hosts) -> None:
    nothing = free_port_on("127.0.0.5")  # nothing listens there
    silent = socket.socket()  # accepts connections (kernel backlog) but never answers
    silent.bind(("127.0.0.6", 0))
    silent.listen(16)
    try:
        peers = {
            "gone": PeerConfig(name="gone", proxy=f"http://127.0.0.5:{nothing}", models=("x",)),
            "mute": PeerConfig(name="mute", proxy=f"http://127.0.0.6:{silent.getsockname()[1]}", models=("y",)),
        }
        a = await hosts.start(make_config(fake_model("a"), peers=peers), HOST_A,
                              peer_timings=ProbeTimings(interval=5, recheck=0.2, timeout=1.0, connect_timeout=1.0))
        front = url(HOST_A, a)
        async with aiohttp.ClientSession() as s:
            for model, peer in (("gone/x", "gone"), ("mute/y", "mute")):
                started = time.perf_counter()
                status, body = await asyncio.wait_for(chat(s, front, model), GUARD)
                elapsed = time.perf_counter() - started
                print(f"\n{model}: {status} after {1000 * elapsed:.0f} ms")
                assert status == 503 and body["error"]["peer"] == peer, body
            mute = await wait_peer_state(s, front, "mute", "down")
            assert mute["lastError"] == "no answer within 1s"
    finally:
        silent.close()


async def test_api_key_from_env_is_sent_to_the_peer(hosts: Hosts, tmp_path: Path) -> None:
    # the peer here is a plain OpenAI-compatible server (the fake llama-server), not a supervisor
    port = free_port_on(HOST_B)
    proc = subprocess.Popen([sys.executable, "-S", str(FAKE), "--host", HOST_B, "--port", str(port), "--name", "far"],
                            stdout=subprocess.DEVNULL)
    try:
        text = textwrap.dedent(f"""\
            apiKeys: [client-key]
            models: {{}}
            peers:
              lab:
                proxy: http://{HOST_B}:{port}
                apiKey: ${{env.PEER_KEY}}
                models: [far]
            """)
        config = parse_config(text, None, {"PEER_KEY": "sekrit"})
        a = await hosts.start(config, HOST_A)
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer client-key"}) as s:
            await wait_peer_state(s, url(HOST_A, a), "lab", "up")
            async with s.post(url(HOST_A, a) + "/upstream/lab/far/echo", json={"model": "far"}) as resp:
                echoed = await resp.json()
                assert resp.status == 200 and "headers" in echoed, echoed
    finally:
        proc.kill()
        proc.wait()
    headers = {k.lower(): v for k, v in echoed["headers"].items()}
    assert headers["authorization"] == "Bearer sekrit" and headers["x-api-key"] == "sekrit"
    assert "client-key" not in json.dumps(headers)


async def test_reload_adds_and_removes_peers(hosts: Hosts, tmp_path: Path) -> None:
    b = await hosts.start(make_config(fake_model("b")), HOST_B)
    c = await hosts.start(make_config(fake_model("c")), HOST_C)
    path = tmp_path / "a.yaml"

    def write(peer: str, target: Running, host: str, model: str) -> None:
        path.write_text(f"models: {{}}\npeers:\n  {peer}:\n    proxy: {url(host, target)}\n    models: [{model}]\n")

    write("hostb", b, HOST_B, "b")
    a = await hosts.start(load_config(path), HOST_A, loader=load_config)
    front = url(HOST_A, a)
    async with aiohttp.ClientSession() as s:
        await wait_peer_state(s, front, "hostb", "up")
        write("hostc", c, HOST_C, "c")
        async with s.post(front + "/x-reload") as resp:
            assert (await resp.json())["reloaded"] is True
        await wait_peer_state(s, front, "hostc", "up")
        async with s.get(front + "/running") as resp:
            assert [p["peer"] for p in (await resp.json())["peers"]] == ["hostc"]
        assert (await chat(s, front, "hostc/c"))[0] == 200
        status, body = await chat(s, front, "hostb/b")
        assert status == 404 and body["error"]["known"] == ["hostc/c"]


# --------------------------------------------------------------------------- a peer process that stops


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: Path, host: str, port: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "homelab.cli", "serve", "--config", str(config), "--listen", f"{host}:{port}",
             "--drain-timeout", "1"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        deadline = time.monotonic() + GUARD
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host, port), timeout=0.2):
                    return proc
            except OSError:
                assert proc.poll() is None, "homelab serve exited"
                time.sleep(0.05)
        raise AssertionError("homelab serve did not start listening")

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()


async def test_stopped_peer_process_ends_waiting_requests(hosts: Hosts, tmp_path: Path, serve_process) -> None:
    backend_port, peer_port = free_port(), free_port_on(HOST_B)
    config = tmp_path / "b.yaml"
    config.write_text(textwrap.dedent(f"""\
        models:
          slow:
            cmd: {sys.executable} -S {FAKE} --port {backend_port} --name slow --token-rate 4 --tokens 40
            proxy: http://127.0.0.1:{backend_port}
        """))
    peer = serve_process(config, HOST_B, peer_port)
    peers = {"hostb": PeerConfig(name="hostb", proxy=f"http://{HOST_B}:{peer_port}", models=("slow",))}
    a = await hosts.start(make_config(peers=peers), HOST_A,
                          peer_timings=ProbeTimings(interval=1, recheck=0.2, timeout=1.0, fail_after=2))
    front = url(HOST_A, a)
    async with aiohttp.ClientSession() as s:
        await wait_peer_state(s, front, "hostb", "up")
        async with s.post(front + "/v1/chat/completions", json={"model": "hostb/slow", "stream": True}) as resp:
            assert resp.status == 200
            first = await asyncio.wait_for(resp.content.readany(), GUARD)
            assert b"t0" in first
            os.kill(peer.pid, signal.SIGSTOP)  # the host freezes mid-stream: its kernel still accepts
            stopped = time.perf_counter()
            rest = await asyncio.wait_for(resp.content.read(), GUARD)
        print(f"\nstream ended {1000 * (time.perf_counter() - stopped):.0f} ms after the peer froze")
        assert b'"error"' in rest and b"backend failed in the middle" in rest
        await wait_peer_state(s, front, "hostb", "down")
        status, body = await asyncio.wait_for(chat(s, front, "hostb/slow", max_tokens=2), GUARD)
        assert status == 503 and body["error"]["peer"] == "hostb"
        assert "no answer within 1s" in body["error"]["message"]

        os.kill(peer.pid, signal.SIGCONT)  # thawed: served again
        await wait_peer_state(s, front, "hostb", "up")
        status, body = await asyncio.wait_for(chat(s, front, "hostb/slow", max_tokens=2), GUARD)
        assert status == 200 and body["x_server"] == "slow"


# --------------------------------------------------------------------------- the real llama-server


@pytest.mark.e2e
async def test_real_llama_server_behind_a_peer(hosts: Hosts, llama_server_bin: Path, tiny_model: Path) -> None:
    port = free_port()
    cmd = (str(llama_server_bin), "-m", str(tiny_model), "--host", "127.0.0.1", "--port", str(port), "-c", "512",
           "-t", "1", "-np", "2", "--no-webui")
    tiny = ModelConfig(id="tiny", cmd=cmd, proxy=f"http://127.0.0.1:{port}", port=port)
    b = await hosts.start(Config(models={"tiny": tiny}, health_check_timeout=60), HOST_B)
    peers = {"hostb": PeerConfig(name="hostb", proxy=url(HOST_B, b), models=("tiny",))}
    a = await hosts.start(make_config(fake_model("a"), peers=peers), HOST_A)
    front = url(HOST_A, a)
    async with aiohttp.ClientSession() as s:
        await wait_peer_state(s, front, "hostb", "up")
        request = {"model": "hostb/tiny", "max_tokens": 8, "messages": [{"role": "user", "content": "hello"}]}
        async with s.post(front + "/v1/chat/completions", json=request) as resp:
            body = await resp.json()
        assert resp.status == 200, body
        assert body["choices"][0]["message"]["role"] == "assistant" and body["usage"]["completion_tokens"] > 0
        async with s.post(front + "/v1/chat/completions", json={**request, "stream": True}) as resp:
            assert resp.status == 200
            events, _ = await asyncio.wait_for(read_events(resp), 120)
        assert events and events[-1]["choices"][0]["finish_reason"] is not None
        assert not any("error" in e for e in events)
