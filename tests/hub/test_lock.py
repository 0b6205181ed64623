"""Lock: resolve pins from the fake Hub's LFS metadata, stably, and move them only on purpose."""

from __future__ import annotations

import hashlib

import pytest
from fakehub import FakeHub

from homelab.cli import main
from homelab.hub.errors import HubError
from homelab.hub.resolve import resolve_lock, split_parts
from homelab.lock import LockError, read_lock


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_lock_pins_commit_size_and_sha256_without_downloading(hub: FakeHub, inventory, gguf_bytes) -> None:
    inventory.recipe("tiny", {"hf": {"repo": "acme/tiny-GGUF", "file": "tiny-Q8_0.gguf"}})
    host = inventory.host(["tiny"])
    result = resolve_lock(host)
    assert result.written
    pin = read_lock(host.lock_file).models["tiny"]
    [f] = pin.files
    assert (f.source, f.repo, f.path, f.role) == ("hf", "acme/tiny-GGUF", "tiny-Q8_0.gguf", "model")
    assert f.revision == hub.repos["acme/tiny-GGUF"].refs["main"]
    assert f.size == len(gguf_bytes["model"]) and f.sha256 == sha(gguf_bytes["model"])
    assert not hub.requests_to("cdn"), "locking must not download"
    assert result.changes[0].startswith("+ tiny: acme/tiny-GGUF/tiny-Q8_0.gguf@")


def test_relock_is_byte_identical_and_makes_no_request(hub: FakeHub, inventory) -> None:
    inventory.recipe("tiny", {"hf": {"repo": "acme/tiny-GGUF", "file": "tiny-Q8_0.gguf"}})
    host = inventory.host(["tiny"])
    resolve_lock(host)
    before = host.lock_file.read_bytes()
    hub.clear_requests()
    hub.add_file("acme/tiny-GGUF", "tiny-Q8_0.gguf", b"GGUF upstream moved on")  # not asked for: no move
    result = resolve_lock(host)
    assert not result.written and result.changes == []
    assert host.lock_file.read_bytes() == before
    assert hub.requests == []


def test_update_moves_the_pin_and_prints_old_and_new(hub: FakeHub, inventory, gguf_bytes, capsys) -> None:
    inventory.recipe("tiny", {"hf": {"repo": "acme/tiny-GGUF", "file": "tiny-Q8_0.gguf"}})
    host = inventory.host(["tiny"])
    resolve_lock(host)
    old = read_lock(host.lock_file).models["tiny"].files[0]
    new_commit = hub.add_file("acme/tiny-GGUF", "tiny-Q8_0.gguf", gguf_bytes["model-v2"])
    code = main(["lock", "box", "--inventory", str(inventory.root), "--update", "tiny"])
    out = capsys.readouterr().out
    assert code == 0
    new = read_lock(host.lock_file).models["tiny"].files[0]
    assert new.revision == new_commit and new.sha256 == sha(gguf_bytes["model-v2"])
    assert f"revision {old.revision[:12]} -> {new_commit[:12]}" in out
    assert f"sha256 {old.sha256[:12]} -> {new.sha256[:12]}" in out


def test_changed_recipe_makes_the_pin_stale_and_frozen_refuses(hub: FakeHub, inventory, monkeypatch) -> None:
    inventory.recipe("tiny", {"hf": {"repo": "acme/tiny-GGUF", "file": "tiny-Q8_0.gguf"}})
    host = inventory.host(["tiny"])
    with pytest.raises(LockError, match="tiny: no pin"):
        resolve_lock(host, frozen=True)
    assert not host.lock_file.exists()
    resolve_lock(host)
    inventory.recipe("tiny", {"hf": {"repo": "acme/vision-GGUF", "file": "v.gguf"}})
    host = inventory.host(["tiny"])
    monkeypatch.setenv("CI", "true")  # CI means frozen
    with pytest.raises(LockError, match="source changed since it was pinned"):
        resolve_lock(host)
    monkeypatch.delenv("CI")
    assert resolve_lock(host).lock.models["tiny"].files[0].repo == "acme/vision-GGUF"
    resolve_lock(host, frozen=True)  # now up to date: passes


def test_frozen_cli_exits_2_with_one_line(hub: FakeHub, inventory, capsys) -> None:
    inventory.recipe("tiny", {"hf": {"repo": "acme/tiny-GGUF", "file": "tiny-Q8_0.gguf"}})
    inventory.host(["tiny"])
    assert main(["lock", "box", "--inventory", str(inventory.root), "--frozen"]) == 2
    err = capsys.readouterr().err
    assert "homelab lock box" in err and "Traceback" not in err


