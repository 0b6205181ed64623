"""End to end: a tiny model split over two real ``rpc-server`` workers on loopback.

The plan (an inventory with a head host and two CPU workers) chooses the ``--tensor-split``;
the real ``llama-server`` (b11434, from the build fixture) loads the model with ``--rpc`` to both
workers and that split, serves a completion, and reports at ``-lv 4`` what it put on each
device. Those buffers must be what the plan said, device by device.

Tolerances (why they are what they are): weights and KV are exact sizes, and llama.cpp prints
MiB with two decimals, so they must agree within 0.01 MiB per buffer plus 0.5% (alignment
padding of each tensor in a buffer). The compute buffer is a fitted formula (``homelab bench
plan``: within 3% on every device of the split rows, pipeline-parallel copies included), so it
and each device's total get 5%.
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from processes import stop_group

from homelab.inventory import load_host
from homelab.plan.observe import local_rpc_servers, parse_server_log, rpc_server_beside
from homelab.plan.stage import make_plan
from homelab.testing.tiny_gguf import TinySpec, write_tiny_llama

DEEP = TinySpec(n_embd=256, n_head=8, n_head_kv=2, n_ff=1024, n_layer=12, name="deep")
START_TIMEOUT = 60.0
LAYER_LINE = re.compile(r"load_tensors: layer\s+(\d+) assigned to device (\S+?),")
MIB = 1024 * 1024


@pytest.fixture
def rpc_server_bin(llama_server_bin: Path) -> Path:
    found = rpc_server_beside(llama_server_bin)
    if found is not None:
        return found
    pytest.skip(f"no rpc-server beside {llama_server_bin} (build with GGML_RPC=ON and the rpc-server target)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Processes:
    """Every process a test starts; all are stopped (their whole process group) at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            stop_group(proc, grace=10)


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop_all()


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama-server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    pytest.fail(f"llama-server not healthy after {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


def write_inventory(root: Path, model: Path, ports: tuple[int, int]) -> Path:
    (root / "hosts").mkdir(parents=True)
    (root / "recipes").mkdir()
    (root / "recipes" / "deep.yaml").write_text(
        f"name: deep\nsource: {{path: {{path: {model}}}}}\nserver: {{ctx-size: 4096, parallel: 1}}\n"
    )
    (root / "hosts" / "head.yaml").write_text(
        "name: head\nbackend: cpu\nram_mib: 4096\nmodels:\n  - recipe: deep\n    rpc: [w1, w2]\n"
    )
    # unequal budgets, so the split is not the trivial half and half: 10 + 3 layers
    for name, port, ram in (("w1", ports[0], 300), ("w2", ports[1], 100)):
        (root / "hosts" / f"{name}.yaml").write_text(
            f"name: {name}\nbackend: cpu\nram_mib: {ram}\nrpc_server: {{listen: '127.0.0.1:{port}', threads: 1}}\n"
        )
    return root


def test_model_split_over_two_rpc_servers_serves_and_matches_the_plan(
    llama_server_bin: Path, rpc_server_bin: Path, processes: Processes, tmp_path: Path
) -> None:
    logging.getLogger("gguf").setLevel(logging.WARNING)
    model = write_tiny_llama(tmp_path / "deep.gguf", DEEP)
    with local_rpc_servers(rpc_server_bin, 2) as endpoints:
        serve_and_compare(llama_server_bin, model, endpoints, processes, tmp_path)


def serve_and_compare(
    llama_server_bin: Path, model: Path, endpoints: list[str], processes: Processes, tmp_path: Path
) -> None:
    ports = (int(endpoints[0].rsplit(":", 1)[1]), int(endpoints[1].rsplit(":", 1)[1]))
    inv = write_inventory(tmp_path / "inv", model, ports)

    plan, _ = make_plan(load_host("head", inv))
    assert plan.fits, plan.problems
    planned = plan.to_json()["models"]["deep"]
    split = planned["tensor_split"]
    assert split == [10, 3]

    port = free_port()
    log = tmp_path / "llama-server.log"
    server = processes.start(
        [
            str(llama_server_bin), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
            "--rpc", ",".join(endpoints), "-ngl", "99", "--tensor-split", ",".join(str(x) for x in split),
            "--ctx-size", str(planned["ctx_size"]), "--parallel", "1", "-t", "1",
            "-lv", "5", "--log-colors", "off",  # 5: also "layer N assigned to device X"
        ],
        log,
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, server, log)

    resp = requests.post(
        url + "/completion",
        json={"prompt": "Hello", "n_predict": 8, "temperature": 0, "seed": 1},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["tokens_predicted"] > 0 and body["content"], body

    text = log.read_text(errors="replace")
    obs = parse_server_log(text)
    # layer by layer: llama.cpp's own assignment (the last index is the output layer) is the plan's
    theirs_layers = {int(m[1]): m[2] for m in LAYER_LINE.finditer(text)}
    ours_layers: dict[int, str] = {}
    for part in planned["split"]:
        for _ in range(part["n_layers"]):
            ours_layers[len(ours_layers)] = part["device"]
    assert theirs_layers == ours_layers
    for part in planned["split"]:
        buffer = part["buffer"]  # RPC0[127.0.0.1:<port>]: llama.cpp names each worker's buffers so
        ours = planned["devices"][part["host_device"]]
        for term, theirs in (("weights", obs.model), ("kv", obs.kv)):
            assert buffer in theirs, f"no {term} buffer {buffer} in the log: {theirs}"
            tolerance = 0.01 * MIB + 0.005 * theirs[buffer]
            assert abs(ours[term] - theirs[buffer]) <= tolerance, (part, term, ours[term], theirs[buffer])
        assert abs(ours["compute"] - obs.compute[buffer]) <= 0.05 * obs.compute[buffer], (part, ours, obs.compute)
        device_total = obs.model[buffer] + obs.kv[buffer] + obs.compute[buffer]
        ours_total = ours["weights"] + ours["kv"] + ours["compute"]
        assert abs(ours_total - device_total) <= 0.05 * device_total, (part, ours_total, device_total)
    # the head keeps only the input embedding in host memory (CPU, or CPU_Mapped with mmap):
    # every layer is on a worker
    remote = {p["buffer"] for p in planned["split"]}
    head = {k: v for k, v in obs.model.items() if k not in remote}
    assert all(k.startswith("CPU") for k in head), obs.model
    assert abs(sum(head.values()) - planned["devices"]["cpu"]["weights"]) <= 0.01 * MIB
