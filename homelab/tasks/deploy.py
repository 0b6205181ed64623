"""doit tasks for the deploy stage (thin: the work lives in the stage package)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .graph import each_host, not_implemented


def task_deploy() -> Iterator[dict[str, Any]]:
    """The whole chain: lock, fetch, build, plan, render, install, verify."""
    yield {"basename": "deploy", "name": None, "doc": "The whole chain: lock, fetch, build, plan, render, install, verify"}
    for host in each_host():
        yield {
            "name": host.name,
            "doc": f"The whole chain: lock, fetch, build, plan, render, install, verify ({host.name})",
            "actions": [not_implemented("deploy")],
            "task_dep": [f"install:{host.name}"],
        }
