"""``homelab serve`` and ``homelab reload`` (the supervisor's benchmarks are in :mod:`homelab.bench.supervisor`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..address import is_any_address, is_loopback, parse_listen
from ..errors import HomelabError
from ..files import atomic_write_text
from ..http_client import http_session
from .config import Config
from .config_load import load_config

if TYPE_CHECKING:
    from ..cli import CLI

log = logging.getLogger("homelab.supervisor")


def no_key_warning(host: str | None, port: int, config: Config) -> str | None:
    """The warning ``homelab serve`` prints when it listens beyond loopback without API keys."""
    if config.api_keys or (host is not None and is_loopback(host)):
        return None
    where = f"{host}:{port}" if host else f"every interface (:{port})"
    return (
        f"warning: homelab serve listens on {where} without API keys: anyone who can reach this port "
        f"can use every model and read other users' prompts. Set apiKeys in {config.source or 'the config'} "
        "(runtime.api_key_env in the host file), or listen on 127.0.0.1"
    )


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop when it is installed (less per-request overhead), asyncio otherwise.
    ``HOMELAB_NO_UVLOOP=1`` forces asyncio."""
    if not os.environ.get("HOMELAB_NO_UVLOOP"):
        try:
            # Deferred: only `serve` runs a loop, and uvloop is a dependency on Linux only.
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def cmd_serve(args: argparse.Namespace) -> int:
    # Deferred: the app pulls in aiohttp (~0.15 s), and every `homelab` command imports this
    # module to register its subcommands.
    from .app import serve

    config = load_config(Path(args.config))
    for note in config.warnings:
        print(f"warning: {note}", file=sys.stderr)
    if args.check:
        print(
            f"{args.config}: ok, {len(config.models)} models"
            + (f", matrix with {len(config.matrix.sets)} sets" if config.matrix else "")
            + (f", {len(config.groups)} groups" if config.groups else "")
            + (f", {plural(len(config.selectors), 'selector')}" if config.selectors else "")
            + (f", {plural(len(config.profiles), 'profile')}" if config.profiles else "")
        )
        return 0
    host, port = parse_listen(args.listen)
    if (warning := no_key_warning(host, port, config)) is not None:
        print(warning, file=sys.stderr, flush=True)
    if args.pid_file:
        atomic_write_text(Path(args.pid_file), f"{os.getpid()}\n")
    try:
        run_loop(
            serve(
                config,
                host,
                port,
                loader=load_config,
                drain_timeout=args.drain_timeout,
                watch_config=args.watch_config,
            )
        )
    finally:
        if args.pid_file:
            Path(args.pid_file).unlink(missing_ok=True)
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    if args.pid_file:
        try:
            pid = int(Path(args.pid_file).read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as exc:
            raise HomelabError(f"cannot signal the supervisor from {args.pid_file}: {exc}") from None
        print(f"sent SIGHUP to {pid} (the supervisor logs whether the new config was accepted)")
        return 0
    # Deferred: requests costs ~0.08 s to import, on every `homelab` command otherwise.
    import requests

    host, port = parse_listen(args.listen)
    host = "127.0.0.1" if host is None or is_any_address(host) else host
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        with http_session() as session:
            resp = session.post(f"http://{host}:{port}/x-reload", headers=headers, timeout=30)
    except requests.RequestException as exc:
        raise HomelabError(f"cannot reach the supervisor at {host}:{port}: {exc}") from None
    body = resp.json() if resp.headers.get("Content-Type", "").startswith("application/json") else {}
    if resp.status_code != 200:
        raise HomelabError(f"reload rejected: {body.get('error') or resp.text}")
    print(f"reloaded; restarted models: {', '.join(body.get('changed') or []) or 'none'}")
    return 0


def register(cli: CLI) -> None:
    serve = cli.command("serve", cmd_serve, "run the supervisor: one OpenAI endpoint, models swapped on demand")
    serve.add_argument("--config", required=True, help="llama-swap config.yaml")
    serve.add_argument(
        "--listen", default="127.0.0.1:12434", help="HOST:PORT, or :PORT for every interface (default 127.0.0.1:12434)"
    )
    serve.add_argument("--check", action="store_true", help="validate the config and exit")
    serve.add_argument("--pid-file", help="write the supervisor's PID here (for homelab reload)")
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds to let in-flight requests finish on SIGTERM (default 30)",
    )
    serve.add_argument(
        "--watch-config",
        action="store_true",
        help="reload the config when its file changes (as SIGHUP does: only changed models restart)",
    )
    reload = cli.command("reload", cmd_reload, "make a running supervisor re-read its config")
    where = reload.add_mutually_exclusive_group()
    where.add_argument("--pid-file", help="signal the supervisor whose PID is in this file")
    where.add_argument("--listen", default="127.0.0.1:12434", help="ask the supervisor at HOST:PORT")
    reload.add_argument("--api-key", help="an apiKeys entry, when the config sets apiKeys")
