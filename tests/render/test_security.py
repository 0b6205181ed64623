"""What the rendered files expose: keys never in argv, secrets only where needed, backends that
check keys under upstream llama-swap, and a sandbox that follows where the files live."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest
import yaml

from homelab.render import StatePaths, render_host
from homelab.render.assemble import write_secrets
from homelab.supervisor.config_load import ConfigError, load_config

from .conftest import example_host, fake_inputs, with_runtime

LLAMA_SWAP = Path("/usr/local/bin/llama-swap")


def test_llama_swap_backends_check_the_endpoint_keys_from_a_file() -> None:
    host = with_runtime(example_host("xtx"), kind="llama-swap", api_key_env="HOMELAB_API_KEYS")
    config = yaml.safe_load(render_host(fake_inputs(host, llama_swap_binary=LLAMA_SWAP))["config.yaml"])
    assert "--api-key-file /var/lib/homelab/hosts/xtx/api-keys" in config["macros"]["common"]
    for model in config["models"].values():
        assert "${common}" in model["cmd"]
        # the service's secret reaches no backend: llama-swap passes its environment on otherwise
        assert "HOMELAB_API_KEYS=" in model["env"]


def test_backends_get_no_key_flag_without_keys_or_under_homelab_serve() -> None:
    plain = yaml.safe_load(render_host(fake_inputs(with_runtime(example_host("xtx"), kind="llama-swap"),
                                                   llama_swap_binary=LLAMA_SWAP))["config.yaml"])
    assert "api-key" not in plain["macros"]["common"]
    served = yaml.safe_load(render_host(fake_inputs(with_runtime(example_host("xtx"), api_key_env="K")))["config.yaml"])
    assert "api-key" not in served["macros"]["common"]


def test_an_api_key_with_space_hash_is_not_cut(tmp_path: Path) -> None:
    """``${env.X}`` is substituted into the YAML text: a plain scalar would end at `` #``."""
    host = with_runtime(example_host("local"), api_key_env="HOMELAB_API_KEYS")
    text = render_host(fake_inputs(host))["config.yaml"]
    assert '  - "${env.HOMELAB_API_KEYS}"' in text.splitlines()
    path = tmp_path / "config.yaml"
    path.write_text(text)
    config = load_config(path, env={"HOMELAB_API_KEYS": 'sk-a#b:"c"\\d'})
    assert config.api_keys == ('sk-a#b:"c"\\d',)
    # a plain scalar would have kept "sk-a" and dropped the rest as a comment: a shorter key that
    # still works; quoted, the whole value arrives and is refused for its space
    with pytest.raises(ConfigError, match="cannot contain spaces"):
        load_config(path, env={"HOMELAB_API_KEYS": "sk-a #b"})


def test_router_key_file_is_private_and_follows_secrets_env(tmp_path: Path) -> None:
    host = with_runtime(example_host("local"), kind="router", api_key_env="HOMELAB_API_KEYS")
    paths = StatePaths(tmp_path, "local")
    write_secrets(host, paths, environ={"HOMELAB_API_KEYS": "sk-a, sk-b"}, peers=())
    assert paths.api_key_file.read_text() == "sk-a\nsk-b\n"
    assert stat.S_IMODE(paths.api_key_file.stat().st_mode) == 0o600
    # a secrets.env kept by hand, no variable in this environment: the key file follows the file
    paths.secrets_env.write_text("OTHER=x\nHOMELAB_API_KEYS='sk-c'\n")
    write_secrets(host, paths, environ={}, peers=())
    assert paths.api_key_file.read_text() == "sk-c\n"


def test_homelab_serve_gets_no_key_file(tmp_path: Path) -> None:
    host = with_runtime(example_host("local"), api_key_env="HOMELAB_API_KEYS")
    paths = StatePaths(tmp_path, "local")
    write_secrets(host, paths, environ={"HOMELAB_API_KEYS": "sk-a"}, peers=())
    assert paths.secrets_env.is_file() and not paths.api_key_file.exists()


def test_every_main_unit_survives_a_backend_oom() -> None:
    for name in ("xtx", "local", "nas"):
        unit = render_host(fake_inputs(example_host(name)))[f"units/homelab-{name}.service"]
        assert "OOMPolicy=continue" in unit.splitlines()


def test_home_folders_stay_readable_when_weights_live_there() -> None:
    host = with_runtime(example_host("local"), service="system")
    inputs = fake_inputs(host)
    hidden = render_host(inputs)["units/homelab-local.service"]
    assert "ProtectHome=yes" in hidden.splitlines()
    weights = {k: (Path("/home/me/models/m.gguf"),) for k in inputs.model_files}
    unit = render_host(dataclasses.replace(inputs, model_files=weights))["units/homelab-local.service"]
    assert "ProtectHome=read-only" in unit.splitlines()


def test_network_is_limited_to_loopback_only_when_nothing_else_is_needed() -> None:
    local = with_runtime(example_host("local"), service="system")
    assert "IPAddressDeny=any" in render_host(fake_inputs(local))["units/homelab-local.service"]
    lan = with_runtime(example_host("local"), service="system", listen="0.0.0.0:12434", api_key_env="K")
    assert "IPAddressDeny" not in render_host(fake_inputs(lan))["units/homelab-local.service"]
    head = with_runtime(example_host("rig4090"), service="system")  # peers and an RPC split
    assert "IPAddressDeny" not in render_host(fake_inputs(head))["units/homelab-rig4090.service"]
    tools = dataclasses.replace(local, models=tuple(
        dataclasses.replace(m, server={**m.server, "tools": "all"}) for m in local.models))
    assert "IPAddressDeny" not in render_host(fake_inputs(tools))["units/homelab-local.service"]


def test_a_cpu_host_denies_writable_executable_memory_and_needs_no_gpu_groups() -> None:
    unit = render_host(fake_inputs(with_runtime(example_host("nas"), service="system")))["units/homelab-nas.service"]
    lines = unit.splitlines()
    assert "MemoryDenyWriteExecute=yes" in lines and not any(line.startswith("SupplementaryGroups") for line in lines)
    gpu = render_host(fake_inputs(with_runtime(example_host("xtx"), service="system")))["units/homelab-xtx.service"]
    assert "MemoryDenyWriteExecute=yes" not in gpu.splitlines() and "SupplementaryGroups=render video" in gpu


def test_the_names_peers_use_are_the_hosts_the_supervisor_answers_to(tmp_path: Path) -> None:
    """nas listens on every interface and rig4090 reaches it as nas.lan: the rendered config
    lets `homelab serve` answer to that name (any other name is refused: DNS rebinding)."""
    text = render_host(fake_inputs(example_host("nas")))["config.yaml"]
    assert yaml.safe_load(text)["x-security"] == {"allowedHosts": ["nas.lan"]}
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert load_config(path, env={"HOMELAB_API_KEYS": "k"}).security.allowed_hosts == ("nas.lan",)
    # loopback-only endpoints, and addresses given as IPs, need no names
    assert "x-security" not in yaml.safe_load(render_host(fake_inputs(example_host("xtx")))["config.yaml"])
    lan_ip = with_runtime(example_host("rig4090"), listen="0.0.0.0:12434")
    assert "x-security" not in yaml.safe_load(render_host(fake_inputs(lan_ip))["config.yaml"])
