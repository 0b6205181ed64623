"""The systemd unit that runs a host's runtime (``homelab-<host>.service``).

``runtime.service: system`` gets a system unit: a dedicated user (``runtime.user``, default
``homelab``) with ``SupplementaryGroups=render video`` and the full sandbox, the GPU kept
reachable through ``DevicePolicy=closed`` + ``DeviceAllow=``. Every other mode (``user``,
``auto``, and ``none``, which runs the unit's ``ExecStart`` itself) gets a user unit: user
managers cannot enforce device policies, and most sandboxing there needs user namespaces, so it
carries only the settings that work without them.

The unit reads everything through the deploy stage's ``current`` link, so a generation that
changes only ``config.yaml`` leaves the unit byte-identical (a reload, not a restart).
Users' drop-ins (``homelab-<host>.service.d/*.conf``) are theirs: we never write that folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..address import split_host_port
from .backends import host_gpu_env
from .errors import RenderError
from .formats import systemd_word
from .inputs import RenderInputs
from .llamaswap import check_sets
from .sandbox import loopback_only, protect_home
from .templating import render

SUPERVISOR_DRAIN_S = 30
"""``homelab serve --drain-timeout`` default: in-flight requests get this long on stop."""
SUPERVISOR_UNLOAD_S = 10
"""Each backend's SIGTERM grace before SIGKILL (llama-swap's ``unloadTimeout``)."""
STOP_MARGIN_S = 20
TIMEOUT_STOP_S = SUPERVISOR_DRAIN_S + SUPERVISOR_UNLOAD_S + STOP_MARGIN_S
"""systemd must outwait the supervisor's own stop (drain, then stop every backend in parallel)."""

TIMEOUT_START_S = 90
"""Until READY=1 (supervisor: once it listens; preloads continue in the background) or exec."""

DEFAULT_SERVICE_USER = "homelab"

DEVICES = {
    "hip": ["char-kfd rw", "char-drm rw"],
    "cuda": ["char-nvidiactl rw", "char-nvidia-frontend rw", "char-nvidia-uvm rw", "char-nvidia-caps rw"],
    # Vulkan reaches AMD/Intel through DRM and NVIDIA through its own nodes
    "vulkan": ["char-drm rw", "char-nvidiactl rw", "char-nvidia-frontend rw", "char-nvidia-uvm rw"],
    "cpu": [],
}

CONFIG_NAME = "config.yaml"
PRESETS_NAME = "presets.ini"
HOST_ENV_NAME = "homelab.env"


def unit_name(host: str) -> str:
    return f"homelab-{host}.service"


def rpc_unit_name(host: str) -> str:
    """The unit running llama.cpp's ``rpc-server`` on a host with ``rpc_server:`` (contract)."""
    return f"homelab-rpc-{host}.service"


RPC_CACHE_DIR = "rpc-cache"
"""``LLAMA_CACHE`` of a user rpc-server unit, under the host's state folder (rpc-server adds ``rpc/``)."""
SYSTEM_CACHE_ROOT = Path("/var/cache")
"""Where systemd puts a system unit's ``CacheDirectory=``."""


def rpc_cache_directory(host: str) -> str:
    """``CacheDirectory=`` of a system rpc-server unit (relative to /var/cache)."""
    return f"homelab/rpc-{host}"


RPC_TIMEOUT_STOP_S = 20
RPC_WARNING = (
    "llama.cpp's RPC protocol has no authentication and no encryption: anyone who reaches",
    "this port can run tensors and read or write memory here. Keep it on a LAN that only",
    "your machines reach (a firewall rule for the head host's address is best).",
)


def _command(inputs: RenderInputs) -> tuple[list[str], bool, bool]:
    """ExecStart words, Type=notify?, reloadable by SIGHUP?"""
    runtime = inputs.host.host.runtime
    current = inputs.paths.current
    if runtime.kind == "supervisor":
        argv = [
            str(inputs.homelab_executable),
            "serve",
            "--config",
            str(current / CONFIG_NAME),
            "--listen",
            runtime.listen,
        ]
        return argv, True, True
    if runtime.kind == "llama-swap":
        if inputs.llama_swap_binary is None:
            raise RenderError(
                f"{inputs.host.host_file}: runtime.kind llama-swap needs the llama-swap binary: install "
                "it (https://github.com/mostlygeek/llama-swap/releases) on PATH, or use kind: supervisor"
            )
        argv = [str(inputs.llama_swap_binary), "--config", str(current / CONFIG_NAME), "--listen", runtime.listen]
        return argv, False, True
    # router: llama-server itself, one child per model, LRU by count
    address, port = split_host_port(runtime.listen)
    largest_set = _largest_set(inputs)
    argv = [
        str(inputs.server_binary),
        "--models-preset", str(current / PRESETS_NAME),
        "--host", address,
        "--port", str(port),
        "--models-max", str(largest_set),
    ]  # fmt: skip
    if runtime.api_key_env:
        # a file, never argv: every local user can read a process's command line
        argv += ["--api-key-file", str(inputs.paths.api_key_file)]
    return argv, False, False


def _router_env(inputs: RenderInputs) -> list[tuple[str, str]]:
    """Router children inherit the router's environment: host-wide GPU settings go here."""
    if inputs.host.host.runtime.kind != "router":
        return []
    return sorted(host_gpu_env(inputs.host).items())


