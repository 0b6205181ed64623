"""Generations: numbering, the current link, no-change deploys, pruning, rollback targets."""

from __future__ import annotations

import os

import pytest

from homelab.deploy.changes import action_for, compare, unified_diff
from homelab.deploy.generations import GenerationError, GenerationStore, content_hash
from homelab.deploy.paths import HostPaths


def files(n: int) -> dict[str, bytes]:
    return {"config.yaml": f"models: {{m{n}: {{}}}}\n".encode(), "manifest.json": b"{}"}


def test_create_and_switch_moves_the_current_link_atomically() -> None:
    store = GenerationStore(HostPaths.for_host("h"))
    assert store.current() is None
    g1 = store.create(files(1), ["first"], "start")
    store.switch(g1.number)
    g2 = store.create(files(2), ["~ config.yaml"], "reload")
    assert (g1.number, g2.number) == (1, 2)
    assert store.current_number() == 1  # created, not yet switched
    store.switch(2)
    assert os.readlink(store.paths.current) == "generations/2"
    assert (store.paths.current / "config.yaml").read_bytes() == files(2)["config.yaml"]
    assert store.previous_number() == 1
    assert store.get(2).files() == files(2)  # metadata file is not part of the content
    assert store.get(2).content_hash == content_hash(files(2))


def test_unknown_generation_names_the_known_ones() -> None:
    store = GenerationStore(HostPaths.for_host("h"))
    store.switch(store.create(files(1), [], "start").number)
    with pytest.raises(GenerationError, match=r"no generation 7 \(generations: 1\)"):
        store.switch(7)


def test_prune_keeps_newest_and_never_current_or_previous() -> None:
    store = GenerationStore(HostPaths.for_host("h"))
    for n in range(1, 8):
        store.switch(store.create(files(n), [], "start").number)
    store.switch(2)  # rolled far back: current 2, previous 7
    removed = store.prune(keep=2)
    assert store.numbers() == [1, 2, 6, 7]  # 1: rollback target of 2; 2 current; 6, 7 newest
    assert removed == [3, 4, 5]


def test_rollback_target_skips_failed_generations() -> None:
    store = GenerationStore(HostPaths.for_host("h"))
    for n in range(1, 4):
        store.switch(store.create(files(n), [], "start").number)
    g2 = store.get(2)
    g2.status = "failed"
    g2.save()
    assert store.rollback_target() == 1


def test_actions_reload_restart_none() -> None:
    base = {"config.yaml": b"a", "homelab-h.service": b"u", "manifest.json": b'{"inputs": {"build": "1", "recipes": "1"}}'}
    config_only = {**base, "config.yaml": b"b", "manifest.json": b'{"inputs": {"build": "1", "recipes": "2"}}'}
    unit = {**base, "homelab-h.service": b"v"}
    rebuilt = {**base, "manifest.json": b'{"inputs": {"build": "2", "recipes": "1"}}'}
    described = {**base, "manifest.json": b'{"inputs": {"build": "1", "recipes": "3"}}'}
    assert action_for(compare(None, base), has_current=False) == "start"
    assert action_for(compare(base, config_only), True) == "reload"
    assert action_for(compare(base, config_only), True, runtime_kind="llama-swap") == "restart"
    assert action_for(compare(base, unit), True) == "restart"
    assert action_for(compare(base, rebuilt), True) == "restart"
    assert action_for(compare(base, described), True) == "none"
    assert compare(base, config_only).inputs == ["inputs.recipes"]
    diff = unified_diff(base, config_only)
    assert "--- current/config.yaml" in diff and "+b" in diff
