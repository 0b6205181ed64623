"""The fake Hub speaks enough of the protocol for huggingface_hub's own API (other stages rely on it)."""

from __future__ import annotations

import pytest
from fakehub import FakeHub
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from homelab.hub.cache import local_path
from homelab.hub.gguf_header import read_local_header, read_pinned_header
from homelab.hub.resolve import resolve_lock


def test_hf_api_calls_against_the_fake(hub: FakeHub) -> None:
    api = HfApi(endpoint=hub.endpoint)
    commit = hub.repos["acme/tiny-GGUF"].refs["main"]
    info = api.model_info("acme/tiny-GGUF", files_metadata=True)
    assert info.sha == commit
    lfs = {s.rfilename: s.lfs for s in info.siblings}
    assert lfs["README.md"] is None and lfs["tiny-Q8_0.gguf"].sha256 == hub.file("acme/tiny-GGUF", "tiny-Q8_0.gguf").sha256
    [entry] = api.get_paths_info("acme/tiny-GGUF", ["tiny-Q8_0.gguf"], revision=commit)
    assert entry.lfs.sha256 == lfs["tiny-Q8_0.gguf"].sha256
    tree = {e.path for e in api.list_repo_tree("acme/split-GGUF", recursive=True)}
    assert tree == {"big-00001-of-00002.gguf", "big-00002-of-00002.gguf"}
    meta = get_hf_file_metadata(hf_hub_url("acme/tiny-GGUF", "tiny-Q8_0.gguf", endpoint=hub.endpoint))
    assert (meta.commit_hash, meta.etag, meta.location.startswith(hub.cdn)) == (commit, entry.lfs.sha256, True)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("acme/nope")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("acme/tiny-GGUF", revision="nope")
    with pytest.raises(GatedRepoError):
        api.model_info("acme/gated-GGUF")
    with pytest.raises(EntryNotFoundError):
        get_hf_file_metadata(hf_hub_url("acme/tiny-GGUF", "nope.gguf", endpoint=hub.endpoint))
    assert api.model_info("acme/gated-GGUF", token=hub.token).sha


def test_pinned_header_comes_from_the_hub_then_the_cache(hub: FakeHub, inventory) -> None:
    inventory.recipe("tiny", {"hf": {"repo": "acme/tiny-GGUF", "file": "tiny-Q8_0.gguf"}})
    host = inventory.host(["tiny"])
    [pf] = resolve_lock(host).lock.models["tiny"].files
    hub.clear_requests()
    header = read_pinned_header(pf, local_path(pf, host.inventory))
    assert header.fields["general.name"] == "model"
    assert hub.requests and all(r.method == "GET" for r in hub.requests)
    hub.clear_requests()
    assert read_pinned_header(pf) == header and hub.requests == []


def test_local_header_of_the_fake_hubs_bytes(gguf_bytes, tmp_path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(gguf_bytes["mmproj"])
    assert read_local_header(path).fields["general.name"] == "mmproj"
