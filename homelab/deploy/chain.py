"""Deploying beyond one local chain: a remote host (sync, then its own chain over ssh) and many
hosts (``all``: one ``homelab deploy`` process per host, in waves, with a summary table).

The chain itself (lock -> fetch -> source/build -> plan -> render -> install -> verify) is the
doit graph of :mod:`homelab.tasks`, on top of this layer.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import HomelabError
from ..inventory import ResolvedHost, list_hosts, load_host
from ..settings import CHECKOUT, inventory_dir
from . import remote
from .hostlock import deploy_lock
from .paths import HostPaths
from .waves import blocked_by, deploy_waves


def is_remote(host: ResolvedHost) -> bool:
    return host.host.address != "local"


def deploy_remote(host: ResolvedHost, args: list[str], say=print) -> int:
    """Sync, then ``homelab deploy HOST --local ARGS`` on the remote, streaming its output."""
    address = remote.SSHAddress.parse(host.host.address)
    # the remote side locks its own deploy; this one keeps two syncs from interleaving
    with deploy_lock(HostPaths.for_host(host.name)):
        remote.sync(address, host.inventory, say)
        code = remote.run_homelab(address, ["deploy", host.name, "--local", *args], say)
        if "--dry-run" not in args:
            remote.fetch_back_lock(address, host.name, host.lock_file, say)
    return code


@dataclass
class HostResult:
    host: str
    code: int
    seconds: float
    last_line: str
    skipped: bool = False
    """Not attempted: a host it depends on (an RPC worker) did not deploy."""

    @property
    def result(self) -> str:
        return "skipped" if self.skipped else "ok" if self.code == 0 else f"exit {self.code}"


def dependencies(names: list[str], inventory: Path | None = None) -> dict[str, tuple[str, ...]]:
    """Each host's ``depends_on`` (the RPC workers its models use). A host that does not load
    has none here: its own deploy reports the problem."""
    inventory = inventory or inventory_dir()
    found: dict[str, tuple[str, ...]] = {}
    for name in names:
        try:
            found[name] = load_host(name, inventory).depends_on
        except HomelabError:
            found[name] = ()
    return found


def deploy_all(
    names: list[str],
    args: list[str],
    jobs: int | None = None,
    depends_on: Mapping[str, Iterable[str]] | None = None,
) -> list[HostResult]:
    """Deploy each host in its own ``homelab deploy`` process, output prefixed: in waves (RPC
    workers before their heads), the hosts of a wave in parallel. A host whose worker failed is
    skipped, and so is whatever depends on it in turn."""
    depends = {n: tuple((depends_on or {}).get(n, ())) for n in names}
    waves = deploy_waves(depends)
    if len(waves) > 1:
        print("deploy order: " + "; ".join(f"wave {i}: {', '.join(w)}" for i, w in enumerate(waves, 1)), flush=True)
    width = max((len(n) for n in names), default=4)

    def one(name: str) -> HostResult:
        started = time.monotonic()
        last = ""
        proc = subprocess.Popen(
            [sys.executable, "-m", "homelab.cli", "deploy", name, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=os.getcwd(),
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")])),
                "PYTHONUNBUFFERED": "1",  # lines arrive as they are printed
            },
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.strip():
                last = line
            sys.stdout.write(f"[{name:<{width}}] {line}\n")
            sys.stdout.flush()
        return HostResult(name, proc.wait(), time.monotonic() - started, last)

    results: dict[str, HostResult] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or len(names) or 1) as pool:
        for wave in waves:
            failed = [r.host for r in results.values() if r.code or r.skipped]
            todo = []
            for name in wave:
                dep = blocked_by(name, depends, failed)
                if dep is None:
                    todo.append(name)
                    continue
                why = "failed" if not results[dep].skipped else "was skipped"
                results[name] = HostResult(name, 1, 0.0, f"not deployed: {dep}, whose rpc-server it uses, {why}", True)
                print(f"[{name:<{width}}] {results[name].last_line}", flush=True)
            for result in pool.map(one, todo):
                results[result.host] = result
    return [results[n] for n in names]


def summary_table(results: list[HostResult]) -> str:
    width = max([len(r.host) for r in results] + [4])
    lines = [f"{'host':<{width}}  result   time     last line", f"{'-' * width}  -------  -------  ---------"]
    for r in results:
        lines.append(f"{r.host:<{width}}  {r.result:<7}  {r.seconds:6.1f}s  {r.last_line[:80]}")
    return "\n".join(lines)


def all_hosts(inventory: Path | None = None) -> list[str]:
    return list_hosts(inventory or inventory_dir())


def load(name: str) -> ResolvedHost:
    inventory = inventory_dir()
    known = list_hosts(inventory)
    if name not in known:
        raise HomelabError(f"unknown host {name!r} in {inventory}/hosts; known hosts: {', '.join(known) or '(none)'}")
    return load_host(name, inventory)
