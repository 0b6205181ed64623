"""``homelab render HOST [--diff] [--out DIR] [--server PATH]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..inventory import load_host
from ..settings import inventory_dir
from .assemble import assemble, write_secrets
from .generation import (
    diff_generations,
    installed_dir,
    read_generation,
    render_host,
    staging_dir,
    write_generation,
)


def cmd_render(args: argparse.Namespace) -> int:
    host = load_host(args.host, inventory_dir(args.inventory))
    inputs = assemble(host, server=Path(args.server) if args.server else None)
    files = render_host(inputs)
    if args.diff:
        current = installed_dir(host.name)
        text = diff_generations(read_generation(current), files, str(current), "rendered")
        sys.stdout.write(text or f"no changes against {current}\n")
        if not args.out:
            return 0
    out = Path(args.out) if args.out else staging_dir(host.name)
    changed = write_generation(files, out)
    if not args.out:
        write_secrets(host, inputs.paths, peers=inputs.peers)
    print(f"{'rendered' if changed else 'unchanged'}: {out} ({len(files)} files)")
    return 0


def register(cli) -> None:  # noqa: ANN001 (homelab.cli.CLI; imported lazily by the CLI)
    parser = cli.command("render", cmd_render, "render a host's llama-swap config, router presets and systemd unit")
    parser.add_argument("host", help="host name (hosts/<host>.yaml)")
    parser.add_argument("--diff", action="store_true", help="show a unified diff against the installed generation")
    parser.add_argument("--out", help="write here instead of HOMELAB_STATE/hosts/<host>/staging")
    parser.add_argument("--server", help="llama-server to render for (default: the host's current build)")
    parser.add_argument("--inventory", help="inventory directory (default: HOMELAB_INVENTORY or the checkout)")
