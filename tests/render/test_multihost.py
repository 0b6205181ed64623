"""Several hosts in the rendered files: llama-swap ``peers:``, ``--rpc`` and ``--tensor-split`` in a
head host's commands, and the rpc-server unit of a worker (``homelab-rpc-<host>.service``).

The example inventory: rig4090 (head: think-split on rpc3090 too; nas as a peer), rpc3090 (an
RPC worker with no models), nas (the peer). The last test runs the rendered rpc-server unit's
``ExecStart`` with the real rpc-server binary.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from processes import stop_group

from homelab.inventory.multihost import PeerLink
from homelab.inventory.schema import Peer, RpcServer
from homelab.render import PlannedModel, RenderError, render_host
from homelab.render.assemble import write_secrets
from homelab.render.units import render_rpc_unit
from homelab.supervisor.config_load import load_config

from .conftest import FAKE_STATE, example_host, fake_inputs, with_runtime


def config_of(files: dict[str, str]) -> dict:
    return yaml.safe_load(files["config.yaml"])


def cmd_lines(model: dict) -> list[str]:
    return [line.strip() for line in model["cmd"].splitlines() if line.strip()]


def unit_values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


# -- the head host: peers, --rpc, --tensor-split --------------------------------------------------


def test_head_host_config_has_peers_and_rpc_and_loads_in_the_supervisor(tmp_path: Path) -> None:
    files = render_host(fake_inputs(example_host("rig4090")))
    config = config_of(files)
    assert config["peers"] == {
        "nas": {"proxy": "http://nas.lan:12434", "apiKey": "${env.HOMELAB_API_KEYS}", "models": ["tiny", "nas-tiny"]}
    }
    split = cmd_lines(config["models"]["think-split"])
    assert "--rpc 192.168.1.31:50052" in split and "--tensor-split 0.52,0.48" in split
    assert not any(line.startswith("--rpc") for line in cmd_lines(config["models"]["chat-4b"]))
    # the key is a reference: the secret never reaches the file
    path = tmp_path / "config.yaml"
    path.write_text(files["config.yaml"])
    loaded = load_config(path, env={"HOMELAB_API_KEYS": "sk-shared"})
    peer = loaded.peers["nas"]
    assert peer.proxy == "http://nas.lan:12434" and peer.api_key == "sk-shared"
    assert peer.models == ("tiny", "nas-tiny")
    cmd = loaded.models["think-split"].cmd
    assert cmd[cmd.index("--rpc") + 1] == "192.168.1.31:50052"
    assert "sk-shared" not in files["config.yaml"]


def test_rpc_workers_keep_the_order_the_host_lists() -> None:
    host = example_host("rig4090")
    model = dataclasses.replace(host.model("think-split"), rpc_workers=("b", "a"))
    host = dataclasses.replace(host, models=(host.model("chat-4b"), model))
    files = render_host(fake_inputs(host, rpc_workers={"a": "10.0.0.1:50052", "b": "10.0.0.2:50053"}))
    assert "--rpc 10.0.0.2:50053,10.0.0.1:50052" in cmd_lines(config_of(files)["models"]["think-split"])


def test_an_rpc_model_without_a_plan_leaves_the_context_to_llama_server() -> None:
    host = example_host("rig4090")
    model = host.model("think-split")
    model = dataclasses.replace(model, server={**model.server, "ctx-size": "auto"})
    host = dataclasses.replace(host, models=(host.model("chat-4b"), model))
    lines = cmd_lines(config_of(render_host(fake_inputs(host, plan={})))["models"]["think-split"])
    assert "--rpc 192.168.1.31:50052" in lines
    assert not any(line.startswith("--ctx-size") for line in lines)  # never `--ctx-size auto`


def test_the_plans_tensor_split_replaces_the_recipes() -> None:
    host = example_host("duo3060")  # think-small sets tensor-split "1,1.5" in the host file
    plan = {"think-small": PlannedModel(vram_mib=(3960, 7940), ctx_size=8192, tensor_split=(0.333333, 0.666667))}
    lines = cmd_lines(config_of(render_host(fake_inputs(host, plan=plan)))["models"]["think-small"])
    assert "--tensor-split 0.333333,0.666667" in lines and "--tensor-split 1,1.5" not in lines
    # without a plan split, the host's value stays
    lines = cmd_lines(config_of(render_host(fake_inputs(host)))["models"]["think-small"])
    assert "--tensor-split 1,1.5" in lines


def test_a_worker_without_an_endpoint_is_a_render_error() -> None:
    with pytest.raises(RenderError, match="RPC worker.*rpc3090.*load_related"):
        render_host(fake_inputs(example_host("rig4090"), rpc_workers={}))


def test_a_build_without_rpc_support_is_a_render_error() -> None:
    with pytest.raises(RenderError, match="without RPC support.*doit build host=rig4090"):
        render_host(fake_inputs(example_host("rig4090"), rpc_support=False))


def test_router_mode_has_no_peers() -> None:
    inputs = fake_inputs(example_host("rig4090"))  # the inventory check would refuse it earlier
    inputs = dataclasses.replace(inputs, host=with_runtime(inputs.host, kind="router"))
    with pytest.raises(RenderError, match="router.*cannot forward.*supervisor or llama-swap"):
        render_host(inputs)


def test_a_peer_name_colliding_with_a_local_name_is_a_render_error() -> None:
    peer = PeerLink(name="nas", url="http://nas.lan:12434", models=("chat-4b",))
    with pytest.raises(RenderError, match="peer 'nas' serves 'chat-4b'"):
        render_host(fake_inputs(example_host("rig4090"), peers=(peer,)))


def test_a_peer_without_a_key_variable_gets_no_api_key() -> None:
    peer = PeerLink(name="nas", url="http://127.0.0.2:12500", models=("tiny",))
    config = config_of(render_host(fake_inputs(example_host("rig4090"), peers=(peer,))))
    assert config["peers"] == {"nas": {"proxy": "http://127.0.0.2:12500", "models": ["tiny"]}}


def test_secrets_get_the_peers_key_variables(tmp_path: Path) -> None:
    head = example_host("rig4090")
    peers = [Peer(host="nas", api_key_env="NAS_KEY")]
    host = dataclasses.replace(head, host=head.host.model_copy(update={"peers": peers}))
    paths = dataclasses.replace(fake_inputs(host).paths, state=tmp_path)
    written = write_secrets(host, paths, {"HOMELAB_API_KEYS": "sk-mine", "NAS_KEY": "sk-nas", "OTHER": "x"})
    assert written == tmp_path / "hosts" / "rig4090" / "secrets.env"
    assert written.read_text() == "HOMELAB_API_KEYS=sk-mine\nNAS_KEY=sk-nas\n"
    assert written.stat().st_mode & 0o777 == 0o600


# -- the worker: only the rpc-server unit -----------------------------------------------------------


def test_a_worker_without_models_renders_only_its_rpc_unit() -> None:
    files = render_host(fake_inputs(example_host("rpc3090")))
    assert sorted(files) == ["homelab.env", "manifest.json", "units/homelab-rpc-rpc3090.service"]
    unit = files["units/homelab-rpc-rpc3090.service"]
    assert unit_values(unit, "ExecStart") == ["/opt/homelab/bin/rpc-server -H 192.168.1.31 -p 50052 -c"]
    assert "no authentication" in unit and "Type=exec" in unit and "ExecReload" not in unit
    # system mode, like the main unit would be: the sandbox and the NVIDIA devices
    assert "User=homelab" in unit and "DeviceAllow=char-nvidia-uvm rw" in unit and "WantedBy=multi-user.target" in unit
    # a system unit's cache: systemd makes /var/cache/homelab/rpc-<host>, owned by the service user
    assert "CacheDirectory=homelab/rpc-rpc3090" in unit.splitlines()
    assert "Environment=LLAMA_CACHE=/var/cache/homelab/rpc-rpc3090" in unit.splitlines()
    assert f"ReadWritePaths=-{FAKE_STATE}/hosts/rpc3090" in unit
    # `-d CUDA0` means the card nvidia-smi lists first
    assert "Environment=CUDA_DEVICE_ORDER=PCI_BUS_ID" in unit
    # rpc-server needs no API key or peer secret
    assert "secrets.env" not in unit


def test_an_rdna2_worker_gets_the_override_its_binary_was_built_for() -> None:
    from homelab.inventory.schema import GPU

    worker = example_host("rpc3090")
    amd = worker.host.model_copy(update={"backend": "hip", "gpus": [GPU(name="RX 6700 XT", vram_mib=12272, arch="gfx1031")]})
    unit = render_rpc_unit(fake_inputs(dataclasses.replace(worker, host=amd)))
    assert "Environment=HSA_OVERRIDE_GFX_VERSION=10.3.0" in unit and "CUDA_DEVICE_ORDER" not in unit


def test_a_user_rpc_unit_keeps_its_cache_in_the_state_folder() -> None:
    unit = render_rpc_unit(fake_inputs(with_runtime(example_host("rpc3090"), service="user")))
    assert f"Environment=LLAMA_CACHE={FAKE_STATE}/hosts/rpc3090/rpc-cache" in unit.splitlines()
    assert "CacheDirectory" not in unit and "secrets.env" not in unit


def test_rpc_unit_flags_threads_devices_no_cache_and_user_mode() -> None:
    worker = example_host("rpc3090")
    server = worker.host.rpc_server.model_copy(update={"cache": False, "threads": 8, "devices": ["CUDA0", "CPU"]})
    host = with_runtime(worker, service="user")
    host = dataclasses.replace(host, host=host.host.model_copy(update={"rpc_server": server}))
    unit = render_rpc_unit(fake_inputs(host))
    assert unit_values(unit, "ExecStart") == ["/opt/homelab/bin/rpc-server -H 192.168.1.31 -p 50052 -t 8 -d CUDA0,CPU"]
    assert "LLAMA_CACHE" not in unit and "User=" not in unit and "WantedBy=default.target" in unit


def test_a_host_with_models_and_rpc_server_renders_both_units() -> None:
    local = example_host("local")
    host = dataclasses.replace(local, host=local.host.model_copy(update={"rpc_server": RpcServer(listen="127.0.0.1:50052")}))
    files = render_host(fake_inputs(host))
    assert {"units/homelab-local.service", "units/homelab-rpc-local.service", "config.yaml"} <= set(files)


# -- end to end: the rendered ExecStart runs the real rpc-server ----------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_rendered_rpc_unit_runs_the_real_rpc_server(llama_server_bin: Path, tmp_path: Path) -> None:
    rpc_server = llama_server_bin.with_name("rpc-server")
    assert rpc_server.is_file(), f"the test build has no rpc-server beside {llama_server_bin}"
    port = free_port()
    worker = example_host("rpc3090")
    server = worker.host.rpc_server.model_copy(update={"listen": f"127.0.0.1:{port}", "threads": 1})
    host = dataclasses.replace(worker, host=worker.host.model_copy(update={"rpc_server": server}))
    host = with_runtime(host, service="user")  # a user unit keeps its cache below the state folder
    inputs = fake_inputs(host, server_binary=llama_server_bin)
    inputs = dataclasses.replace(inputs, paths=dataclasses.replace(inputs.paths, state=tmp_path))
    unit = render_host(inputs)["units/homelab-rpc-rpc3090.service"]
    (exec_start,) = unit_values(unit, "ExecStart")
    argv = shlex.split(exec_start)
    assert argv[0] == str(rpc_server) and argv[1:] == ["-H", "127.0.0.1", "-p", str(port), "-c", "-t", "1"]
    env = {**os.environ, **dict(v.split("=", 1) for v in unit_values(unit, "Environment"))}
    log = tmp_path / "rpc-server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"rpc-server exited with {proc.returncode}:\n{log.read_text()[-2000:]}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"rpc-server never listened on {port}:\n{log.read_text()[-2000:]}"
                time.sleep(0.1)
        # (its banner goes to a block-buffered stdout: the accepted connection is the proof)
        # the unit's LLAMA_CACHE is where -c keeps tensors
        assert (tmp_path / "hosts" / "rpc3090" / "rpc-cache" / "rpc").is_dir()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _tiny_three_hosts(root: Path, models: dict[str, Path]) -> tuple[Path, dict[str, int]]:
    """An inventory of three hosts on this machine: head (tiny-alpha split onto worker's
    rpc-server, beta forwarded to peer), worker (rpc-server only), peer (tiny-beta, API key)."""
    ports = {name: free_port() for name in ("head", "peer", "rpc", "alpha", "beta")}
    (root / "recipes").mkdir(parents=True)
    (root / "hosts").mkdir()
    for name in ("alpha", "beta"):
        (root / "recipes" / f"tiny-{name}.yaml").write_text(
            f"name: tiny-{name}\nsource: {{path: {{path: {models[name]}}}}}\n"
            "server: {ctx-size: 256, batch-size: 64, ubatch-size: 64, parallel: 1, threads: 1}\n"
        )
    (root / "hosts" / "head.yaml").write_text(
        "name: head\nbackend: cpu\n"
        f"runtime: {{listen: '127.0.0.1:{ports['head']}', service: none, api_key_env: TEST_MH_KEY}}\n"
        f"models:\n  - {{recipe: tiny-alpha, port: {ports['alpha']}, rpc: [worker]}}\n"
        "peers: [peer]\n"
    )
    (root / "hosts" / "worker.yaml").write_text(
        f"name: worker\nbackend: cpu\nrpc_server: {{listen: '127.0.0.1:{ports['rpc']}', threads: 1, cache: false}}\n"
    )
    (root / "hosts" / "peer.yaml").write_text(
        "name: peer\nbackend: cpu\n"
        f"runtime: {{listen: '127.0.0.1:{ports['peer']}', service: none, api_key_env: TEST_MH_KEY}}\n"
        f"models:\n  - {{recipe: tiny-beta, port: {ports['beta']}}}\n"
    )
    return root, ports


def _tiny_inputs(host, binary: Path, state: Path):  # noqa: ANN001, ANN202
    from homelab.inventory.multihost import load_related
    from homelab.llamacpp.build import read_flags
    from homelab.render import RenderInputs, StatePaths

    related = load_related(host)
    return RenderInputs(
        host=host,
        server_binary=binary,
        accepted_flags=read_flags(binary, "the test build"),
        model_files={m.id: (Path(m.source.path.path),) for m in host.models},
        model_bytes={m.id: Path(m.source.path.path).stat().st_size for m in host.models},
        paths=StatePaths(state, host.name),
        homelab_executable=binary,
        peers=related.peers,
        rpc_workers=related.workers,
        rpc_support=True,
    )


@pytest.mark.e2e
def test_three_rendered_hosts_split_a_model_over_rpc_and_forward_to_a_peer(
    tmp_path: Path, tiny_models: dict[str, Path], llama_server_bin: Path
) -> None:
    """Everything from rendered files: the worker's rpc-server unit, the head's model cmd with
    --rpc (its weights land on the RPC device), and the head's supervisor forwarding a request
    for the peer's model to the peer's supervisor with the shared key."""
    import json
    import sys
    import urllib.request

    from homelab.inventory import load_host

    inventory, ports = _tiny_three_hosts(tmp_path / "inventory", tiny_models)
    state = tmp_path / "state"
    rendered = {
        name: render_host(_tiny_inputs(load_host(name, inventory), llama_server_bin, state))
        for name in ("head", "worker", "peer")
    }
    assert sorted(rendered["worker"]) == ["homelab.env", "manifest.json", "units/homelab-rpc-worker.service"]
    key = "sk-multihost-test"
    env = {**os.environ, "TEST_MH_KEY": key}
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                assert time.monotonic() < deadline, f"port {port} never opened:\n{log.read_text()[-3000:]}"
                time.sleep(0.1)

    def chat(port: int, model: str) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, {"error": e.read().decode(errors="replace")}

    import urllib.error

    try:
        unit = rendered["worker"]["units/homelab-rpc-worker.service"]
        (exec_start,) = unit_values(unit, "ExecStart")
        rpc_log = tmp_path / "rpc-server.log"
        wait_port(ports["rpc"], start(shlex.split(exec_start), rpc_log), rpc_log)

        for name in ("peer", "head"):
            config = tmp_path / f"{name}.yaml"
            config.write_text(rendered[name]["config.yaml"])
            log = tmp_path / f"{name}-serve.log"
            argv = [sys.executable, "-m", "homelab.cli", "serve", "--config", str(config),
                    "--listen", f"127.0.0.1:{ports[name]}"]  # fmt: skip
            wait_port(ports[name], start(argv, log), log)

        status, body = chat(ports["head"], "tiny-alpha")  # local, layers on the rpc-server
        assert status == 200, f"{body}\n{(tmp_path / 'head-serve.log').read_text()[-3000:]}"
        logs = urllib.request.Request(f"http://127.0.0.1:{ports['head']}/logs", headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(logs, timeout=10) as r:
            backend_log = r.read().decode(errors="replace")
        # llama.cpp names the RPC device by its endpoint where it places the weights
        assert f"127.0.0.1:{ports['rpc']}" in backend_log, backend_log[-3000:]
        status, body = chat(ports["head"], "tiny-beta")  # forwarded to the peer with the key
        assert status == 200, f"{body}\n{(tmp_path / 'head-serve.log').read_text()[-3000:]}"
        status, body = chat(ports["head"], "peer/tiny-beta")
        assert status == 200, body
    finally:
        for proc in procs:
            stop_group(proc)


def test_rpc_comes_before_a_draft_device_that_names_a_worker() -> None:
    """llama-server parses its flags in order, and only ``--rpc`` registers ``RPC0``: a
    ``--spec-draft-device RPC0`` before it exits with ``invalid device: RPC0``."""
    host = example_host("rig4090")
    model = host.model("think-split")
    model = dataclasses.replace(model, server={"spec-draft-device": "RPC0", **model.server})
    host = dataclasses.replace(host, models=(host.model("chat-4b"), model))
    lines = cmd_lines(config_of(render_host(fake_inputs(host)))["models"]["think-split"])
    assert lines.index("--rpc 192.168.1.31:50052") < lines.index("--spec-draft-device RPC0")
