"""Shared plumbing for the doit task creators: doit variables, which hosts, how an action fails.

Task creators ask :func:`selected_hosts` for the validated hosts named by ``host=NAME`` (``all``
for every host) and wrap their actions with :func:`user_action`, so a :class:`HomelabError`
becomes doit's ``TaskFailed`` with one clear message and no traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from doit import get_var
from doit.exceptions import TaskFailed

from ..errors import HomelabError
from ..inventory import ResolvedHost, list_hosts, load_host
from ..inventory.multihost import load_related
from ..settings import inventory_dir


def var(name: str, default: str | None = None) -> str | None:
    try:
        value = get_var(name, default)
    except Exception:  # doit's variable table was never initialised (imported from pytest)
        return default
    return default if value is None else value


def flag(name: str) -> bool:
    """A boolean doit variable such as ``frozen=1`` or ``dry=1``."""
    return (var(name, "") or "").lower() in {"1", "true", "yes", "on"}


@functools.cache
def _load(inventory: str, names: tuple[str, ...]) -> tuple[ResolvedHost, ...]:
    hosts = tuple(load_host(name, inventory) for name in names)
    for host in hosts:
        if host.peer_names or host.depends_on:
            load_related(host)  # the hosts it names are checked before any task runs, not at render
    return hosts


def selected_hosts() -> tuple[ResolvedHost, ...]:
    """The hosts named by ``host=`` (default: none, so ``doit list`` stays cheap and quiet).

    A bad inventory stops doit here with the loader's message and exit status 2: there is no
    graph to show or run without it.
    """
    inventory = str(inventory_dir(var("inventory")))
    wanted = var("host")
    if not wanted:
        return ()
    try:
        known = list_hosts(inventory)
        names = tuple(known) if wanted == "all" else tuple(wanted.split(","))
        for name in names:
            if name not in known:
                raise HomelabError(
                    f"unknown host {name!r} in {inventory}/hosts; known hosts: "
                    + (", ".join(known) or "(none)")
                    + ". Use host=NAME or host=all."
                )
        return _load(inventory, names)
    except HomelabError as exc:
        print(f"homelab: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def user_action(func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a python-action so user errors fail the task with their message only."""

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            result = func(*args, **kwargs)
        except HomelabError as exc:
            return TaskFailed(str(exc))
        return None if result is None or result is True else result

    return run
