"""Fetch: download pinned files from the fake Hub into the HF cache, verified, resumable."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections import namedtuple

import pytest
from fakehub import FakeHub

from homelab.cli import main
from homelab.hub import download
from homelab.hub import fetch as fetch_mod
from homelab.hub.cache import hf_blob_path, is_fetched, manifest_path, model_files
from homelab.hub.errors import ChecksumMismatch, HubError
from homelab.hub.fetch import fetch_host
from homelab.hub.resolve import resolve_lock
from homelab.settings import hf_cache_dir


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def locked(hub, inventory, recipes: dict[str, dict], **kw):
    for name, source in recipes.items():
        inventory.recipe(name, source)
    host = inventory.host(list(recipes))
    lock = resolve_lock(host).lock
    hub.clear_requests()
    return host, lock


TINY = {"tiny": {"hf": {"repo": "acme/tiny-GGUF", "file": "tiny-Q8_0.gguf"}}}


def test_fetch_verifies_stamps_and_refetch_makes_no_request(hub: FakeHub, inventory, gguf_bytes) -> None:
    host, lock = locked(hub, inventory, TINY)
    [manifest] = fetch_host(host, lock, progress=False).values()
    [path] = model_files(host, lock)["tiny"]
    assert path.read_bytes() == gguf_bytes["model"]
    assert path.is_relative_to(hf_cache_dir()) and "snapshots" in path.parts  # the standard HF cache
    doc = json.loads(manifest.read_text())
    assert manifest == manifest_path("box", "tiny")
    assert doc["files"][0]["sha256"] == sha(gguf_bytes["model"])
    # HEAD resolve (where is it), GET blob (ours, resumable), HEAD (hf_hub_download links the blob)
    assert [(r.host, r.method) for r in hub.requests] == [("hub", "HEAD"), ("cdn", "GET"), ("hub", "HEAD")]
    hub.clear_requests()
    fetch_host(host, lock, progress=False)
    assert hub.requests == []
    # a stamp lost but the file cached: verified again, still no request
    manifest.unlink()
    fetch_host(host, lock, progress=False)
    assert hub.requests == [] and manifest.exists()


def test_dropped_connection_resumes_with_range(hub: FakeHub, inventory, gguf_bytes, monkeypatch) -> None:
    # a file of 24 MiB dropped after 15 MiB
    data = random.Random(7).randbytes(24 << 20)
    hub.add_repo("acme/large-GGUF", {"large.gguf": data})
    host, lock = locked(hub, inventory, {"large": {"hf": {"repo": "acme/large-GGUF", "file": "large.gguf"}}})
    hub.drop_once(sha(data), after_bytes=15 << 20)
    fetch_host(host, lock, progress=False)
    gets = [r for r in hub.requests if r.host == "cdn" and r.method == "GET"]
    assert len(gets) == 2
    assert gets[1].headers.get("range") == f"bytes={15 << 20}-"  # resumed exactly where it stopped
    [path] = model_files(host, lock)["large"]
    assert sha(path.read_bytes()) == sha(data)


def test_tampered_byte_is_caught_and_moved_aside(hub: FakeHub, inventory, gguf_bytes) -> None:
    host, lock = locked(hub, inventory, TINY)
    good = sha(gguf_bytes["model"])
    hub.tamper(good)
    with pytest.raises(ChecksumMismatch) as info:
        fetch_host(host, lock, progress=False)
    msg = str(info.value)
    pf = lock.models["tiny"].files[0]
    assert "acme/tiny-GGUF/tiny-Q8_0.gguf" in msg and f"expected {good}" in msg
    bad = hf_blob_path(pf).with_name(good + ".bad")
    assert bad.exists() and f"got {sha(bad.read_bytes())}" in msg
    assert not hf_blob_path(pf).exists() and not model_files(host, lock)["tiny"][0].exists()
    assert not manifest_path("box", "tiny").exists()
    # the Hub serves the right bytes again: the next fetch downloads and passes
    hub._tampered.clear()
    fetch_host(host, lock, progress=False)
    assert sha(model_files(host, lock)["tiny"][0].read_bytes()) == good


def test_split_and_mmproj_land_side_by_side(hub: FakeHub, inventory, gguf_bytes) -> None:
    host, lock = locked(
        hub,
        inventory,
        {
            "big": {"hf": {"repo": "acme/split-GGUF", "file": "big-00001-of-00002.gguf"}},
            "vis": {"hf": {"repo": "acme/vision-GGUF", "file": "v.gguf", "mmproj": "mmproj-F16.gguf"}},
        },
    )
    fetch_host(host, lock, progress=False)
    files = model_files(host, lock)
    assert [p.name for p in files["big"]] == ["big-00001-of-00002.gguf", "big-00002-of-00002.gguf"]
    assert files["big"][0].parent == files["big"][1].parent  # llama.cpp finds part 2 beside part 1
    assert files["big"][1].read_bytes() == gguf_bytes["part2"]
    assert [p.name for p in files["vis"]] == ["v.gguf", "mmproj-F16.gguf"]
    assert files["vis"][1].read_bytes() == gguf_bytes["mmproj"]


def test_404_file_after_lock_names_repo_and_file(hub: FakeHub, inventory, gguf_bytes) -> None:
    host, lock = locked(hub, inventory, TINY)
    # the pinned commit disappears upstream (force-push): the pin's revision is gone
    repo = hub.repos["acme/tiny-GGUF"]
    commit = lock.models["tiny"].files[0].revision
    repo.commits[commit] = {"README.md": repo.commits[commit]["README.md"]}
    with pytest.raises(HubError, match=r"acme/tiny-GGUF/tiny-Q8_0.gguf.*no such file in acme/tiny-GGUF"):
        fetch_host(host, lock, progress=False)


def test_missing_repo_and_gated_repo(hub: FakeHub, inventory, gguf_bytes, monkeypatch) -> None:
    monkeypatch.setenv("HF_TOKEN", hub.token)
    host, lock = locked(hub, inventory, {"g": {"hf": {"repo": "acme/gated-GGUF", "file": "g.gguf"}}})
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubError, match=r"acme/gated-GGUF.*Set HF_TOKEN.*accept the model's license"):
        fetch_host(host, lock, progress=False)
    monkeypatch.setenv("HF_TOKEN", "hf_someone_else")
    with pytest.raises(HubError, match=r"HTTP 403.*acme/gated-GGUF/g.gguf|acme/gated-GGUF/g.gguf.*HTTP 403"):
        fetch_host(host, lock, progress=False)
    monkeypatch.setenv("HF_TOKEN", hub.token)  # read at call time, not at import
    fetch_host(host, lock, progress=False)
    assert [r.headers.get("authorization") for r in hub.requests if r.host == "hub"][-1] == f"Bearer {hub.token}"

    del hub.repos["acme/gated-GGUF"]
    shutil.rmtree(hf_cache_dir())
    with pytest.raises(HubError, match=r"repository 'acme/gated-GGUF' not found"):
        fetch_host(host, lock, progress=False)


def test_not_enough_disk_space_fails_before_downloading(hub: FakeHub, inventory, gguf_bytes, monkeypatch) -> None:
    host, lock = locked(hub, inventory, TINY)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(fetch_mod.shutil, "disk_usage", lambda _p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(HubError, match=rf"not enough disk space.*{len(gguf_bytes['model'])} bytes\) still to download.*1000 bytes\) free"):
        fetch_host(host, lock, progress=False)
    assert hub.requests == []


def test_url_and_path_sources(hub: FakeHub, inventory, gguf_bytes) -> None:
    data = random.Random(8).randbytes(6 << 20)
    hub.add_repo("acme/web", {"w.gguf": data})
    blob = hub.file("acme/web", "w.gguf")
    (inventory.root / "mine.gguf").write_bytes(gguf_bytes["mmproj"])
    host, lock = locked(
        hub,
        inventory,
        {
            "web": {"url": {"url": f"{hub.cdn}/blobs/{blob.sha256}", "sha256": blob.sha256}},
            "mine": {"path": {"path": "mine.gguf"}},
        },
    )
    hub.drop_once(blob.sha256, after_bytes=(3 << 20) + 1000)
    fetch_host(host, lock, progress=False)
    files = model_files(host, lock)
    assert files["web"][0].read_bytes() == data
    assert files["mine"][0] == inventory.root / "mine.gguf"
    gets = [r for r in hub.requests if r.method == "GET"]
    assert gets[-1].headers.get("range") == f"bytes={(3 << 20) + 1000}-"  # not a byte lost
    hub.clear_requests()
    fetch_host(host, lock, progress=False)
    assert hub.requests == []
    # a local file that changed is caught (and left where it is: it is the user's)
    (inventory.root / "mine.gguf").write_bytes(gguf_bytes["model"])
    assert not is_fetched(host, "mine", lock.models["mine"])
    with pytest.raises(ChecksumMismatch, match="mine.gguf: sha256 mismatch.*left in place"):
        fetch_host(host, lock, ["mine"], progress=False)


def test_cli_fetch_prints_the_model_path(hub: FakeHub, inventory, capsys) -> None:
    host, lock = locked(hub, inventory, TINY)
    assert main(["fetch", "box", "--inventory", str(inventory.root), "-q"]) == 0
    assert str(model_files(host, lock)["tiny"][0]) in capsys.readouterr().out
    assert main(["fetch", "box", "nope", "--inventory", str(inventory.root)]) == 2
    assert "no model nope on host box" in capsys.readouterr().err


def test_interrupted_run_keeps_its_bytes_and_the_next_run_resumes(hub: FakeHub, inventory, monkeypatch) -> None:
    monkeypatch.setattr(download, "RETRY_DELAY_S", 0.01)
    data = random.Random(9).randbytes(12 << 20)
    hub.add_repo("acme/flaky-GGUF", {"f.gguf": data})
    host, lock = locked(hub, inventory, {"f": {"hf": {"repo": "acme/flaky-GGUF", "file": "f.gguf"}}})
    hub.drop_once(sha(data), after_bytes=5 << 20)
    for _ in range(download.ATTEMPTS):  # then the link is dead: no byte gets through
        hub.drop_once(sha(data), after_bytes=0)
    with pytest.raises(HubError, match=rf"download failed {download.ATTEMPTS} times.*{5 << 20} of {12 << 20} bytes are kept"):
        fetch_host(host, lock, progress=False)
    assert not manifest_path("box", "f").exists()
    hub.clear_requests()
    fetch_host(host, lock, progress=False)  # a new run picks up the partial file
    [get] = [r for r in hub.requests if r.method == "GET"]
    assert get.headers["range"] == f"bytes={5 << 20}-"
    assert sha(model_files(host, lock)["f"][0].read_bytes()) == sha(data)
