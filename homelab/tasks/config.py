"""doit's own settings: json dep file under HOMELAB_STATE (readable, no single-writer lock),
thread parallelism (no pickling of task actions), quiet output for up-to-date tasks."""

from __future__ import annotations

from ..settings import state_dir


def _dep_file() -> str:
    path = state_dir() / "doit-deps.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


DOIT_CONFIG = {
    "dep_file": _dep_file(),
    "backend": "json",
    "par_type": "thread",
    "verbosity": 2,
    "default_tasks": [],
}
