"""doit tasks for the build stage (thin: the work lives in the stage package)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .graph import each_host, not_implemented


def task_build() -> Iterator[dict[str, Any]]:
    """Configure and compile llama-server for the host's backend."""
    yield {"basename": "build", "name": None, "doc": "Configure and compile llama-server for the host's backend"}
    for host in each_host():
        yield {
            "name": host.name,
            "doc": f"Configure and compile llama-server for the host's backend ({host.name})",
            "actions": [not_implemented("build")],
            "task_dep": [f"source:{host.name}"],
        }
