"""doit tasks for the fetch stage (thin: the work lives in homelab.hub.fetch).

``fetch:<host>:<model>`` downloads and verifies one model's files; ``fetch:<host>`` groups them.
A model task is up to date when its manifest matches the lock's pins and its files still have
the size and mtime they were verified with (checked when the task is considered, after
``lock:<host>`` ran, so a pin moved in the same run is seen).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..inventory import ResolvedHost
from .graph import each_host, user_action


def _fetch(host: ResolvedHost, model_id: str) -> None:
    from ..hub.fetch import fetch_host

    fetch_host(host, models=[model_id])


def _fetched(host: ResolvedHost, model_id: str) -> Any:
    def uptodate(task: Any, values: Any) -> bool:
        from ..hub.fetch import is_fetched
        from ..lock import read_lock

        lock = read_lock(host.lock_file)
        pinned = lock.models.get(model_id) if lock else None
        return pinned is not None and is_fetched(host, model_id, pinned)

    return uptodate


def task_fetch() -> Iterator[dict[str, Any]]:
    """Download and verify the host's GGUF files into the Hugging Face cache."""
    from ..hub.fetch import manifest_path

    yield {"basename": "fetch", "name": None, "doc": "Download and verify the host's GGUF files into the Hugging Face cache"}
    for host in each_host():
        for model in host.models:
            yield {
                "name": f"{host.name}:{model.id}",
                "doc": f"Download and verify {model.id}'s files ({host.name})",
                "actions": [(user_action(_fetch), [host, model.id])],
                "targets": [str(manifest_path(host.name, model.id))],
                "uptodate": [_fetched(host, model.id)],
                "task_dep": [f"lock:{host.name}"],
            }
        yield {
            "name": host.name,
            "doc": f"Download and verify the host's GGUF files into the Hugging Face cache ({host.name})",
            "actions": None,
            "task_dep": [f"lock:{host.name}"] + [f"fetch:{host.name}:{m.id}" for m in host.models],
        }
