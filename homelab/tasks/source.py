"""doit tasks for the source stage (thin: the work lives in homelab.llamacpp.stage)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..errors import HomelabError
from ..inventory import ResolvedHost
from .graph import each_host, user_action


def _source_uptodate(host: ResolvedHost) -> bool:
    """Nothing to check out when the build for the current key exists or its worktree is ready."""
    from ..llamacpp.stage import builder

    from .build import planned_build

    try:
        planned = planned_build(host)
    except HomelabError:
        return False  # let the action run and report the problem with its message
    b = builder()
    return b.installed(planned.key) is not None or b.prepared(planned)


def _prepare(host: ResolvedHost) -> None:
    from ..llamacpp.stage import prepare_host

    prepare_host(host)


def task_source() -> Iterator[dict[str, Any]]:
    """Check out llama.cpp at the pinned commit and apply the patch series."""
    yield {"basename": "source", "name": None, "doc": "Check out llama.cpp at the pinned commit and apply the patch series"}
    for host in each_host():
        yield {
            "name": host.name,
            "doc": f"Check out llama.cpp at the pinned commit and apply the patch series ({host.name})",
            "actions": [(user_action(_prepare), [host])],
            "uptodate": [(_source_uptodate, [host], {})],
            "task_dep": [f"lock:{host.name}"],
        }
