"""``homelab generations | rollback | stop | status | bootstrap`` (``homelab deploy`` runs the task
graph: :mod:`homelab.tasks.commands`)."""

from __future__ import annotations

import argparse

from ..errors import HomelabError
from . import remote
from .chain import is_remote, load
from .generations import GenerationStore
from .installer import Deployer, Options, Target, format_generations
from .paths import HostPaths


def _add_host_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host", help="host name (hosts/<host>.yaml)")
    parser.add_argument("--local", action="store_true", help="act here even if the host's address is ssh://")


def deployer_from_args(args: argparse.Namespace) -> Deployer:
    host = load(args.host)
    options = Options(root=getattr(args, "root", None), verify=getattr(args, "verify", None))
    return Deployer(Target.from_host(host, service=getattr(args, "service", None)), options)


def _remote_or_none(args: argparse.Namespace, command: list[str]) -> int | None:
    """Run the command on the host's remote when it has one (and --local was not given)."""
    host = load(args.host)
    if args.local or not is_remote(host):
        return None
    return remote.run_homelab(remote.SSHAddress.parse(host.host.address), [*command, "--local"])


def cmd_generations(args: argparse.Namespace) -> int:
    code = _remote_or_none(args, ["generations", args.host])
    if code is not None:
        return code
    load(args.host)
    print(format_generations(GenerationStore(HostPaths.for_host(args.host))))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    code = _remote_or_none(args, ["rollback", args.host, *([str(args.generation)] if args.generation else [])])
    if code is not None:
        return code
    report = deployer_from_args(args).rollback(args.generation)
    print(report.line())
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    code = _remote_or_none(args, ["stop", args.host])
    if code is not None:
        return code
    deployer = deployer_from_args(args)
    deployer.stop()
    print(deployer.status())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    code = _remote_or_none(args, ["status", args.host])
    if code is not None:
        return code
    deployer = deployer_from_args(args)
    print(deployer.status())
    return 0 if deployer.service.alive() else 3


def cmd_bootstrap(args: argparse.Namespace) -> int:
    host = load(args.host)
    if not is_remote(host):
        raise HomelabError(
            f"host {host.name!r} is local (address: local): bootstrap prepares ssh:// hosts; "
            "here, `pip install -e .` in the checkout is all it takes"
        )
    return remote.bootstrap(
        remote.SSHAddress.parse(host.host.address), host.inventory, host.host.backend, deps=not args.no_deps
    )


def register(cli) -> None:  # cli: homelab.cli.CLI (the CLI imports this module lazily)
    p = cli.command("generations", cmd_generations, "list a host's deployed generations (* = current)")
    _add_host_options(p)

    p = cli.command("rollback", cmd_rollback, "switch a host back to an earlier generation and restart/reload")
    _add_host_options(p)
    p.add_argument("generation", nargs="?", type=int, help="generation number (default: the previous good one)")
    p.add_argument("--service", choices=["user", "system", "none", "auto"], help="override runtime.service")
    p.add_argument("--root", help="root prefix for unit files (tests)")

    for name, handler, text in (
        ("stop", cmd_stop, "stop a host's service"),
        ("status", cmd_status, "is a host's service running, and which generation is current"),
    ):
        p = cli.command(name, handler, text)
        _add_host_options(p)
        p.add_argument("--service", choices=["user", "system", "none", "auto"], help="override runtime.service")
        p.add_argument("--root", help="root prefix for unit files (tests)")

    p = cli.command("bootstrap", cmd_bootstrap, "prepare a fresh ssh:// host: venv with homelab, build tools checked")
    p.add_argument("host")
    p.add_argument("--no-deps", action="store_true", help="do not pip-install homelab's dependencies")
