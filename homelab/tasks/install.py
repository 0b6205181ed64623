"""doit tasks for the install stage (thin: the work lives in the stage package)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .graph import each_host, not_implemented


def task_install() -> Iterator[dict[str, Any]]:
    """Install the rendered generation and activate the service."""
    yield {"basename": "install", "name": None, "doc": "Install the rendered generation and activate the service"}
    for host in each_host():
        yield {
            "name": host.name,
            "doc": f"Install the rendered generation and activate the service ({host.name})",
            "actions": [not_implemented("install")],
            "task_dep": [f"render:{host.name}"],
        }
