"""A model's draft (speculative decoding) is pinned, re-pinned and fetched like its own files,
over real HTTP from the fake Hub."""

from __future__ import annotations

import hashlib

import pytest
import yaml
from fakehub import FakeHub

from homelab.cli import main
from homelab.hub.cache import model_files
from homelab.hub.errors import ChecksumMismatch, HubError
from homelab.hub.fetch import fetch_host
from homelab.hub.resolve import request_of, resolve_lock
from homelab.inventory import load_host
from homelab.lock import LockError, read_lock

TINY = {"hf": {"repo": "acme/tiny-GGUF", "file": "tiny-Q8_0.gguf"}}
SPLIT_DRAFT = {"hf": {"repo": "acme/split-GGUF", "file": "big-00001-of-00002.gguf"}}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_host(inventory, entry: dict | None = None) -> None:
    doc = {
        "name": "box", "backend": "cpu", "llama_cpp": {"ref": "b11434"},
        "runtime": {"kind": "supervisor", "service": "none"}, "models": [{"recipe": "tiny", **(entry or {})}],
    }  # fmt: skip
    (inventory.root / "hosts" / "box.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def write_recipe(inventory, draft: dict | None) -> None:
    doc = {"name": "tiny", "source": TINY, "server": {"ctx-size": 512}, **({"draft": draft} if draft else {})}
    (inventory.root / "recipes" / "tiny.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def test_the_draft_is_pinned_after_the_model_from_its_own_repo(hub: FakeHub, inventory, gguf_bytes) -> None:
    write_recipe(inventory, SPLIT_DRAFT)
    write_host(inventory)
    host = load_host("box", inventory.root)
    result = resolve_lock(host)
    files = read_lock(host.lock_file).models["tiny"].files
    assert [(f.role, f.repo, f.path) for f in files] == [
        ("model", "acme/tiny-GGUF", "tiny-Q8_0.gguf"),
        ("draft", "acme/split-GGUF", "big-00001-of-00002.gguf"),
        ("draft-split", "acme/split-GGUF", "big-00002-of-00002.gguf"),
    ]
    assert files[1].revision == hub.repos["acme/split-GGUF"].refs["main"]
    assert (files[1].size, files[1].sha256) == (len(gguf_bytes["part1"]), sha(gguf_bytes["part1"]))
    assert files[2].sha256 == sha(gguf_bytes["part2"])
    assert not hub.requests_to("cdn"), "locking must not download"
    assert result.changes == [f"+ tiny: acme/tiny-GGUF/tiny-Q8_0.gguf@{files[0].revision[:12]} sha256 "
                              f"{files[0].sha256[:12]} (+2 files)"]  # fmt: skip


def test_a_draft_added_or_dropped_on_the_host_moves_only_that_pin(hub: FakeHub, inventory, monkeypatch) -> None:
    write_recipe(inventory, None)
    write_host(inventory)
    host = load_host("box", inventory.root)
    resolve_lock(host)
    plain = read_lock(host.lock_file).models["tiny"]
    # a lock written before drafts existed stays fresh: the request of a model without a draft
    assert plain.request == request_of(host.models[0].source)

    write_host(inventory, {"draft": {"hf": {"repo": "acme/vision-GGUF", "file": "v.gguf"}}})
    host = load_host("box", inventory.root)
    monkeypatch.setenv("CI", "true")  # frozen: a draft added since the pin is a stale pin
    with pytest.raises(LockError, match="tiny: the recipe's source changed since it was pinned"):
        resolve_lock(host)
    monkeypatch.delenv("CI")
    result = resolve_lock(host)
    files = read_lock(host.lock_file).models["tiny"].files
    assert files[0] == plain.files[0] and (files[1].role, files[1].path) == ("draft", "v.gguf")
    assert result.changes == [f"~ tiny: + acme/vision-GGUF/v.gguf@{files[1].revision[:12]} sha256 {files[1].sha256[:12]}"]

    # the host turns the recipe's draft off: back to the plain pin, byte for byte
    write_recipe(inventory, {"hf": {"repo": "acme/vision-GGUF", "file": "v.gguf"}})
    write_host(inventory, {"draft": False})
    host = load_host("box", inventory.root)
    assert host.models[0].draft is None
    resolve_lock(host)
    assert read_lock(host.lock_file).models["tiny"] == plain


def test_a_wrong_draft_file_names_the_key_to_fix(hub: FakeHub, inventory) -> None:
    write_recipe(inventory, {"hf": {"repo": "acme/tiny-GGUF", "file": "tiny-Q4_0.gguf"}})
    write_host(inventory)
    with pytest.raises(HubError, match=r"acme/tiny-GGUF .* has no tiny-Q4_0.gguf\. Fix `draft\.hf\.file:`; GGUF files "
                                       r"there: tiny-Q8_0.gguf"):  # fmt: skip
        resolve_lock(load_host("box", inventory.root))


def test_the_draft_is_fetched_and_verified_with_the_model(hub: FakeHub, inventory, gguf_bytes) -> None:
    write_recipe(inventory, {"hf": {"repo": "acme/vision-GGUF", "file": "mmproj-F16.gguf"}})
    write_host(inventory)
    host = load_host("box", inventory.root)
    lock = resolve_lock(host).lock
    # the Hub serves other bytes for the pinned draft: caught and named like any file of the model
    hub.tamper(sha(gguf_bytes["mmproj"]))
    with pytest.raises(ChecksumMismatch, match=r"acme/vision-GGUF/mmproj-F16.gguf@\w+: sha256 mismatch"):
        fetch_host(host, lock, progress=False)
    hub._tampered.clear()
    fetch_host(host, lock, progress=False)
    paths = model_files(host, lock)["tiny"]
    assert [p.name for p in paths] == ["tiny-Q8_0.gguf", "mmproj-F16.gguf"]
    assert paths[0].read_bytes() == gguf_bytes["model"] and paths[1].read_bytes() == gguf_bytes["mmproj"]
    hub.clear_requests()
    fetch_host(host, lock, progress=False)  # verified and recorded: no request, no hashing
    assert hub.requests == []


def test_cli_fetch_prints_the_draft_beside_the_model(hub: FakeHub, inventory, capsys) -> None:
    write_recipe(inventory, {"hf": {"repo": "acme/vision-GGUF", "file": "mmproj-F16.gguf"}})
    write_host(inventory)
    assert main(["lock", "box", "--inventory", str(inventory.root)]) == 0
    assert main(["fetch", "box", "--inventory", str(inventory.root), "-q"]) == 0
    paths = model_files(load_host("box", inventory.root), read_lock(inventory.root / "hosts" / "box.lock.json"))
    assert capsys.readouterr().out.splitlines()[-1] == f"tiny: {paths['tiny'][0]} (draft: {paths['tiny'][1]})"
