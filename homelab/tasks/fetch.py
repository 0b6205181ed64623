"""doit tasks for the fetch stage (thin: the work lives in the stage package)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .graph import each_host, not_implemented


def task_fetch() -> Iterator[dict[str, Any]]:
    """Download and verify the host's GGUF files into the Hugging Face cache."""
    yield {"basename": "fetch", "name": None, "doc": "Download and verify the host's GGUF files into the Hugging Face cache"}
    for host in each_host():
        yield {
            "name": host.name,
            "doc": f"Download and verify the host's GGUF files into the Hugging Face cache ({host.name})",
            "actions": [not_implemented("fetch")],
            "task_dep": [f"lock:{host.name}"],
        }
