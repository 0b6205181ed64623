"""The rendered files drive the real llama-server: each model's cmd serves /health, and the
presets file runs llama-server's router mode and answers a chat request.

Fast: two tiny models (1.3 MB each), 256-token context, four generated tokens.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from processes import stop_group

from homelab.inventory import ResolvedHost, load_host
from homelab.llamacpp.build import read_flags
from homelab.llamacpp.flags import AcceptedFlags
from homelab.render import RenderInputs, StatePaths, render_host
from homelab.supervisor.config_load import load_config

pytestmark = pytest.mark.e2e

STARTUP_S = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def post(url: str, body: dict, timeout: float = 60.0) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {"error": e.read().decode(errors="replace")}


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode} before {url} answered:\n{log.read_text()[-3000:]}")
        try:
            status, _ = get(url)
            if status == 200:
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} not healthy within {STARTUP_S}s:\n{log.read_text()[-3000:]}")


@contextmanager
def running(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        # the process group is ours alone (new session): it holds the router's children too
        stop_group(proc)


@pytest.fixture
def tiny_inventory(tmp_path: Path, tiny_models: dict[str, Path]) -> Path:
    inventory = tmp_path / "inventory"
    (inventory / "recipes").mkdir(parents=True)
    (inventory / "hosts").mkdir()
    for name in ("alpha", "beta"):
        (inventory / "recipes" / f"tiny-{name}.yaml").write_text(
            f"name: tiny-{name}\n"
            f"source: {{path: {{path: {tiny_models[name]}}}}}\n"
            "server: {ctx-size: 256, batch-size: 64, ubatch-size: 64, parallel: 1, threads: 2,"
            " cache-type-k: q4_0, cache-type-v: q4_0, flash-attn: 'on', jinja: true}\n"
            f"aliases: [{name}-alias]\n"
            "profiles: {precise: {temperature: 0.0}, loose: {temperature: 1.0}}\n"
        )
    (inventory / "hosts" / "tiny.yaml").write_text(
        "name: tiny\nbackend: cpu\n"
        f"runtime: {{kind: supervisor, listen: '127.0.0.1:{free_port()}', service: none}}\n"
        "models:\n"
        f"  - {{recipe: tiny-alpha, port: {free_port()}, preload: true}}\n"
        f"  - {{recipe: tiny-beta, port: {free_port()}}}\n"
        "sets: {both: 'tiny-alpha & tiny-beta'}\n"
    )
    return inventory


def test_rendered_files_run_the_real_llama_server(
    tmp_path: Path, tiny_inventory: Path, tiny_models: dict[str, Path], llama_server_bin: Path
) -> None:
    host = load_host("tiny", tiny_inventory)
    accepted = read_flags(llama_server_bin, "the test build")  # the full table: names and values
    files = render_host(_inputs(host, llama_server_bin, accepted, tmp_path))
    config_path = tmp_path / "config.yaml"
    config_path.write_text(files["config.yaml"])
    config = load_config(config_path, env={})
    assert set(config.models) == {"tiny-alpha", "tiny-beta"}
    assert config.resolve("tiny-beta:precise") == "tiny-beta"
    assert config.hooks.preload == ("tiny-alpha",)

    for model in config.models.values():
        log = tmp_path / f"{model.id}.log"
        with running(list(model.cmd), {**os.environ, **model.env}, log) as proc:
            wait_healthy(f"{model.proxy}/health", proc, log)

    presets = tmp_path / "presets.ini"
    presets.write_text(files["presets.ini"])
    port = free_port()
    log = tmp_path / "router.log"
    argv = [str(llama_server_bin), "--models-preset", str(presets), "--host", "127.0.0.1", "--port", str(port)]
    with running(argv, dict(os.environ), log) as proc:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, log)
        status, body = post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            {"model": "beta-alias", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        )
        assert status == 200, f"{body}\n{log.read_text()[-3000:]}"
        assert body["choices"][0]["message"] is not None
        status, models = get(f"http://127.0.0.1:{port}/models")
        assert status == 200
        ids = {m.get("id") for m in json.loads(models)["data"]}
        assert {"tiny-alpha", "tiny-beta"} <= ids


def _inputs(host: ResolvedHost, binary: Path, accepted: AcceptedFlags, tmp_path: Path) -> RenderInputs:
    return RenderInputs(
        host=host,
        server_binary=binary,
        accepted_flags=accepted,
        model_files={m.id: (Path(m.source.path.path),) for m in host.models},
        model_bytes={m.id: Path(m.source.path.path).stat().st_size for m in host.models},
        paths=StatePaths(tmp_path / "state", host.name),
        homelab_executable=binary,
    )


@pytest.mark.parametrize("kind", ["supervisor", "router"])
def test_example_hosts_pass_the_real_builds_flag_table(llama_server_bin: Path, kind: str) -> None:
    from .conftest import example_host, fake_inputs, with_runtime

    accepted = read_flags(llama_server_bin, "the test build")
    for name in ("xtx", "duo3060", "local", "rig4090", "nas"):
        # peers do not change flags (and router mode refuses them): left out here
        inputs = fake_inputs(example_host(name), accepted_flags=accepted, peers=())
        files = render_host(dataclasses.replace(inputs, host=with_runtime(inputs.host, kind=kind)))
        assert files["presets.ini"].count("\n[") == len(example_host(name).models) + 1


def test_supervisor_serves_the_rendered_config(tmp_path: Path, tiny_inventory: Path, llama_server_bin: Path) -> None:
    """`homelab serve` on the rendered config: a profile ID and an alias reach the right model."""
    import sys

    host = load_host("tiny", tiny_inventory)
    files = render_host(_inputs(host, llama_server_bin, read_flags(llama_server_bin, "the test build"), tmp_path))
    config = tmp_path / "config.yaml"
    config.write_text(files["config.yaml"])
    listen = host.host.runtime.listen
    log = tmp_path / "serve.log"
    argv = [sys.executable, "-m", "homelab.cli", "serve", "--config", str(config), "--listen", listen]
    with running(argv, dict(os.environ), log) as proc:
        wait_healthy(f"http://{listen}/health", proc, log)
        for name in ("tiny-beta:precise", "alpha-alias"):
            status, body = post(
                f"http://{listen}/v1/chat/completions",
                {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            )
            assert status == 200, f"{name}: {body}\n{log.read_text()[-3000:]}"
        status, running_models = get(f"http://{listen}/running")
        assert status == 200
        assert {m["model"] for m in json.loads(running_models)["running"]} == {"tiny-alpha", "tiny-beta"}  # the set


def test_a_llama_swap_backend_answers_only_with_an_endpoint_key(
    tmp_path: Path, tiny_inventory: Path, llama_server_bin: Path
) -> None:
    """Under upstream llama-swap (which passes the client's Authorization header through), each
    backend checks the endpoint's keys from the key file: a direct call to its port needs one."""
    from homelab.render.assemble import write_secrets

    from .conftest import with_runtime

    host = with_runtime(load_host("tiny", tiny_inventory), kind="llama-swap", api_key_env="TINY_KEYS")
    inputs = dataclasses.replace(
        _inputs(host, llama_server_bin, read_flags(llama_server_bin, "the test build"), tmp_path),
        llama_swap_binary=Path("/usr/local/bin/llama-swap"),
    )
    write_secrets(host, inputs.paths, environ={"TINY_KEYS": "sk-one,sk-two"}, peers=())
    config_path = tmp_path / "config.yaml"
    config_path.write_text(render_host(inputs)["config.yaml"])
    model = load_config(config_path, env={"TINY_KEYS": "sk-one,sk-two"}).models["tiny-alpha"]
    assert "--api-key-file" in model.cmd and "sk-one" not in " ".join(model.cmd)
    log = tmp_path / "alpha.log"
    with running(list(model.cmd), {**os.environ, **model.env}, log) as proc:
        wait_healthy(f"{model.proxy}/health", proc, log)  # llama-swap's health check needs no key
        body = {"model": "tiny-alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

        def ask(key: str | None) -> int:
            headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
            request = urllib.request.Request(
                f"{model.proxy}/v1/chat/completions", data=json.dumps(body).encode(), headers=headers
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        assert ask(None) == 401
        assert ask("sk-wrong") == 401
        assert ask("sk-two") == 200
        status, _ = get(f"{model.proxy}/slots")
        assert status == 401  # other people's prompts stay behind the key
