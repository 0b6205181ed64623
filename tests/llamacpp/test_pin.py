"""resolve_llama_cpp: what ``homelab lock`` records for llama.cpp."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from homelab.inventory import load_host
from homelab.llamacpp.pin import resolve_llama_cpp
from homelab.llamacpp.source import SourceError
from homelab.lock import Lock, read_lock, write_lock

from .conftest import write_inventory
from .fakeproject import commit_all, make_fake_llama
from .test_patches import diff_of, replace


def test_pins_commit_build_number_and_patch_hashes(upstream: Path, tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv", upstream, patches=["p.patch"])
    (inv / "patches" / "p.patch").write_text(diff_of(upstream, replace("fit.c", "return 0", "return 1")))
    host = load_host("box", inv)
    pin = resolve_llama_cpp(host, None, update=False)
    assert pin.source == "git" and pin.repo == str(upstream) and pin.ref == "b100"
    assert len(pin.commit or "") == 40 and pin.build_number == 100
    assert [p.ref for p in pin.patches] == ["patches/p.patch"] and len(pin.patches[0].sha256) == 64
    # round trip through the lock file
    write_lock(host.lock_file, Lock(host="box", llama_cpp=pin))
    assert read_lock(host.lock_file).llama_cpp == pin


def test_keeps_the_previous_pin_offline_until_update(upstream: Path, tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv", upstream, ref="main")
    host = load_host("box", inv)
    first = resolve_llama_cpp(host, None, update=False)
    (upstream / "fit.c").write_text("int main(void) { return 3; }\n")
    newer = commit_all(upstream, "main moves")
    assert resolve_llama_cpp(host, first, update=False) == first
    updated = resolve_llama_cpp(host, first, update=True)
    assert updated.commit == newer and updated.build_number == 2
    # asking for something else re-resolves without --update
    write_inventory(inv, upstream, ref="b100")
    assert resolve_llama_cpp(load_host("box", inv), updated, update=False).commit == first.commit


def test_path_source_needs_a_build_number(tmp_path: Path) -> None:
    tree = make_fake_llama(tmp_path / "my-llama")
    inv = write_inventory(tmp_path / "inv", tmp_path)
    data = yaml.safe_load((inv / "hosts" / "box.yaml").read_text())
    data["llama_cpp"] = {"path": str(tree)}
    (inv / "hosts" / "box.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SourceError, match="llama_cpp.build_number"):
        resolve_llama_cpp(load_host("box", inv), None, update=False)
    data["llama_cpp"]["build_number"] = 11434
    (inv / "hosts" / "box.yaml").write_text(yaml.safe_dump(data))
    pin = resolve_llama_cpp(load_host("box", inv), None, update=False)
    assert pin.source == "path" and pin.repo == str(tree) and pin.build_number == 11434 and pin.commit
