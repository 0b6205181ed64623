"""``homelab hosts``, ``homelab show HOST``, ``homelab validate [PATH...]``, ``homelab schema``."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..settings import inventory_dir
from ..suggest import did_you_mean
from . import schemas
from .checks import validate_inventory
from .loader import InventoryError, host_path, list_hosts, load_host
from .resolved import ResolvedHost

if TYPE_CHECKING:
    from ..cli import CLI


def register(cli: CLI) -> None:
    parser = cli.command("hosts", hosts_command, "list the hosts of the inventory")
    _inventory_option(parser)

    parser = cli.command("show", show_command, "print a host fully resolved (every recipe merged in) as YAML")
    parser.add_argument("host", help="host name (hosts/<host>.yaml)")
    _inventory_option(parser)

    parser = cli.command(
        "validate",
        validate_command,
        "check host and recipe files (default: the whole inventory); exit 2 listing every problem",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="host names, host or recipe files, or inventories")
    _inventory_option(parser)

    parser = cli.command("schema", schema_command, "print or regenerate the JSON Schemas for editors")
    schemas.add_arguments(parser)


def _inventory_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--inventory",
        metavar="DIR",
        help="folder with hosts/ and recipes/ (default: $HOMELAB_INVENTORY, ./ if it has hosts/, else the checkout)",
    )


def gpu_summary(host: ResolvedHost) -> str:
    """``2x RTX 3060 (12288 MiB)``; ``-`` for none."""
    if not host.host.gpus:
        return "-"
    counts = Counter((g.name, g.vram_mib) for g in host.host.gpus)
    return ", ".join(
        f"{n}x {name} ({mib} MiB)" if n > 1 else f"{name} ({mib} MiB)" for (name, mib), n in counts.items()
    )


def hosts_command(args: argparse.Namespace) -> int:
    inventory = inventory_dir(args.inventory)
    names = list_hosts(inventory)
    if not names:
        print(f"no hosts in {inventory}/hosts", file=sys.stderr)
        return 0
    rows = [("HOST", "BACKEND", "GPUS", "MODELS")]
    broken = 0
    for name in names:
        try:
            host = load_host(name, inventory)
        except InventoryError:
            broken += 1
            rows.append((name, "?", "?", "invalid: run `homelab validate`"))
            continue
        rows.append((name, host.host.backend, gpu_summary(host), str(len(host.models))))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    if broken:
        print(f"homelab: error: {broken} host file(s) are invalid; `homelab validate` lists why", file=sys.stderr)
        return 2
    return 0


def show_command(args: argparse.Namespace) -> int:
    host = load_host(args.host, inventory_dir(args.inventory))
    sys.stdout.write(yaml.safe_dump(host.as_dict(), sort_keys=False, allow_unicode=True, width=100))
    return 0


def _validate_target(given: str, inventory: Path) -> Path:
    """A file or folder as given, else the host of that name (``homelab validate duo3060``, as
    every other command names a host)."""
    path = Path(given)
    if path.exists():
        return path
    host_file = host_path(given, inventory)
    if host_file.is_file():
        return host_file
    raise InventoryError(
        f"{given}: no such file, and no host of that name in {inventory / 'hosts'}"
        + did_you_mean(given, list_hosts(inventory), listing="known hosts", fallback="")
    )


def validate_command(args: argparse.Namespace) -> int:
    inventory = inventory_dir(args.inventory)
    report = validate_inventory(inventory, [_validate_target(p, inventory) for p in args.paths])
    for warning in report.warnings:
        print(f"homelab: warning: {warning}", file=sys.stderr)
    what = []
    if report.hosts:
        what.append(f"{len(report.hosts)} host(s) ({', '.join(report.hosts)})")
    if report.recipes:
        what.append(f"{len(report.recipes)} recipe(s)")
    print("ok: " + " and ".join(what) if what else "ok: nothing to check")
    return 0


def schema_command(args: argparse.Namespace) -> int:
    return schemas.run(args.kind, args.write, args.check, Path(args.dir))
