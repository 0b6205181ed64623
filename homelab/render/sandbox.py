"""Sandbox settings of a system unit that depend on the host: where its files live, whom it talks to.

Both are conservative: a setting is tightened only when every path or peer the service needs is
known to stay reachable.
"""

from __future__ import annotations

from pathlib import Path

from ..address import is_loopback, split_host_port
from ..inventory.powers import POWER_FLAGS
from .inputs import RenderInputs

HOME_ROOTS = (Path("/home"), Path("/root"), Path("/run/user"))
"""What ``ProtectHome=yes`` hides."""


def _interpreter(script: Path) -> Path | None:
    """The interpreter a ``#!`` script (the ``homelab`` console script) runs, if readable here."""
    try:
        with script.open("rb") as f:
            first = f.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    return Path(words[0]) if words else None


def _needed_paths(inputs: RenderInputs) -> list[Path]:
    paths = [inputs.server_binary, inputs.homelab_executable, inputs.paths.state]
    paths += [f for files in inputs.model_files.values() for f in files]
    paths += list(inputs.mmproj.values())
    if inputs.llama_swap_binary is not None:
        paths.append(inputs.llama_swap_binary)
    interpreter = _interpreter(inputs.homelab_executable)
    if interpreter is not None:
        paths.append(interpreter)
    # a venv's python is a link to the base interpreter (and its standard library) elsewhere
    return [p.resolve() if p.exists() else p for p in paths]


def protect_home(inputs: RenderInputs) -> str:
    """``yes`` (home folders hidden) when nothing the service runs or reads lives in one, else
    ``read-only`` (weights or a venv under /home stay readable)."""
    for path in _needed_paths(inputs):
        if any(path == root or root in path.parents for root in HOME_ROOTS):
            return "read-only"
    return "yes"


def loopback_only(inputs: RenderInputs) -> bool:
    """The service talks to nothing but this machine: it listens on loopback, forwards to no
    peer, splits no model over RPC workers, and runs no model with tools (which may reach out)."""
    host = inputs.host
    if not is_loopback(split_host_port(host.host.runtime.listen)[0]) or inputs.peers:
        return False
    for model in host.models:
        if model.rpc_workers or any(name in POWER_FLAGS for name in model.server):
            return False
    return True
