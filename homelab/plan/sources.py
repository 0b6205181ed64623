"""Where the plan gets each model's metadata: the fetched file if it is on disk, else the Hub.

The lock says which files a model uses (``homelab.hub.cache.local_path`` says where fetch puts
them); a file not fetched yet is read from the Hub with Range requests (the header only, cached
by sha256), so ``homelab plan`` runs before a 20 GB download. Without a lock the recipe's
source is read directly (branch head for Hub files).
"""

from __future__ import annotations

from pathlib import Path

from ..gguf.facts import ModelFacts, facts_from_metadata
from ..hub.cache import local_path
from ..hub.gguf_header import (
    GGUFHeader,
    read_local_header,
    read_remote_header,
    read_url_header,
)
from ..inventory.resolved import ResolvedHost, ResolvedModel
from ..inventory.schema import Source
from ..lock import DRAFT_ROLES, WEIGHT_ROLES, Lock, PinnedFile
from .draft import DraftInput
from .host import ModelInput, PlanError


def _header(pf: PinnedFile, inventory: Path) -> tuple[GGUFHeader, str]:
    local = local_path(pf, inventory)
    if local.is_file():
        return read_local_header(local), str(local)
    if pf.source == "hf":
        assert pf.repo and pf.revision
        ref = f"hf://{pf.repo}/{pf.path}@{pf.revision}"
        return read_remote_header(pf.repo, pf.path, pf.revision, sha256=pf.sha256), ref
    if pf.source == "url":
        return read_url_header(pf.path, sha256=pf.sha256), pf.path
    raise PlanError(f"model file {local} is missing (source path: {pf.path}); fix the path or run `homelab fetch`")


def _merge(headers: list[GGUFHeader]) -> tuple[dict, list]:
    """Split GGUFs: metadata from part 1, tensors from every part."""
    fields = dict(headers[0].fields)
    tensors = [t for h in headers for t in h.tensors]
    return fields, tensors


def _pinned_facts(files: list[PinnedFile], inventory: Path) -> tuple[ModelFacts, str]:
    headers, where = [], []
    for pf in files:
        header, source = _header(pf, inventory)
        headers.append(header)
        where.append(source)
    fields, tensors = _merge(headers)
    return facts_from_metadata(fields, tensors, source=where[0]), where[0]


def pinned_input(host: ResolvedHost, model: ResolvedModel, lock: Lock) -> ModelInput | None:
    pinned = lock.models.get(model.id)
    if pinned is None:
        return None
    weights = [pf for pf in pinned.files if pf.role in WEIGHT_ROLES]
    drafts = [pf for pf in pinned.files if pf.role in DRAFT_ROLES]
    mmproj = sum(pf.size for pf in pinned.files if pf.role == "mmproj")
    if not weights:
        raise PlanError(f"{host.lock_file}: model {model.id} pins no GGUF file; run `homelab lock {host.name}`")
    if (model.draft is not None) != bool(drafts):
        return None  # the pin predates the recipe's draft change: read the recipe (lock re-pins it)
    facts, where = _pinned_facts(weights, host.inventory)
    draft = DraftInput(*_pinned_facts(drafts, host.inventory)) if drafts else None
    return ModelInput(model=model, facts=facts, mmproj_bytes=mmproj, source=where, draft=draft)


def _source_header(host: ResolvedHost, model: ResolvedModel, src: Source) -> tuple[GGUFHeader, str]:
    """The first file of a recipe source (branch head for Hub files)."""
    if src.hf:
        rev = src.hf.revision or "main"
        return read_remote_header(
            src.hf.repo, src.hf.file, rev, sha256=src.hf.sha256
        ), f"hf://{src.hf.repo}/{src.hf.file}@{rev}"
    if src.url:
        return read_url_header(src.url.url, sha256=src.url.sha256), src.url.url
    assert src.path
    path = Path(src.path.path).expanduser()
    if not path.is_absolute():
        path = host.inventory / path
    if not path.is_file():
        raise PlanError(f"model {model.id}: source path {path} does not exist")
    return read_local_header(path), str(path)


def recipe_input(host: ResolvedHost, model: ResolvedModel) -> ModelInput:
    """No pin yet: read the recipe's source (and draft) directly."""
    src = model.source
    mmproj = 0
    draft = None
    if model.draft is not None:
        header, where = _source_header(host, model, model.draft)
        draft = DraftInput(facts_from_metadata(header.fields, header.tensors, source=where), where)
    header, where = _source_header(host, model, src)
    if src.hf and src.hf.mmproj:
        mmproj = read_remote_header(src.hf.repo, src.hf.mmproj, src.hf.revision or "main").tensor_bytes
    facts = facts_from_metadata(header.fields, header.tensors, source=where)
    return ModelInput(model=model, facts=facts, mmproj_bytes=mmproj, source=where, draft=draft)


def model_input(host: ResolvedHost, model: ResolvedModel, lock: Lock | None = None) -> ModelInput:
    """Facts of one model: its pinned files first (local, else the Hub header), else the recipe."""
    inp = pinned_input(host, model, lock) if lock is not None else None
    return inp if inp is not None else recipe_input(host, model)


def model_inputs(host: ResolvedHost, lock: Lock | None = None) -> dict[str, ModelInput]:
    """Facts of every model of ``host``."""
    return {m.id: model_input(host, m, lock) for m in host.models}


def facts_only(inputs: dict[str, ModelInput]) -> dict[str, ModelFacts]:
    return {k: v.facts for k, v in inputs.items()}