def test_split_and_mmproj_are_files_of_the_model(hub: FakeHub, inventory, gguf_bytes) -> None:
    inventory.recipe("big", {"hf": {"repo": "acme/split-GGUF", "file": "big-00001-of-00002.gguf"}})
    inventory.recipe("vis", {"hf": {"repo": "acme/vision-GGUF", "file": "v.gguf", "mmproj": "mmproj-F16.gguf"}})
    host = inventory.host(["big", "vis"])
    lock = resolve_lock(host).lock
    big = lock.models["big"].files
    assert [(f.role, f.path) for f in big] == [
        ("model", "big-00001-of-00002.gguf"),
        ("split", "big-00002-of-00002.gguf"),
    ]
    assert big[1].sha256 == sha(gguf_bytes["part2"])
    vis = lock.models["vis"].files
    assert [(f.role, f.path) for f in vis] == [("model", "v.gguf"), ("mmproj", "mmproj-F16.gguf")]


def test_split_names() -> None:
    assert split_parts("q/x-00001-of-00003.gguf") == [f"q/x-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert split_parts("x.gguf") == ["x.gguf"]
    with pytest.raises(HubError, match="x-00001-of-00003.gguf"):
        split_parts("x-00002-of-00003.gguf")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"repo": "acme/tiny-GGUF", "file": "nope.gguf"}, "has no nope.gguf.*tiny-Q8_0.gguf"),
        ({"repo": "acme/missing-GGUF", "file": "x.gguf"}, "repository 'acme/missing-GGUF' not found"),
        ({"repo": "acme/tiny-GGUF", "file": "tiny-Q8_0.gguf", "revision": "v9"}, "revision 'v9' not found"),
        ({"repo": "acme/gated-GGUF", "file": "g.gguf"}, "HF_TOKEN.*accept the model's license"),
        ({"repo": "acme/split-GGUF", "file": "big-00001-of-00003.gguf"}, "has no .*big-00003-of-00003.gguf.*GGUF files there: big-00001-of-00002"),
    ],
)
def test_lock_errors_name_the_repo_and_the_fix(hub: FakeHub, inventory, source, message) -> None:
    inventory.recipe("m", {"hf": source})
    with pytest.raises(HubError, match=message) as info:
        resolve_lock(inventory.host(["m"]))
    assert source["repo"] in str(info.value)


def test_gated_repo_locks_with_the_token(hub: FakeHub, inventory, monkeypatch) -> None:
    inventory.recipe("g", {"hf": {"repo": "acme/gated-GGUF", "file": "g.gguf"}})
    monkeypatch.setenv("HF_TOKEN", hub.token)
    assert resolve_lock(inventory.host(["g"])).lock.models["g"].files[0].repo == "acme/gated-GGUF"


def test_recipe_sha256_must_match_the_hub(hub: FakeHub, inventory) -> None:
    inventory.recipe("tiny", {"hf": {"repo": "acme/tiny-GGUF", "file": "tiny-Q8_0.gguf", "sha256": "0" * 64}})
    with pytest.raises(HubError, match="recipe expects sha256 0000"):
        resolve_lock(inventory.host(["tiny"]))


def test_path_source_is_hashed_once(hub: FakeHub, inventory, gguf_bytes) -> None:
    (inventory.root / "models").mkdir()
    (inventory.root / "models" / "mine.gguf").write_bytes(gguf_bytes["model"])
    inventory.recipe("mine", {"path": {"path": "models/mine.gguf"}})
    lock = resolve_lock(inventory.host(["mine"])).lock
    [f] = lock.models["mine"].files
    assert (f.source, f.path, f.sha256) == ("path", "models/mine.gguf", sha(gguf_bytes["model"]))


def test_url_source_with_and_without_sha256(hub: FakeHub, inventory, gguf_bytes) -> None:
    blob = hub.file("acme/tiny-GGUF", "tiny-Q8_0.gguf")
    url = f"{hub.cdn}/blobs/{blob.sha256}"
    inventory.recipe("u1", {"url": {"url": url, "sha256": blob.sha256}})
    inventory.recipe("u2", {"url": {"url": url}})
    lock = resolve_lock(inventory.host(["u1", "u2"])).lock
    for mid in ("u1", "u2"):
        [f] = lock.models[mid].files
        assert (f.source, f.size, f.sha256) == ("url", len(gguf_bytes["model"]), blob.sha256)


@pytest.mark.llama_cpp_pin
def test_llama_cpp_failure_keeps_the_model_pins(hub: FakeHub, inventory, tmp_path) -> None:
    inventory.recipe("tiny", {"hf": {"repo": "acme/tiny-GGUF", "file": "tiny-Q8_0.gguf"}})
    host_file = inventory.root / "hosts" / "box.yaml"
    inventory.host(["tiny"])
    # a llama.cpp source directory that is not one: the llama.cpp stage refuses it
    host_file.write_text(host_file.read_text().replace("ref: b11434", f"path: {tmp_path}\n  build_number: 1"))
    from homelab.inventory import load_host

    host = load_host("box", inventory.root)
    with pytest.raises(LockError, match="model pins written to .*llama.cpp pin failed: .*CMakeLists.txt"):
        resolve_lock(host)
    assert read_lock(host.lock_file).models["tiny"].files[0].repo == "acme/tiny-GGUF"
