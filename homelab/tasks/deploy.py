"""The ``deploy`` tasks on top of the stage table (thin: the work lives in homelab.deploy).

``deploy:<host>`` is the whole chain: ``deploy-guard:<host>`` takes the per-host deploy lock
first, then lock -> fetch -> source/build -> plan -> render -> install (+ verify) run, each
skipped by doit when its inputs did not change. Variables: ``dry=1`` (print what would change,
change nothing), ``frozen=1`` (the lock must not move), ``service=`` / ``root=`` / ``verify=``
(override the host's runtime.service, install under a root prefix, verification level),
``local=1`` (run a remote host's chain here: what the remote side of an ssh deploy does).

A remote host (``address: ssh://...``) syncs and runs ``homelab deploy HOST --local`` there;
``host=all`` deploys every host, RPC workers before the heads that use them (waves, see
homelab.deploy.waves), the hosts of a wave in parallel, and prints a summary table;
``host=head,worker`` makes ``deploy:head`` depend on ``deploy:worker``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from doit.exceptions import TaskFailed

from ..deploy.chain import deploy_all, deploy_remote, is_remote, summary_table
from ..deploy.dryrun import preview
from ..deploy.generations import GenerationStore
from ..deploy.hostlock import deploy_lock
from ..deploy.paths import HostPaths
from ..inventory import ResolvedHost
from .graph import flag, selected_hosts, user_action, var


def _guard(host: ResolvedHost) -> None:
    deploy_lock(HostPaths.for_host(host.name)).acquire()  # held until deploy:<host> or exit


def _finish(host: ResolvedHost) -> None:
    paths = HostPaths.for_host(host.name)
    lock = deploy_lock(paths)
    installed = lock.taken_again > 0  # install takes the lock again; skipped, it did not
    lock.release()
    if not installed:  # install was up to date: doit skipped it
        print(f"{host.name}: up to date (generation {GenerationStore(paths).current_number()}), nothing restarted")


def _passthrough() -> list[str]:
    args = []
    if flag("frozen"):
        args.append("--frozen")
    if flag("dry"):
        args.append("--dry-run")
    for name in ("service", "verify"):
        if var(name):
            args += [f"--{name}", str(var(name))]
    return args


def _remote(host: ResolvedHost) -> TaskFailed | None:
    code = deploy_remote(host, _passthrough())
    return TaskFailed(f"remote deploy of {host.name} failed (exit {code})") if code else None


def _dry(host: ResolvedHost) -> None:
    print(preview(host, service=var("service")))


def _all(depends_on: dict[str, tuple[str, ...]]) -> TaskFailed | None:
    results = deploy_all(list(depends_on), _passthrough(), depends_on=depends_on)
    print(summary_table(results))
    failed = [r.host for r in results if r.code and not r.skipped]
    skipped = [r.host for r in results if r.skipped]
    if not failed and not skipped:
        return None
    return TaskFailed(
        f"deploy failed on {', '.join(failed)}" + (f"; not deployed: {', '.join(skipped)}" if skipped else "")
    )


def task_deploy() -> Iterator[dict[str, Any]]:
    """The whole chain: lock, fetch, build, plan, render, install, verify."""
    yield {
        "basename": "deploy",
        "name": None,
        "doc": "The whole chain: lock, fetch, build, plan, render, install, verify",
    }
    hosts = list(selected_hosts())
    if var("host") == "all" and len(hosts) > 1:
        depends_on = {h.name: h.depends_on for h in hosts}
        yield {
            "name": "all",
            "doc": "Deploy every host (RPC workers first, then in parallel), with a summary table",
            "actions": [user_action(lambda: _all(depends_on))],
            "uptodate": [False],
            "verbosity": 2,
        }
        return
    selected = {h.name for h in hosts}
    for host in hosts:
        remote = is_remote(host) and not flag("local")
        # host=head,worker: the workers this head's models use are deployed first
        workers_first = [f"deploy:{w}" for w in host.depends_on if w in selected and w != host.name]
        task: dict[str, Any] = {
            "name": host.name,
            "doc": f"The whole chain: lock, fetch, build, plan, render, install, verify ({host.name})",
            "uptodate": [False],
            "verbosity": 2,
        }
        if remote:
            task.update(actions=[user_action(lambda host=host: _remote(host))], task_dep=workers_first)
        elif flag("dry"):
            task.update(actions=[user_action(lambda host=host: _dry(host))], task_dep=[])
        else:
            task.update(
                actions=[user_action(lambda host=host: _finish(host))],
                task_dep=[*workers_first, f"deploy-guard:{host.name}", f"install:{host.name}"],
            )
        yield task
    yield {"basename": "deploy-guard", "name": None, "doc": "Take the per-host deploy lock (first step of deploy)"}
    for host in hosts:
        yield {
            "basename": "deploy-guard",
            "name": host.name,
            "doc": f"Take the per-host deploy lock for the rest of this run ({host.name})",
            "actions": [user_action(lambda host=host: _guard(host))],
            "uptodate": [False],
            "verbosity": 0,
        }
