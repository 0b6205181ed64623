"""The early, static check of ``server:`` flag names: a typo catcher run while loading YAML.

It compares names against a snapshot of ``llama-server --help`` long flags for the host's
llama.cpp ref (``homelab/llamacpp/server_flags_<ref>.txt``, one name per line, no dashes), and
values of enumerated flags (``spec-type``, ``cache-type-k``, ``split-mode``...) against the choices
the ref's full ``--help`` text lists (``server_help_<ref>.txt``).
The authoritative check against the binary actually built belongs to the llama.cpp stage
(:mod:`homelab.llamacpp.flags`); this one only needs the YAML, so a typo fails at ``homelab
validate`` instead of after a 10-minute build. Without a snapshot for the ref the check is skipped.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

# flags.py is a stdlib-only leaf (the help parser): reading the same text the same way here
# keeps validate-time and build-time checks from drifting apart
from ..llamacpp.flags import (  # noqa: F401 - DRAFT_* re-exported for the loader's draft checks
    DRAFT_MODEL_TYPES,
    NEEDS_DRAFT_FILE,
    AcceptedFlags,
    parse_help,
    value_problem,
)

SNAPSHOT_DIR = Path(__file__).resolve().parent.parent / "llamacpp"
DEFAULT_REF = "b11434"
"""The build the example inventory and the default ``llama_cpp.ref`` use."""

DRAFT_BY_HOMELAB = (
    "homelab passes the draft model from the lock: declare it as `draft:` in the recipe or the host's model "
    "entry (hf, url or path, like `source:`), e.g. draft: {hf: {repo: OWNER/NAME-GGUF, file: NAME-Q8_0.gguf}}"
)

RESERVED = {
    "model": "homelab passes the model file from the lock (set `source:` in the recipe)",
    "model-url": "homelab passes the model file from the lock (set `source:` in the recipe)",
    "mmproj": "homelab passes the projector from the lock (set `source.hf.mmproj` in the recipe)",
    "hf-repo": "homelab downloads the model itself (set `source.hf` in the recipe)",
    "hf-file": "homelab downloads the model itself (set `source.hf` in the recipe)",
    "spec-draft-model": DRAFT_BY_HOMELAB,
    "model-draft": DRAFT_BY_HOMELAB,
    "spec-draft-hf": DRAFT_BY_HOMELAB,
    "hf-repo-draft": DRAFT_BY_HOMELAB,
    "port": "homelab assigns each backend its port (pin one with the model entry's `port:`)",
    "host": "homelab binds backends to 127.0.0.1 behind the supervisor (set `runtime.listen`)",
}
"""Flags homelab sets itself for every backend: a recipe that sets them would fight the render."""


def snapshot_path(ref: str) -> Path | None:
    """The snapshot for ``ref`` (a ``bNNNN`` build tag), if one ships with homelab."""
    if not re.fullmatch(r"b\d+", ref):
        return None
    path = SNAPSHOT_DIR / f"server_flags_{ref}.txt"
    return path if path.is_file() else None


@functools.cache
def _read(path: Path, mtime_ns: int) -> frozenset[str]:
    names = set()
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            names.add(line.lstrip("-"))
    return frozenset(names)


def known_flags(ref: str) -> frozenset[str] | None:
    """Long flag names llama-server ``ref`` accepts, or None when no snapshot exists for it."""
    path = snapshot_path(ref)
    if path is None:
        return None
    return _read(path, path.stat().st_mtime_ns)


def help_path(ref: str) -> Path | None:
    """The full ``llama-server --help`` text for ``ref``, if one ships with homelab."""
    if not re.fullmatch(r"b\d+", ref):
        return None
    path = SNAPSHOT_DIR / f"server_help_{ref}.txt"
    return path if path.is_file() else None


@functools.cache
def _parse(path: Path, mtime_ns: int, ref: str) -> AcceptedFlags:
    return parse_help(path.read_text(), f"llama.cpp {ref}")


def known_help(ref: str) -> AcceptedFlags | None:
    """Every option of llama-server ``ref`` with its value choices, or None without a help text."""
    path = help_path(ref)
    if path is None:
        return None
    return _parse(path, path.stat().st_mtime_ns, ref)


def value_message(ref: str, name: str, value: object) -> str | None:
    """Why llama-server ``ref`` would refuse ``name: value`` (a value outside the listed
    choices, with the nearest allowed one), or None when fine or unknown."""
    described = known_help(ref)
    info = described.flags.get(name) if described is not None else None
    return value_problem(name, info, value, described.build) if described and info else None
