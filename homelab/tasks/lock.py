"""doit tasks for the lock stage (thin: the work lives in homelab.hub.resolve)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..inventory import ResolvedHost
from .graph import each_host, flag, user_action


def _lock(host: ResolvedHost, frozen: bool) -> None:
    from ..hub.resolve import is_ci, lock_host

    result = lock_host(host, frozen=frozen or is_ci())
    for line in result.changes:
        print(line)
    for note in result.notes:
        print(note)


def task_lock() -> Iterator[dict[str, Any]]:
    """Pin every input of the host (model revisions, sizes, sha256) in <host>.lock.json."""
    yield {"basename": "lock", "name": None, "doc": "Pin every input of the host (model revisions, sizes, sha256) in <host>.lock.json"}
    frozen = flag("frozen")
    for host in each_host():
        yield {
            "name": host.name,
            "doc": f"Pin every input of the host (model revisions, sizes, sha256) in <host>.lock.json ({host.name})",
            # Always runs: it costs no request when every pin matches the recipes.
            "actions": [(user_action(_lock), [host, frozen])],
            "targets": [str(host.lock_file)],
            "task_dep": [],
            "verbosity": 2,
        }
