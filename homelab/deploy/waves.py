"""The order ``deploy all`` deploys hosts in: RPC workers before the heads that use them.

A head host's models put layers on other hosts' ``rpc-server`` (``ResolvedHost.depends_on``), so
those workers are deployed (and verified: their port accepts connections) first. Hosts are
grouped in waves: every host is in a later wave than each host it depends on, and the hosts of
one wave deploy in parallel. Pure functions; the runner is :func:`homelab.deploy.chain.deploy_all`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..errors import HomelabError


class DependencyCycle(HomelabError):
    """Hosts that depend on each other in a circle: none of them can be deployed first."""


def deploy_waves(depends_on: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Hosts (the mapping's keys, in its order) in waves, each after the hosts it depends on.

    A dependency on a name that is not a key is ignored: it is not deployed in this run (the
    inventory's validation reports a name that is no host at all). A host depending on itself
    is no ordering problem (one generation carries both units) and is ignored too. A cycle
    raises :class:`DependencyCycle` naming its hosts in order.
    """
    hosts = list(depends_on)
    waiting = {h: {d for d in depends_on[h] if d in depends_on and d != h} for h in hosts}
    waves: list[list[str]] = []
    done: set[str] = set()
    while waiting:
        wave = [h for h in hosts if h in waiting and waiting[h] <= done]
        if not wave:
            raise DependencyCycle(_describe_cycle(waiting))
        waves.append(wave)
        done.update(wave)
        for h in wave:
            del waiting[h]
    return waves


def _describe_cycle(waiting: Mapping[str, set[str]]) -> str:
    """Follow unmet dependencies from some waiting host until a host repeats: that is a cycle."""
    start = min(waiting)
    path = [start]
    while True:
        nxt = min(d for d in waiting[path[-1]] if d in waiting)
        if nxt in path:
            cycle = path[path.index(nxt) :] + [nxt]
            break
        path.append(nxt)
    return (
        "hosts depend on each other in a cycle, so none of them can be deployed first: "
        + " -> ".join(cycle)
        + " (each uses the next one's rpc_server through a model's `rpc:`); remove one of these "
        "`rpc:` entries from the host files"
    )


def blocked_by(host: str, depends_on: Mapping[str, Iterable[str]], failed: Iterable[str]) -> str | None:
    """The first host ``host`` depends on that did not deploy (failed or was itself skipped)."""
    failed = set(failed)
    for dep in depends_on.get(host, ()):
        if dep != host and dep in failed:
            return dep
    return None
