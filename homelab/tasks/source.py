"""doit tasks for the source stage (thin: the work lives in the stage package)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .graph import each_host, not_implemented


def task_source() -> Iterator[dict[str, Any]]:
    """Check out llama.cpp at the pinned commit and apply the patch series."""
    yield {"basename": "source", "name": None, "doc": "Check out llama.cpp at the pinned commit and apply the patch series"}
    for host in each_host():
        yield {
            "name": host.name,
            "doc": f"Check out llama.cpp at the pinned commit and apply the patch series ({host.name})",
            "actions": [not_implemented("source")],
            "task_dep": [f"lock:{host.name}"],
        }
