"""doit tasks for the render stage (thin: the work lives in the stage package)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .graph import each_host, not_implemented


def task_render() -> Iterator[dict[str, Any]]:
    """Render llama-swap config, router presets and systemd units."""
    yield {"basename": "render", "name": None, "doc": "Render llama-swap config, router presets and systemd units"}
    for host in each_host():
        yield {
            "name": host.name,
            "doc": f"Render llama-swap config, router presets and systemd units ({host.name})",
            "actions": [not_implemented("render")],
            "task_dep": [f"build:{host.name}", f"plan:{host.name}", f"fetch:{host.name}"],
        }
