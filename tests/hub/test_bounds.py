"""What a lockfile or a download host cannot make a fetch do: write beyond the pinned size,
name files outside the cache, or run as root for a system service."""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path

import pytest
from fakehub import FakeHub

from homelab.hub.errors import HubError
from homelab.hub.fetch import fetch_host
from homelab.hub.resolve import resolve_lock
from homelab.lock import LockError, read_lock
from homelab.privilege import ALLOW_ROOT_ENV, RootStageRefused
from homelab.settings import state_dir


def test_a_host_sending_more_than_the_pinned_size_is_cut_off(hub: FakeHub, inventory) -> None:
    data = random.Random(3).randbytes(3 << 20)
    hub.add_repo("acme/web", {"w.gguf": data})
    blob = hub.file("acme/web", "w.gguf")
    inventory.recipe("web", {"url": {"url": f"{hub.cdn}/blobs/{blob.sha256}", "sha256": blob.sha256}})
    host = inventory.host(["web"])
    lock = resolve_lock(host).lock
    pinned = lock.models["web"].files[0]
    short = 1 << 20
    lock.models["web"].files[0] = pinned.model_copy(update={"size": short})  # the lock says 1 MiB
    with pytest.raises(HubError, match=f"sends more than the {short} bytes the lock pins"):
        fetch_host(host, lock, progress=False)
    written = [p for p in (state_dir() / "files").rglob("*") if p.is_file()]
    assert written and all(p.stat().st_size <= short for p in written)


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("path", "../../../../etc/cron.d/x", "steps out of its folder"),
        ("path", "/etc/passwd", "is absolute"),
        ("path", "a\u0000b.gguf", "NUL"),
        ("revision", "../../x", "40-hex commit"),
        ("sha256", "../x", "should match pattern"),
    ],
)
def test_lockfile_fields_used_as_paths_are_checked(hub: FakeHub, inventory, field: str, value: str, why: str) -> None:
    inventory.recipe("tiny", {"hf": {"repo": "acme/tiny-GGUF", "file": "tiny-Q8_0.gguf"}})
    host = inventory.host(["tiny"])
    resolve_lock(host)
    data = json.loads(host.lock_file.read_text())
    data["models"]["tiny"]["files"][0][field] = value
    host.lock_file.write_text(json.dumps(data))
    with pytest.raises(LockError, match=why):
        read_lock(host.lock_file)


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal is for root")
def test_fetch_for_a_system_service_refuses_root(hub: FakeHub, inventory, monkeypatch: pytest.MonkeyPatch) -> None:
    inventory.recipe("tiny", {"hf": {"repo": "acme/tiny-GGUF", "file": "tiny-Q8_0.gguf"}})
    host = inventory.host(["tiny"])
    lock = resolve_lock(host).lock
    runtime = host.host.runtime.model_copy(update={"service": "system"})
    system = dataclasses.replace(host, host=host.host.model_copy(update={"runtime": runtime}))
    monkeypatch.delenv(ALLOW_ROOT_ENV, raising=False)
    hub.clear_requests()
    with pytest.raises(RootStageRefused, match=r"refuses to run as root.*doit render host=box.*sudo"):
        fetch_host(system, lock, progress=False)
    assert hub.requests == []
    monkeypatch.setenv(ALLOW_ROOT_ENV, "1")  # a container where root is the only user
    assert Path(fetch_host(system, lock, progress=False)["tiny"]).is_file()
