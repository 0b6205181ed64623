"""doit tasks for the plan stage (thin: the work lives in the stage package)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .graph import each_host, not_implemented


def task_plan() -> Iterator[dict[str, Any]]:
    """Prove every model and resident set fits the host's VRAM budget."""
    yield {"basename": "plan", "name": None, "doc": "Prove every model and resident set fits the host's VRAM budget"}
    for host in each_host():
        yield {
            "name": host.name,
            "doc": f"Prove every model and resident set fits the host's VRAM budget ({host.name})",
            "actions": [not_implemented("plan")],
            "task_dep": [f"lock:{host.name}"],
        }
