"""``homelab deploy HOST``: the doit graph of :mod:`homelab.tasks`, run in this process.

It sits on top (the tasks layer) because it runs the task graph; the remote and ``all`` paths
and the ``--rendered`` install use the deploy layer below directly.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..deploy import remote
from ..deploy.chain import (
    all_hosts,
    dependencies,
    deploy_all,
    deploy_remote,
    is_remote,
    load,
    summary_table,
)
from ..deploy.commands import deployer_from_args
from ..deploy.verify import LEVELS
from ..errors import HomelabError


def run_doit(args: list[str]) -> int:
    """Run doit in this process on homelab's task graph (``dodo.py`` semantics, no dodo file)."""
    from doit.cmd_base import ModuleTaskLoader
    from doit.doit_cmd import DoitMain

    # lazily, with doit: the task table imports every stage; `homelab --help` needs none of it
    from .. import tasks
    from .config import DOIT_CONFIG

    namespace = {name: getattr(tasks, name) for name in tasks.__all__}
    namespace["DOIT_CONFIG"] = DOIT_CONFIG
    return DoitMain(ModuleTaskLoader(namespace)).run(args)


def doit_words(name: str, **variables: str | bool | None) -> list[str]:
    words = ["deploy", f"host={name}"]
    for key, value in variables.items():
        if value is None or value is False:
            continue
        words.append(f"{key}={'1' if value is True else value}")
    return words


def cmd_deploy(args: argparse.Namespace) -> int:
    passthrough = []
    if args.frozen:
        passthrough.append("--frozen")
    if args.dry_run:
        passthrough.append("--dry-run")
    if args.service:
        passthrough += ["--service", args.service]
    if args.verify:
        passthrough += ["--verify", args.verify]
    if args.host == "all":
        names = all_hosts()
        results = deploy_all(names, passthrough, jobs=args.jobs, depends_on=dependencies(names))
        print(summary_table(results))
        return 1 if any(r.code for r in results) else 0
    host = load(args.host)
    if is_remote(host) and not args.local:
        if args.rendered:
            address = remote.SSHAddress.parse(host.host.address)
            remote.sync(address, host.inventory)
            rendered = Path(args.rendered).resolve()
            remote.sync_tree(address, rendered, sorted(p.name for p in rendered.iterdir()), f"rendered/{host.name}")
            return remote.run_homelab(
                address, ["deploy", host.name, "--local", "--rendered", f"rendered/{host.name}", *passthrough]
            )
        return deploy_remote(host, passthrough)
    if args.rendered:
        if args.dry_run:
            raise HomelabError("--dry-run with --rendered: compare with `diff -ru DIR current` instead")
        report = deployer_from_args(args).install(Path(args.rendered))
        print(report.line())
        return 0
    words = doit_words(
        host.name,
        frozen=args.frozen,
        dry=args.dry_run,
        service=args.service,
        root=args.root,
        verify=args.verify,
        local=args.local,
    )
    return run_doit(words)


def register(cli) -> None:  # cli: homelab.cli.CLI (the CLI imports this module lazily)
    p = cli.command(
        "deploy", cmd_deploy, "run the whole chain for a host (or `all`): fetch, build, render, install, verify"
    )
    p.add_argument("host", help="host name, or `all` for every host in parallel")
    p.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    p.add_argument("--frozen", action="store_true", help="the lockfile must not change (CI)")
    p.add_argument("--local", action="store_true", help="run the chain here even if the host is ssh://")
    p.add_argument("--service", choices=["user", "system", "none", "auto"], help="override runtime.service")
    p.add_argument("--root", help="install unit files below this root prefix (tests); also HOMELAB_ROOT")
    p.add_argument("--verify", choices=LEVELS, help="health | models | completion (default: the host's runtime.verify)")
    p.add_argument("--rendered", help="install this rendered directory instead of running the chain")
    p.add_argument("-j", "--jobs", type=int, help="parallel hosts for `all` (default: all at once)")
