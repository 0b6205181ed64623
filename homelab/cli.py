"""The ``homelab`` command: stage subcommands for people who do not use doit.

Each stage contributes its subcommands from its own ``commands`` module (a ``register(cli)``
function), so this file only wires them together and turns :class:`HomelabError` into one
clear line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import __version__
from .errors import HomelabError

COMMAND_MODULES = (
    "homelab.inventory.commands",
    "homelab.hub.commands",
    "homelab.llamacpp.commands",
    "homelab.plan.gguf_inspect",  # `homelab gguf inspect`: facts with the plan stage's estimate
    "homelab.plan.commands",
    "homelab.render.commands",
    "homelab.deploy.commands",
    "homelab.tasks.commands",
    "homelab.supervisor.commands",
    "homelab.bench.fetch",
    "homelab.bench.build",
    "homelab.bench.plan",
    "homelab.bench.deploy",
    "homelab.bench.supervisor",
    "homelab.bench.supervisor_swap",
    "homelab.bench.gpu",
)

Handler = Callable[[argparse.Namespace], int | None]


@dataclass
class CLI:
    """What a stage's ``register`` gets: the top-level and the ``bench`` subparser groups."""

    commands: argparse._SubParsersAction
    bench: argparse._SubParsersAction

    def command(self, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        parser = self.commands.add_parser(name, help=help, description=help)
        parser.set_defaults(handler=handler)
        return parser

    def benchmark(self, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        parser = self.bench.add_parser(name, help=help, description=help)
        parser.set_defaults(handler=handler)
        return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="homelab", description="Build, plan, render, deploy and serve local LLMs from YAML."
    )
    parser.add_argument("--version", action="version", version=f"homelab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench_parser = commands.add_parser("bench", help="benchmarks that print comparable numbers")
    bench = bench_parser.add_subparsers(dest="bench", metavar="BENCH")

    def bench_help(_args: argparse.Namespace) -> int:
        bench_parser.print_help()
        return 2

    bench_parser.set_defaults(handler=bench_help)
    cli = CLI(commands=commands, bench=bench)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # stage without commands yet
                continue
            raise
        module.register(cli)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
    )
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except HomelabError as exc:
        print(f"homelab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("homelab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
