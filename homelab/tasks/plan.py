"""doit tasks for the plan stage (thin: the work lives in homelab.plan).

``plan:<host>`` writes ``$HOMELAB_STATE/plans/<host>.json`` and prints the per-GPU table. It is
up to date while the resolved host, its lock and the planner's own code are unchanged (checked
when the task is considered, after ``lock:<host>`` ran, so a pin moved in the same run counts).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..inventory import ResolvedHost
from .graph import each_host, user_action


def plan_digest(host: ResolvedHost) -> str:
    """What the plan depends on: the merged host, its lock, and the planner's code."""
    h = hashlib.sha256()
    as_dict = getattr(host, "as_dict", None)
    h.update(json.dumps(as_dict() if as_dict else repr(host), sort_keys=True, default=str).encode())
    try:
        h.update(host.lock_file.read_bytes())
    except FileNotFoundError:
        h.update(b"no lock")
    # RPC both ways: a head's workers (their GPUs, budgets, endpoints and own models: the split
    # and the room they keep) and, for a worker, the heads using it (the load it keeps free),
    # each resolved and with its lock (homelab/plan/rpcload.py)
    from ..plan.rpcload import related_digest

    h.update(related_digest(host).encode())
    code = Path(__file__).resolve().parent.parent
    for rel in ("plan/estimate.py", "plan/host.py", "plan/rpc.py", "plan/rpcload.py", "plan/sources.py", "gguf/facts.py"):
        h.update((code / rel).read_bytes())
    return h.hexdigest()


def _plan(host: ResolvedHost) -> dict[str, str]:
    from ..plan.host import PlanError
    from ..plan.report import render_plan
    from ..plan.stage import make_plan, write_plan

    plan, _ = make_plan(host)
    write_plan(plan)
    print(render_plan(plan))
    if not plan.fits:
        raise PlanError(f"host {host.name} does not fit: " + " | ".join(plan.problems))
    return {"plan_digest": plan_digest(host)}


def _current(host: ResolvedHost) -> Any:
    def uptodate(task: Any, values: dict[str, Any]) -> bool:
        return values.get("plan_digest") == plan_digest(host)

    return uptodate


def task_plan() -> Iterator[dict[str, Any]]:
    """Prove every model and resident set fits the host's VRAM budget."""
    from ..plan.stage import plan_path

    yield {"basename": "plan", "name": None, "doc": "Prove every model and resident set fits the host's VRAM budget"}
    for host in each_host():
        yield {
            "name": host.name,
            "doc": f"Prove every model and resident set fits the host's VRAM budget ({host.name})",
            "actions": [(user_action(_plan), [host])],
            "targets": [str(plan_path(host.name))],
            "uptodate": [_current(host)],
            "task_dep": [f"lock:{host.name}"],
            "verbosity": 2,
        }
