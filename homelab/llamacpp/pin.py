"""Pinning a host's llama.cpp source: what ``homelab lock`` records under ``llama_cpp``.

:func:`resolve_llama_cpp` is called by the lock command (owned by the hub stage). It keeps the
previous pin when nothing the host asks for changed and ``update`` is false, so re-locking is
offline and byte-for-byte stable; otherwise it resolves the ref (fetching only what is missing),
downloads pull-request patches and hashes every patch file.
"""

from __future__ import annotations

from pathlib import Path

from ..inventory.resolved import ResolvedHost
from ..inventory.schema import LlamaCpp
from ..lock import LlamaCppPin, PinnedPatch
from ..settings import state_dir
from .patches import collect
from .source import SourceCache, SourceError, SourceSpec


def source_spec(llama: LlamaCpp, inventory: Path) -> SourceSpec:
    """What the host file asks for: a local directory, a tarball, or (default) git."""
    if llama.path:
        path = Path(llama.path).expanduser()
        return SourceSpec("path", str(path if path.is_absolute() else (inventory / path).resolve()))
    if llama.tarball:
        return SourceSpec("tarball", llama.tarball, sha256=llama.tarball_sha256)
    return SourceSpec("git", llama.repo, llama.ref)


def _same_request(pin: LlamaCppPin, spec: SourceSpec) -> bool:
    if pin.source != spec.kind or pin.repo != spec.location or not pin.commit:
        return False
    if spec.kind == "git":
        return pin.ref == spec.ref
    if spec.kind == "tarball":
        return spec.sha256 is None or pin.tarball_sha256 == spec.sha256
    return False  # a local directory is re-read every time: its content is the pin


def resolve_llama_cpp(host: ResolvedHost, previous: LlamaCppPin | None, update: bool) -> LlamaCppPin:
    """The pin for ``host``'s llama.cpp: commit, build number, tarball sha256, patch hashes.

    ``previous`` (the lock's current pin) is kept when the host still asks for the same thing
    and ``update`` is false; ``update`` re-resolves branches and re-downloads PR patches.
    Raises a HomelabError (names the key and the fix) when the ref or a patch cannot be found.
    """
    llama = host.host.llama_cpp
    spec = source_spec(llama, host.inventory)
    state = state_dir()
    keep = previous is not None and not update and _same_request(previous, spec)
    if keep:
        assert previous is not None and previous.commit
        commit, number, sha = previous.commit, previous.build_number, previous.tarball_sha256
    else:
        resolved = SourceCache(state / "sources").resolve(spec, refresh_branches=True)
        commit, number, sha = resolved.commit, resolved.build_number, resolved.sha256
    number = llama.build_number or number
    if number is None:
        raise SourceError(
            f"{host.host_file}: cannot tell the llama.cpp build number of {spec.describe()}; "
            "set llama_cpp.build_number (the bNNNN of the release it is based on)"
        )
    pinned_prs = (
        {} if update or previous is None else {p.ref: p.sha256 for p in previous.patches if p.ref.startswith("pr:")}
    )
    patches = collect(llama.patches, host.patches_dir, llama.repo, state / "patches", pinned_prs)
    return LlamaCppPin(
        source=spec.kind,
        repo=spec.location,
        ref=spec.ref,
        commit=commit,
        build_number=number,
        tarball_sha256=sha,
        patches=[PinnedPatch(ref=p.ref, sha256=p.sha256) for p in patches],
    )


__all__ = ["resolve_llama_cpp", "source_spec"]
