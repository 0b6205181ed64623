"""doit tasks for the render stage (thin: the work lives in homelab.render).

``render:<host>`` writes ``HOMELAB_STATE/hosts/<host>/staging`` (what ``install:<host>`` picks
up). Render is a pure function of its :class:`~homelab.render.inputs.RenderInputs` (host file,
recipes, lock, build and its flags, plan, related hosts, and the hash of homelab's own code and
templates), so the up-to-date check assembles those inputs (cheap: a few small files) and
compares their digest, and the staging directory's content, with a pair known to belong
together (``hosts/<host>/render-check.json``, written after a render or a full check). Only when
they differ is the host rendered in memory and compared with the staging directory (the exact
answer: an input change that renders the same files is still up to date). That keeps a no-op
deploy from compiling the templates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePath
from typing import Any

from ..errors import HomelabError
from ..inventory import ResolvedHost
from .graph import each_host, user_action


def _stable(value: Any) -> Any:
    """Plain, ordered data for hashing any render input (dataclasses, pydantic models, mappings,
    sets, paths); an unknown object falls back to its repr, which at worst makes the check miss
    and render (never the other way round)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"@": type(value).__name__, **{f.name: _stable(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return [[_stable(k), _stable(v)] for k, v in sorted(value.items(), key=lambda kv: repr(kv[0]))]
    if isinstance(value, (set, frozenset)):
        return sorted((_stable(v) for v in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def inputs_digest(inputs: Any) -> str:
    return hashlib.sha256(json.dumps(_stable(inputs), sort_keys=True, default=repr).encode()).hexdigest()


def _staged_digest(staging: Path) -> str | None:
    from ..deploy.generations import content_hash, read_tree

    return content_hash(read_tree(staging)) if staging.is_dir() else None


def _check_file(staging: Path) -> Path:
    return staging.parent / "render-check.json"


def _record(staging: Path, inputs_hash: str) -> None:
    """Remember that ``staging`` holds what these inputs render to (atomically: temp + rename)."""
    record = {"inputs": inputs_hash, "staged": _staged_digest(staging)}
    path = _check_file(staging)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record) + "\n")
    tmp.replace(path)


def _recorded(staging: Path) -> dict[str, Any]:
    try:
        data = json.loads(_check_file(staging).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _render(host: ResolvedHost) -> None:
    from ..render.assemble import assemble, write_secrets
    from ..render.generation import render_host, staging_dir, write_generation

    inputs = assemble(host)
    changed = write_generation(render_host(inputs), staging_dir(host.name))
    write_secrets(host, inputs.paths, peers=inputs.peers)
    print(f"{'rendered' if changed else 'unchanged'}: {staging_dir(host.name)}")
    _record(staging_dir(host.name), inputs_digest(inputs))


def _rendered(host: ResolvedHost) -> Any:
    def uptodate(task: Any, values: dict[str, Any]) -> bool:
        from ..render.assemble import assemble
        from ..render.generation import read_generation, render_host, staging_dir

        try:
            inputs = assemble(host)
            staging = staging_dir(host.name)
            digest, recorded = inputs_digest(inputs), _recorded(staging)
            if recorded.get("inputs") == digest and recorded.get("staged") == _staged_digest(staging):
                return True
            same = read_generation(staging) == render_host(inputs)
        except HomelabError:
            return False  # the action runs and reports the problem
        if same:
            _record(staging, digest)
        return same

    return uptodate


def task_render() -> Iterator[dict[str, Any]]:
    """Render llama-swap config, router presets and systemd units."""
    from ..render.generation import MANIFEST_NAME, staging_dir

    yield {"basename": "render", "name": None, "doc": "Render llama-swap config, router presets and systemd units"}
    for host in each_host():
        yield {
            "name": host.name,
            "doc": f"Render llama-swap config, router presets and systemd units ({host.name})",
            "actions": [(user_action(_render), [host])],
            "targets": [str(staging_dir(host.name) / MANIFEST_NAME)],
            "uptodate": [_rendered(host)],
            "task_dep": [f"build:{host.name}", f"plan:{host.name}", f"fetch:{host.name}"],
            "verbosity": 2,
        }
