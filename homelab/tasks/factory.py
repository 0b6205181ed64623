"""The one factory that turns a :class:`~homelab.stage.Stage` into doit tasks.

Every stage task is up to date by the stage's one freshness rule (:meth:`Stage.is_fresh`),
checked when doit is about to run the task, after the stages it comes after: a pin moved by
``lock`` in the same run counts. ``task_dep`` only orders; targets make a missing output run
the stage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..errors import HomelabError
from ..inventory import ResolvedHost
from ..stage import Stage
from .graph import selected_hosts, user_action

Creator = Callable[[], Iterator[dict[str, Any]]]


def uptodate_check(stage: Stage, host: ResolvedHost, part: tuple[str, ...]) -> Callable[[], bool]:
    def uptodate() -> bool:
        try:
            return stage.is_fresh(host, *part)
        except HomelabError:
            return False  # the action runs and reports the problem with its message

    return uptodate


def _task(stage: Stage, host: ResolvedHost, part: tuple[str, ...]) -> dict[str, Any]:
    name = ":".join((host.name, *part))
    return {
        "name": name,
        "doc": f"{stage.doc} ({name})",
        "actions": [(user_action(stage.run_and_record), [host, *part])],
        "uptodate": [uptodate_check(stage, host, part)],
        "targets": [str(stage.target(host, *part))] if stage.target else [],
        "task_dep": [f"{after}:{host.name}" for after in stage.after],
        "verbosity": 2,
    }


def stage_tasks(make: Callable[[], Stage]) -> Creator:
    """A doit task creator for the stage ``make`` returns (made when doit builds the graph, so
    it can read doit variables such as ``frozen=1``): ``<stage>:<host>`` for each selected host;
    a stage with parts has ``<stage>:<host>:<part>`` tasks and ``<stage>:<host>`` groups them."""

    def creator() -> Iterator[dict[str, Any]]:
        stage = make()
        yield {"basename": stage.name, "name": None, "doc": stage.doc}
        for host in selected_hosts():
            if stage.parts is None:
                yield _task(stage, host, ())
                continue
            parts = stage.parts(host)
            for part in parts:
                yield _task(stage, host, (part,))
            yield {
                "name": host.name,
                "doc": f"{stage.doc} ({host.name})",
                "actions": None,
                "task_dep": [f"{a}:{host.name}" for a in stage.after]
                + [f"{stage.name}:{host.name}:{p}" for p in parts],
            }

    return creator
