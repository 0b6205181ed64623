"""``render_host``: every file of a host's generation, as text, from one :class:`RenderInputs`.

The rendered directory (``HOMELAB_STATE/hosts/<host>/staging``, see :func:`staging_dir`) is what
the deploy stage copies into a numbered generation. Its files:

- ``config.yaml``: llama-swap config (runtime kinds supervisor and llama-swap);
- ``presets.ini``: llama.cpp router presets (always rendered, so every key is checked against
  the build and the router can be tried on any host; the router runtime uses it);
- ``homelab.env``: the host's ``env:`` for the service (EnvironmentFile);
- ``units/homelab-<host>.service``: the systemd unit;
- ``plan.json``: the plan stage's report (when there is one);
- ``manifest.json``: sha256 of every input and of every other output file, the pinned llama.cpp
  (ref, commit, backend) and each model's pinned files with their sha256 (the dashboard's
  Deploy facts show them).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from .. import __version__
from ..settings import state_dir
from .backends import build_backends
from .inputs import RenderInputs
from .llamaswap import render_config
from .presets import render_presets
from .units import (
    CONFIG_NAME,
    HOST_ENV_NAME,
    PRESETS_NAME,
    render_host_env,
    render_rpc_unit,
    render_unit,
    rpc_unit_name,
    unit_name,
)

MANIFEST_NAME = "manifest.json"
PLAN_NAME = "plan.json"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def render_host(inputs: RenderInputs) -> dict[str, str]:
    """Relative path -> content of every file of the host's generation (pure)."""
    host = inputs.host.host
    backends = build_backends(inputs)
    files: dict[str, str] = {HOST_ENV_NAME: render_host_env(inputs)}
    if host.models or host.rpc_server is None:
        files |= {
            CONFIG_NAME: render_config(inputs, backends),
            PRESETS_NAME: render_presets(inputs, backends),
            f"units/{unit_name(inputs.host.name)}": render_unit(inputs),
        }
    # an RPC worker with no models of its own runs only rpc-server
    if host.rpc_server is not None:
        files[f"units/{rpc_unit_name(inputs.host.name)}"] = render_rpc_unit(inputs)
    if inputs.plan_json is not None:
        files[PLAN_NAME] = inputs.plan_json if inputs.plan_json.endswith("\n") else inputs.plan_json + "\n"
    manifest = {
        "host": inputs.host.name,
        "homelab": __version__,
        "runtime": inputs.host.host.runtime.kind,
        "server_binary": str(inputs.server_binary),
        "build_number": inputs.build_number,
        "llama_cpp": _sorted({**inputs.llama_cpp, "backend": host.backend}),
        "models": {mid: [_sorted(f) for f in files] for mid, files in sorted(inputs.model_pins.items())},
        "ports": {b.id: b.port for b in backends},
        "inputs": _sorted(inputs.input_hashes),
        "outputs": {name: sha256_text(text) for name, text in sorted(files.items())},
    }
    files[MANIFEST_NAME] = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    return dict(sorted(files.items()))


def _sorted(value: object) -> object:
    if isinstance(value, Mapping):
        return {str(k): _sorted(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    return value


def staging_dir(host: str, state: Path | None = None) -> Path:
    """Where ``doit render`` / ``homelab render`` put a host's rendered files for deploy to pick up."""
    return (state or state_dir()) / "hosts" / host / "staging"


def installed_dir(host: str, state: Path | None = None) -> Path:
    """The deploy stage's ``current`` generation link."""
    return (state or state_dir()) / "hosts" / host / "current"


def write_generation(files: Mapping[str, str], directory: Path) -> bool:
    """Replace ``directory`` with exactly ``files``; False (nothing touched) when already equal.

    The new tree is written beside it and swapped in with renames, so a reader sees the old or
    the new tree, never a half-written one (between the two renames the path is briefly absent).
    """
    if read_generation(directory) == dict(files):
        return False
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.{os.getpid()}.new")
    old = directory.with_name(f".{directory.name}.{os.getpid()}.old")
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    for name, text in files.items():
        target = tmp / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"generation file name {name!r} escapes the directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    if directory.exists():
        os.rename(directory, old)
    os.rename(tmp, directory)
    if old.exists():
        shutil.rmtree(old)
    return True


def read_generation(directory: Path) -> dict[str, str] | None:
    """Every text file below ``directory`` by relative path (generation metadata left out)."""
    if not directory.is_dir():
        return None
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.name.startswith(".homelab-generation"):
            try:
                files[path.relative_to(directory).as_posix()] = path.read_text()
            except UnicodeDecodeError:
                files[path.relative_to(directory).as_posix()] = "(binary)"
    return files


def diff_generations(old: Mapping[str, str] | None, new: Mapping[str, str], old_label: str, new_label: str) -> str:
    """A unified diff of every file that differs (``manifest.json`` included)."""
    old = old or {}
    out: list[str] = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        out.extend(
            difflib.unified_diff(
                (a or "").splitlines(keepends=True),
                (b or "").splitlines(keepends=True),
                fromfile=f"{old_label}/{name}" if a is not None else "/dev/null",
                tofile=f"{new_label}/{name}" if b is not None else "/dev/null",
            )
        )
    return "".join(line if line.endswith("\n") else line + "\n" for line in out)
