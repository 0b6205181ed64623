"""``dry=1`` / ``--dry-run``: what a deploy would change, computed without changing anything.

Reports four things: downloads (lockfile pins whose blob is not in the Hugging Face cache, with
sizes), builds (whether the build stage's output for the pinned inputs exists), files (a unified
diff of the rendered files against the current generation) and the service action
(start/restart/reload/none). Each part says plainly when it cannot be known yet (no lock, render
needs the downloads first...). Nothing is changed: no lockfile, no download, no build, no generation, no service action.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import HomelabError
from ..inventory import ResolvedHost
from ..llamacpp.gitrepo import has_commit
from ..llamacpp.pin import source_spec
from ..llamacpp.stage import build_request, builder
from ..lock import read_lock
from ..render import render_host, staging_dir
from ..render.assemble import assemble
from ..settings import hf_cache_dir
from .changes import action_for, compare, unified_diff
from .generations import Files, GenerationStore, read_tree
from .paths import HostPaths
from .units import side_unit_files, side_units, unit_changed, units_of


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _cached(repo: str, sha256: str) -> bool:
    """An LFS file is in the hub cache when its blob (named by its sha256) is there."""
    blob = hf_cache_dir() / f"models--{repo.replace('/', '--')}" / "blobs" / sha256
    return blob.is_file()


def downloads(host: ResolvedHost) -> list[str]:
    lock = read_lock(host.lock_file)
    if lock is None:
        return [f"no lockfile yet ({host.lock_file.name}): `doit lock host={host.name}` resolves every model first"]
    lines, total = [], 0
    wanted = {m.id for m in host.models}
    for model_id, pinned in sorted(lock.models.items()):
        if model_id not in wanted:
            continue
        for f in pinned.files:
            if f.source == "hf" and f.repo and not _cached(f.repo, f.sha256):
                lines.append(f"download {f.repo}/{f.path} ({human_size(f.size)}) for {model_id}")
                total += f.size
            elif f.source == "url" and not Path(f.path).exists():
                lines.append(f"download {f.path} ({human_size(f.size)}) for {model_id}")
                total += f.size
    missing = sorted(wanted - set(lock.models))
    for model_id in missing:
        lines.append(f"{model_id}: not in the lockfile yet (lock would resolve it; size unknown)")
    if lines and total:
        lines.append(f"total download: {human_size(total)}")
    return lines or ["none: every pinned file is in the cache"]


def builds(host: ResolvedHost) -> list[str]:
    """Whether the pinned llama.cpp build exists, without fetching or building anything."""
    lock = read_lock(host.lock_file)
    pin = lock.llama_cpp if lock else None
    if pin is None or not pin.commit:
        return [f"unknown: no llama.cpp pin in {host.lock_file.name} yet (lock resolves it)"]
    try:
        b = builder()
        spec = source_spec(host.host.llama_cpp, host.inventory)
        if not has_commit(b.sources.git_dir(spec), pin.commit):
            return [f"fetch llama.cpp {pin.commit[:12]} from {spec.location}", "build llama-server (not built yet)"]
        planned = b.plan(build_request(host, pin))
    except HomelabError as exc:
        return [f"unknown: {exc}"]
    if b.installed(planned.key):
        current = b.current(host.name)
        switch = "" if current and current.key == planned.key else " (switch to it)"
        return [f"none: llama-server {pin.ref} build {planned.key[:12]} exists{switch}"]
    return [f"build llama-server {pin.ref} ({host.host.backend}, key {planned.key[:12]}): not built yet"]


def rendered_files(host: ResolvedHost) -> tuple[Files | None, str]:
    """The files a deploy would install, and where they come from."""
    try:
        files = render_host(assemble(host))
        return {k: v.encode() for k, v in files.items()}, "rendered now, in memory"
    except HomelabError as exc:
        note = f"render cannot run yet: {exc}"
    staged = staging_dir(host.name)
    if staged.is_dir():
        return read_tree(staged), f"{note}; showing the last rendered files in {staged}"
    return None, f"{note}; nothing rendered yet"


def preview(host: ResolvedHost, service: str | None = None) -> str:
    store = GenerationStore(HostPaths.for_host(host.name))
    current = store.current()
    old = current.files() if current else None
    new, source = rendered_files(host)
    out = [f"dry run for {host.name} ({host.host.address}): nothing will be changed"]
    out.append("downloads:")
    out += [f"  {line}" for line in downloads(host)]
    out.append("builds:")
    out += [f"  {line}" for line in builds(host)]
    out.append(f"files ({source}):")
    restarted_sides: list[str] = []
    changed = True  # nothing rendered yet: render will make a generation
    if new is None:
        out.append("  unknown until render has run")
        action = "start" if current is None else "unknown"
    else:
        changes = compare(old, new)
        changed = bool(changes)
        if not changes:
            out.append(f"  none: identical to generation {current.number if current else '-'}")
        else:
            out += [f"  {line}" for line in changes.summary()]
            diff = unified_diff(old, new)
            if diff:
                out.append(diff.rstrip("\n"))
        sides = side_unit_files(host.name, old, new)
        action = action_for(changes, current is not None, host.host.runtime.kind, sides) if changes else "none"
        restarted_sides = [u.name for u in side_units(units_of(new), host.name) if unit_changed(u, old, new)]
    mode = service or host.host.runtime.service
    unit = f"homelab-{host.name}.service"
    verbs = {
        "start": f"start {unit} (service: {mode})",
        "restart": f"restart {unit} (service: {mode})",
        "reload": f"reload {unit} (SIGHUP: only changed models restart)",
        "none": "nothing restarted",
        "unknown": "unknown until render has run",
    }
    out.append(f"service: {verbs[action]}")
    for name in restarted_sides:
        known = old is not None and any(n.rsplit("/", 1)[-1] == name for n in old)
        out.append(
            f"side unit: {'restart' if known else 'start'} {name} ({'its unit or environment changed' if known else 'new'})"
        )
    generation = f"a new generation {(store.numbers() or [0])[-1] + 1}" if changed else "no new generation"
    out.append(f"would create: {generation}")
    return "\n".join(out)
