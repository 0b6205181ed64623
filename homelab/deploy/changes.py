"""What changed between two generations, and what the running service must do about it.

- no current generation: ``start``;
- only the supervisor's ``config.yaml`` (and presets) changed, with the same units, env files and
  build: ``reload`` (SIGHUP; the supervisor restarts only the models whose definition changed);
- anything else a running process depends on (units, env files, the build or homelab itself):
  ``restart``;
- only input hashes in ``manifest.json`` changed (a recipe's description, say): ``none``.

Runtimes other than the bundled supervisor cannot reload selectively: any change restarts them.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

MANIFEST = "manifest.json"
RELOADABLE = frozenset({"config.yaml", "presets.ini"})
"""Files the supervisor re-reads on SIGHUP."""
RESTART_INPUTS = ("build", "homelab")
"""Manifest input names whose change means new binaries or new supervisor code."""

ACTIONS = ("none", "reload", "restart", "start")


@dataclass
class Changes:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    """Manifest input names whose hash changed (lock, recipes, host file, patches, build...)."""

    @property
    def files(self) -> list[str]:
        return sorted(self.added + self.removed + self.modified)

    def __bool__(self) -> bool:
        return bool(self.files or self.inputs)

    def summary(self) -> list[str]:
        lines = [f"+ {name}" for name in self.added]
        lines += [f"- {name}" for name in self.removed]
        lines += [f"~ {name}" for name in self.modified if name != MANIFEST]
        # outputs.* in the manifest mirror the files listed above; inputs.* name what changed
        lines += [f"input {name.removeprefix('inputs.')}" for name in self.inputs if not name.startswith("outputs.")]
        return lines


def _manifest_inputs(data: bytes | None) -> dict[str, str]:
    """Flatten manifest.json into ``name -> hash`` strings (nested dicts joined with '.')."""
    if not data:
        return {}
    try:
        manifest = json.loads(data)
    except ValueError:
        return {}
    flat: dict[str, str] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = json.dumps(value, sort_keys=True)

    walk("", manifest)
    return flat


def compare(old: Mapping[str, bytes] | None, new: Mapping[str, bytes]) -> Changes:
    old = old or {}
    changes = Changes(
        added=sorted(set(new) - set(old)),
        removed=sorted(set(old) - set(new)),
        modified=sorted(n for n in set(old) & set(new) if old[n] != new[n]),
    )
    before, after = _manifest_inputs(old.get(MANIFEST)), _manifest_inputs(new.get(MANIFEST))
    changes.inputs = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return changes


def _strip_input_prefix(name: str) -> str:
    return name.split(".", 1)[1] if name.startswith("inputs.") else name


def action_for(
    changes: Changes, has_current: bool, runtime_kind: str = "supervisor", side_files: Collection[str] = ()
) -> str:
    """What the main unit must do. ``side_files`` (side units such as the rpc-server unit) are
    left out: the service restarts a side unit on its own changes, never the endpoint for them."""
    if not has_current:
        return "start"
    process_files = [f for f in changes.files if f != MANIFEST and f not in side_files]
    if not process_files:
        restart_inputs = [i for i in changes.inputs if _strip_input_prefix(i).split(".")[0] in RESTART_INPUTS]
        return "restart" if restart_inputs else "none"
    if runtime_kind != "supervisor":
        return "restart"
    if all(f in RELOADABLE for f in process_files) and not any(
        _strip_input_prefix(i).split(".")[0] in RESTART_INPUTS for i in changes.inputs
    ):
        return "reload"
    return "restart"


def unified_diff(old: Mapping[str, bytes] | None, new: Mapping[str, bytes], context: int = 3) -> str:
    """A unified diff of every changed text file (binary files are named, not shown)."""
    old = old or {}
    out: list[str] = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        try:
            a_lines = (a or b"").decode().splitlines(keepends=True)
            b_lines = (b or b"").decode().splitlines(keepends=True)
        except UnicodeDecodeError:
            out.append(f"Binary file {name} differs\n")
            continue
        out.extend(
            difflib.unified_diff(
                a_lines,
                b_lines,
                fromfile=f"current/{name}" if a is not None else "/dev/null",
                tofile=f"new/{name}" if b is not None else "/dev/null",
                n=context,
            )
        )
    text = "".join(out)
    return text if not text or text.endswith("\n") else text + "\n"
