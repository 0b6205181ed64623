"""doit tasks for the install stage (thin: the work lives in homelab.deploy).

``install:<host>`` installs the render stage's output as a new generation, activates the service
and verifies the endpoint (rolling back on failure). It is up to date when the rendered files
equal the current generation's and the service is running: a cheap check of a few small files
and a pid (or one ``systemctl is-active``), done at execution time, never at task creation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..inventory import ResolvedHost
from .graph import _var, each_host, user_action

#: install reports of this process, by host: deploy:<host> prints them as its summary
REPORTS: dict[str, Any] = {}


def deployer_for(host: ResolvedHost) -> Any:
    from ..deploy.installer import Deployer, Options, Target

    options = Options(root=_var("root"), verify=_var("verify") or None)
    return Deployer(Target.from_host(host, service=_var("service")), options)


def _install(host: ResolvedHost) -> None:
    from ..deploy.chain import is_remote, staged_dir
    from ..errors import HomelabError

    if is_remote(host) and not _var("local"):
        raise HomelabError(
            f"host {host.name!r} is remote ({host.host.address}): run `doit deploy host={host.name}`, "
            "which installs on the remote as part of the chain"
        )
    report = deployer_for(host).install(staged_dir(host))
    REPORTS[host.name] = report
    print(report.line())


def _up_to_date(host: ResolvedHost) -> bool:
    from ..deploy.chain import is_remote, staged_dir
    from ..deploy.generations import read_tree
    from ..deploy.paths import HostPaths

    if is_remote(host) and not _var("local"):
        return False
    current = HostPaths.for_host(host.name).current
    staged = staged_dir(host)
    if not current.is_dir() or not staged.is_dir():
        return False
    if read_tree(staged) != read_tree(current):
        return False
    deployer = deployer_for(host)
    deployer.options.quiet = True
    return deployer.service.alive()


def task_install() -> Iterator[dict[str, Any]]:
    """Install the rendered generation and activate the service."""
    yield {"basename": "install", "name": None, "doc": "Install the rendered generation and activate the service"}
    for host in each_host():
        yield {
            "name": host.name,
            "doc": f"Install the rendered generation and activate the service ({host.name})",
            "actions": [user_action(lambda host=host: _install(host))],
            "task_dep": [f"render:{host.name}"],
            "uptodate": [lambda host=host: _up_to_date(host)],
            "verbosity": 2,
        }
