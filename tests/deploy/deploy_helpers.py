"""Helpers for deploy tests: rendered directories shaped like the render stage's output."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from homelab.address import free_loopback_port as free_port  # noqa: F401  # the deploy tests import it from here
from homelab.deploy.paths import HostPaths

FAKE_SERVICE = Path(__file__).with_name("fake_service.py")


def render_files(
    host: str,
    listen: str,
    models: dict[str, str],
    unit_extra: str = "",
    build: str = "build-1",
    recipes: str = "recipes-1",
    current: Path | None = None,
) -> dict[str, bytes]:
    """What render produces for a host: config.yaml, one unit, an env file, manifest.json.

    ``models`` maps model ID -> its llama-server flags (a string put into ``cmd``)."""
    current = current or HostPaths.for_host(host).current
    config = {
        "models": {mid: {"cmd": f"llama-server --port ${{PORT}} {flags}"} for mid, flags in models.items()}
    }
    unit = (
        "[Unit]\nDescription=homelab supervisor ({host})\n\n[Service]\nType=simple\n"
        f"EnvironmentFile=-{current}/homelab-{host}.env\n"
        f"ExecStart={sys.executable} {FAKE_SERVICE} --config {current}/config.yaml --listen {listen}\n"
        "ExecReload=/bin/kill -HUP $MAINPID\n"
        f"{unit_extra}\n[Install]\nWantedBy=default.target\n"
    )
    manifest = {"inputs": {"build": build, "recipes": recipes, "lock": "lock-1", "host": "host-1"}}
    return {
        "config.yaml": yaml.safe_dump(config).encode(),
        f"homelab-{host}.service": unit.encode(),
        f"homelab-{host}.env": b"HOMELAB_TEST=1\n",
        "manifest.json": json.dumps(manifest, indent=2).encode(),
    }


TCP_LISTENER = Path(__file__).with_name("tcp_listener.py")


def rpc_unit(host: str, rpc_listen: str, args: str = "", current: Path | None = None) -> dict[str, bytes]:
    """The rpc-server side unit of a worker host (``units/homelab-rpc-HOST.service``), running the
    TCP stand-in; it reads the host's env file, as the rendered one does."""
    current = current or HostPaths.for_host(host).current
    address, port = rpc_listen.rsplit(":", 1)
    unit = (
        f"[Unit]\nDescription=homelab rpc-server ({host})\n\n[Service]\nType=exec\n"
        f"EnvironmentFile=-{current}/homelab-{host}.env\n"
        f"ExecStart={sys.executable} {TCP_LISTENER} -H {address} -p {port} {args}\n"
        "\n[Install]\nWantedBy=default.target\n"
    )
    return {f"units/homelab-rpc-{host}.service": unit.encode()}


def write_inventory(root: Path, host: str, address: str, listen: str, service: str = "none") -> Path:
    """A minimal inventory: one host with one recipe (loadable by homelab.inventory)."""
    (root / "hosts").mkdir(parents=True)
    (root / "recipes").mkdir()
    (root / "recipes" / "tiny.yaml").write_text(
        "name: tiny\nsource:\n  hf: {repo: test/tiny-GGUF, file: tiny.gguf}\nserver:\n  ctx-size: 512\n"
        "profiles:\n  chat: {temperature: 0.7}\n"
    )
    (root / "hosts" / f"{host}.yaml").write_text(
        f"name: {host}\naddress: {address}\nbackend: cpu\nruntime:\n  listen: {listen}\n"
        f"  service: {service}\nmodels:\n  - recipe: tiny\n"
    )
    return root
