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

from typing import Any

from .backends import host_hsa_override
from .errors import RenderError
from .formats import systemd_word
from .inputs import RenderInputs
from .llamaswap import check_sets
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


def _command(inputs: RenderInputs) -> tuple[list[str], bool, bool]:
    """ExecStart words, Type=notify?, reloadable by SIGHUP?"""
    runtime = inputs.host.host.runtime
    current = inputs.paths.current
    if runtime.kind == "supervisor":
        argv = [str(inputs.homelab_executable), "serve", "--config", str(current / CONFIG_NAME), "--listen", runtime.listen]
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
    address, port = runtime.listen.rsplit(":", 1)
    largest_set = _largest_set(inputs)
    argv = [
        str(inputs.server_binary),
        "--models-preset", str(current / PRESETS_NAME),
        "--host", address,
        "--port", port,
        "--models-max", str(largest_set),
    ]  # fmt: skip
    if runtime.api_key_env:
        argv += ["--api-key", "${" + runtime.api_key_env + "}"]
    return argv, False, False


def _router_env(inputs: RenderInputs) -> list[tuple[str, str]]:
    """Router children inherit the router's environment: a host-wide HSA override goes here."""
    if inputs.host.host.runtime.kind != "router":
        return []
    override = host_hsa_override(inputs.host)
    return [("HSA_OVERRIDE_GFX_VERSION", override)] if override else []


def _largest_set(inputs: RenderInputs) -> int:
    sets = check_sets(inputs.host)
    sizes = [len(alt) for alternatives in sets.values() for alt in alternatives]
    return max(sizes or [1])


def _word(word: str) -> str:
    # ${VAR} in a router ExecStart is meant for systemd's expansion; everything else is literal
    if word.startswith("${") and word.endswith("}") and word[2:-1].isidentifier():
        return word
    return systemd_word(word)


def render_unit(inputs: RenderInputs) -> str:
    host = inputs.host
    runtime = host.host.runtime
    argv, notify, reloadable = _command(inputs)
    system = runtime.service == "system"
    gpu = host.host.backend != "cpu"
    paths = inputs.paths
    context: dict[str, Any] = {
        "host": host.name,
        "description": f"homelab LLM server for {host.name} ({runtime.kind} on {runtime.listen})",
        "system": system,
        "notify": notify,
        "exec_start": " ".join(_word(w) for w in argv),
        "exec_reload": "/bin/kill -HUP $MAINPID" if reloadable else None,
        "timeout_stop": TIMEOUT_STOP_S,
        "timeout_start": TIMEOUT_START_S,
        "env_files": [str(paths.current / HOST_ENV_NAME)],
        "secrets_file": str(paths.secrets_env),
        "environment": [("HOMELAB_STATE", str(paths.state)), *_router_env(inputs)],
        "user": runtime.user or DEFAULT_SERVICE_USER,
        "gpu": gpu,
        "devices": DEVICES[host.host.backend],
        "read_write": [str(paths.host_dir)],
        "working_directory": str(paths.host_dir),
    }
    return render("homelab.service.j2", **context)


def render_host_env(inputs: RenderInputs) -> str:
    return render("homelab.env.j2", host=inputs.host.name, host_file=inputs.host.host_file.name,
                  env=sorted(inputs.host.host.env.items()))
