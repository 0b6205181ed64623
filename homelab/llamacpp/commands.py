"""``homelab source HOST`` and ``homelab build HOST``: the llama.cpp stage without doit."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from ..inventory import ResolvedHost, load_host
from ..settings import inventory_dir
from .flags import parse_help
from .stage import build_host, dry_run_host, host_flag_problems, prepare_host


def _host(args: argparse.Namespace) -> ResolvedHost:
    return load_host(args.host, inventory_dir(args.inventory))


def _source(args: argparse.Namespace) -> int:
    host = _host(args)
    started = time.monotonic()
    planned, worktree = prepare_host(host, args.target or ())
    request = planned.request
    if worktree is None:
        print(f"{host.name}: llama.cpp {request.label} already built (key {planned.key[:12]})")
    else:
        print(
            f"{host.name}: llama.cpp {request.label} ({request.commit[:12]}) with "
            f"{len(request.patches)} patch(es) ready in {worktree} ({time.monotonic() - started:.1f} s)"
        )
    return 0


def _build(args: argparse.Namespace) -> int:
    host = _host(args)
    if args.dry_run:
        text, missing = dry_run_host(host, args.target or ())
        print(text)
        for item in missing:
            print(f"warning: a build would stop here: missing {item}", file=sys.stderr)
        return 0
    started = time.monotonic()
    build, built = build_host(host, args.target or (), progress=not args.quiet and sys.stderr.isatty())
    took = time.monotonic() - started
    verb = f"built in {took:.1f} s" if built else "up to date"
    print(f"{host.name}: llama-server {verb}: {build.server}")
    problems = host_flag_problems(host, build.flags())
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 0


def _flags(args: argparse.Namespace) -> int:
    """Print the long flags a llama-server binary accepts (the static snapshot format)."""
    result = subprocess.run([args.binary, "--help"], capture_output=True, text=True, timeout=60)
    accepted = parse_help(result.stdout + result.stderr, args.binary)
    for name in accepted.long_names():
        print(name)
    return 0


def register(cli) -> None:
    for name, handler, text in (
        ("source", _source, "check out llama.cpp at the pinned commit and apply the host's patches"),
        ("build", _build, "configure and compile llama-server for the host's backend (cached by build key)"),
    ):
        parser = cli.command(name, handler, text)
        parser.add_argument("host", help="host name (hosts/<host>.yaml)")
        parser.add_argument("--inventory", help="inventory directory (default: $HOMELAB_INVENTORY or the checkout)")
        parser.add_argument(
            "--target",
            action="append",
            choices=["llama-fit-params", "rpc-server"],
            help="also build this target (repeatable; hosts can list them in llama_cpp.targets)",
        )
        if name == "build":
            parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
            parser.add_argument(
                "--dry-run", action="store_true", help="print the environment and cmake commands; build nothing"
            )
    parser = cli.command("server-flags", _flags, "print the long flags a llama-server binary accepts")
    parser.add_argument("binary", help="path to llama-server")
