"""doit tasks for the build stage (thin: the work lives in homelab.llamacpp.stage).

Up to date means: the build key computed now (commit, patch contents, backend, cmake options,
targets) is the one in the host's stamp file and that build is installed. The key is computed
when the task is about to run, not when the graph is made, because ``lock:<host>`` may write
the lock earlier in the same run. Recipe changes that do not reach the key (context size,
sampling, a new model on a CPU host) leave the build alone.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from ..errors import HomelabError
from ..inventory import ResolvedHost
from .graph import each_host, user_action


#: planned builds of this doit run (cleared when the tasks are created) by (host object, lock
#: bytes), the host kept alive beside its plan: source's and build's up-to-date checks both need
#: the build key, and computing it runs git and probes the toolchain
_PLANNED: dict[tuple[int, bytes], tuple[ResolvedHost, Any]] = {}


def planned_build(host: ResolvedHost) -> Any:
    """``plan_host(host)``, computed once per lockfile content (the lock stage runs first and
    may move the pin; nothing later in the run changes what the key is made of)."""
    from ..llamacpp.stage import plan_host

    try:
        lock = host.lock_file.read_bytes()
    except FileNotFoundError:
        lock = b""
    key = (id(host), lock)
    if key not in _PLANNED:
        _PLANNED[key] = (host, plan_host(host))  # a HomelabError is not cached: the action reports it
    return _PLANNED[key][1]


def _build_uptodate(host: ResolvedHost) -> bool:
    from ..llamacpp.stage import builder, read_stamp

    stamp = read_stamp(host.name)
    if stamp is None:
        return False
    try:
        planned = planned_build(host)
    except HomelabError:
        return False  # the action reports it
    return stamp.get("key") == planned.key and builder().installed(planned.key) is not None


def _build(host: ResolvedHost) -> None:
    from ..llamacpp.stage import build_host

    build, built = build_host(host, progress=sys.stderr.isatty())
    print(f"{host.name}: llama-server {'built' if built else 'up to date'}: {build.server}")


def task_build() -> Iterator[dict[str, Any]]:
    """Configure and compile llama-server for the host's backend."""
    from ..llamacpp.stage import stamp_path

    _PLANNED.clear()  # a new run (in-process runs too): patches or tools may have changed since
    yield {"basename": "build", "name": None, "doc": "Configure and compile llama-server for the host's backend"}
    for host in each_host():
        yield {
            "name": host.name,
            "doc": f"Configure and compile llama-server for the host's backend ({host.name})",
            "actions": [(user_action(_build), [host])],
            "uptodate": [(_build_uptodate, [host], {})],
            "targets": [str(stamp_path(host.name))],
            "task_dep": [f"source:{host.name}"],
        }