def _largest_set(inputs: RenderInputs) -> int:
    sets = check_sets(inputs.host)
    sizes = [len(alt) for alternatives in sets.values() for alt in alternatives]
    return max(sizes or [1])


def render_unit(inputs: RenderInputs) -> str:
    host = inputs.host
    runtime = host.host.runtime
    argv, notify, reloadable = _command(inputs)
    paths = inputs.paths
    context = _unit_context(inputs) | {
        "unit": unit_name(host.name).removesuffix(".service"),
        "description": f"homelab LLM server for {host.name} ({runtime.kind} on {runtime.listen})",
        "notify": notify,
        "exec_start": " ".join(systemd_word(w) for w in argv),
        "exec_reload": "/bin/kill -HUP $MAINPID" if reloadable else None,
        "timeout_stop": TIMEOUT_STOP_S,
        "environment": [("HOMELAB_STATE", str(paths.state)), *_router_env(inputs)],
        # one backend killed by the kernel's OOM killer must not stop the endpoint and the others
        "oom_policy": "continue",
        # router mode reads its keys from the key file: its children need no secrets at all
        "secrets_file": None if runtime.kind == "router" else str(paths.secrets_env),
        "loopback_only": loopback_only(inputs),
    }
    return render("homelab.service.j2", **context)


def _unit_context(inputs: RenderInputs) -> dict[str, Any]:
    """What the main unit and the rpc-server unit share: the mode (user/system), the sandbox,
    the GPU devices, the environment files."""
    host = inputs.host
    runtime = host.host.runtime
    paths = inputs.paths
    return {
        "host": host.name,
        "comments": [],
        "system": runtime.service == "system",
        "timeout_start": TIMEOUT_START_S,
        "env_files": [str(paths.current / HOST_ENV_NAME)],
        "secrets_file": str(paths.secrets_env),
        "user": runtime.user or DEFAULT_SERVICE_USER,
        "gpu": host.host.backend != "cpu",
        "devices": DEVICES[host.host.backend],
        "read_write": [str(paths.host_dir)],
        "working_directory": str(paths.host_dir),
        "protect_home": protect_home(inputs),
        # no GPU runtime compiles kernels into executable memory on a CPU host
        "deny_write_execute": host.host.backend == "cpu",
        "oom_policy": None,
        "cache_directory": None,
        "loopback_only": False,
    }


def rpc_server_argv(inputs: RenderInputs) -> list[str]:
    """``rpc-server -H ADDR -p PORT [-c] [-t N] [-d DEV,...]`` (flags of llama.cpp b11434's
    tools/rpc/rpc-server.cpp; it exits 0 on an unknown flag, so only these are written)."""
    server = inputs.host.host.rpc_server
    assert server is not None
    address, port = split_host_port(server.listen)
    argv = [str(inputs.rpc_binary), "-H", address, "-p", str(port)]
    if server.cache:
        argv.append("-c")
    if server.threads is not None:
        argv += ["-t", str(server.threads)]
    if server.devices:
        argv += ["-d", ",".join(server.devices)]
    return argv


def render_rpc_unit(inputs: RenderInputs) -> str:
    """``homelab-rpc-<host>.service``: llama.cpp's rpc-server, same mode and sandbox as the main unit."""
    host = inputs.host
    server = host.host.rpc_server
    if server is None:
        raise RenderError(f"{host.host_file}: host {host.name} has no rpc_server: to render a unit for")
    paths = inputs.paths
    system = host.host.runtime.service == "system"
    environment = [("HOMELAB_STATE", str(paths.state))]
    cache_directory = None
    if server.cache and system:
        # rpc-server keeps received tensors under $LLAMA_CACHE/rpc: systemd makes the folder,
        # owned by the service user, and keeps it across restarts
        cache_directory = rpc_cache_directory(host.name)
        environment.append(("LLAMA_CACHE", str(SYSTEM_CACHE_ROOT / cache_directory)))
    elif server.cache:
        # a user unit: inside the writable state folder
        environment.append(("LLAMA_CACHE", str(paths.host_dir / RPC_CACHE_DIR)))
    # the worker's cards need what a local backend would (HSA override, PCI order for -d CUDAi)
    environment += sorted(host_gpu_env(host).items())
    context = _unit_context(inputs) | {
        "cache_directory": cache_directory,
        # rpc-server needs no API key or peer secret: it never reads secrets.env
        "secrets_file": None,
        "unit": rpc_unit_name(host.name).removesuffix(".service"),
        "comments": list(RPC_WARNING),
        "description": f"homelab llama.cpp rpc-server for {host.name} on {server.listen} (unauthenticated)",
        "notify": False,
        "exec_start": " ".join(systemd_word(w) for w in rpc_server_argv(inputs)),
        "exec_reload": None,
        "timeout_stop": RPC_TIMEOUT_STOP_S,
        "environment": environment,
    }
    return render("homelab.service.j2", **context)


def render_host_env(inputs: RenderInputs) -> str:
    return render(
        "homelab.env.j2",
        host=inputs.host.name,
        host_file=inputs.host.host_file.name,
        env=sorted(inputs.host.host.env.items()),
    )
