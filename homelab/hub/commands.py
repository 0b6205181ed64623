"""``homelab lock`` and ``homelab fetch``."""

from __future__ import annotations

import argparse

from ..inventory import ResolvedHost, load_host
from ..settings import inventory_dir
from .cache import model_files
from .fetch import fetch_host
from .resolve import is_ci, load_lock, resolve_lock


def _host(name: str, inventory: str | None = None) -> ResolvedHost:
    return load_host(name, inventory_dir(inventory))


def cmd_lock(args: argparse.Namespace) -> int:
    host = _host(args.host, args.inventory)
    update: list[str] | bool = False
    if args.update is not None:
        update = args.update or True
    result = resolve_lock(host, update=update, frozen=args.frozen or (is_ci() and not update))
    for line in result.changes:
        print(line)
    for note in result.notes:
        print(note)
    if args.frozen or (is_ci() and not update):
        print(f"{host.lock_file}: up to date (frozen)")
    elif not result.written:
        print(f"{host.lock_file}: unchanged")
    else:
        print(f"wrote {host.lock_file}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    host = _host(args.host, args.inventory)
    lock = load_lock(host)
    fetch_host(host, lock, args.models or None, progress=not args.quiet)
    files = model_files(host, lock)
    for model_id in args.models or files:
        roles = [pf.role for pf in lock.models[model_id].files]
        draft = f" (draft: {files[model_id][roles.index('draft')]})" if "draft" in roles else ""
        print(f"{model_id}: {files[model_id][0]}{draft}")
    return 0


def register(cli) -> None:  # noqa: ANN001 - homelab.cli.CLI
    p = cli.command("lock", cmd_lock, "pin every model file of a host (commit, size, sha256) in hosts/HOST.lock.json")
    p.add_argument("host")
    p.add_argument(
        "--update",
        nargs="*",
        metavar="MODEL",
        help="move pins on purpose: the named models (or 'llama.cpp'), every pin when none is named",
    )
    p.add_argument(
        "--frozen",
        action="store_true",
        help="fail on a missing or stale pin instead of resolving (default with CI=true)",
    )
    p.add_argument("--inventory", help="inventory directory (default: $HOMELAB_INVENTORY or the checkout)")

    p = cli.command("fetch", cmd_fetch, "download and verify a host's pinned model files into the HF cache")
    p.add_argument("host")
    p.add_argument("models", nargs="*", metavar="MODEL", help="only these models (default: all of the host)")
    p.add_argument("--inventory", help="inventory directory (default: $HOMELAB_INVENTORY or the checkout)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
