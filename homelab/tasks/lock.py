"""doit tasks for the lock stage (thin: the work lives in the stage package)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .graph import each_host, not_implemented


def task_lock() -> Iterator[dict[str, Any]]:
    """Pin every input of the host (model revisions, sizes, sha256) in <host>.lock.json."""
    yield {"basename": "lock", "name": None, "doc": "Pin every input of the host (model revisions, sizes, sha256) in <host>.lock.json"}
    for host in each_host():
        yield {
            "name": host.name,
            "doc": f"Pin every input of the host (model revisions, sizes, sha256) in <host>.lock.json ({host.name})",
            "actions": [not_implemented("lock")],
            "task_dep": [],
        }
