"""Profiles and selectors as pure state (homelab.supervisor.selection)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homelab.supervisor.config_load import parse_config
from homelab.supervisor.selection import Selection, SelectionError

CONFIG = parse_config(
    textwrap.dedent(
        """
        models:
          a: {cmd: "s --port ${PORT}", aliases: [a-alias]}
          b: {cmd: "s --port ${PORT}"}
          c: {cmd: "s --port ${PORT}"}
        peers:
          far: {proxy: "http://far", models: [r]}
        routing: {router: {settings: {groups: {g: {swap: false, members: [a, b, c]}}}}}
        selectors:
          pinned: {strategy: pin, targets: [b, a]}
          warm: {strategy: warm, targets: [a-alias, b, c]}
          spill: {strategy: spillover, targets: [a, b, far/r], settings: {spillover: 2}}
        profiles:
          night: {description: quiet, pins: {big: spill, a: c, b: ~}}
          day: {pins: {"org/x": a, "org": b}}
        """
    ),
    Path("/c.yaml"),
    {},
)


def test_pin_strategy_always_takes_the_first_target() -> None:
    sel = Selection(CONFIG)
    assert sel.choose("pinned", {"a": "ready"}).name == "b"
    assert sel.choose("a", {}).name == "a"  # not a selector: unchanged


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ({}, "a-alias"),  # nothing runs: the first target (cold start)
        ({"b": "starting", "c": "ready"}, "c"),  # a ready one beats a starting one
        ({"b": "starting"}, "b"),
        ({"a": "ready", "c": "ready"}, "a-alias"),  # first ready in order
        ({"a": "stopping"}, "a-alias"),
    ],
)
def test_warm_strategy(states: dict[str, str], expected: str) -> None:
    assert Selection(CONFIG).choose("warm", states).name == expected


def test_spillover_fills_in_order_then_spills_then_balances() -> None:
    sel = Selection(CONFIG)
    states: dict[str, str] = {}
    first = sel.choose("spill", states)
    assert first.name == "a"  # cold: start the first target
    states["a"] = "starting"
    assert sel.choose("spill", states).name == "a"  # a holds 2 before spilling
    third = sel.choose("spill", states)
    assert third.name == "b"  # a is full: start the next cold target
    states["b"] = "ready"
    assert sel.choose("spill", states).name == "b"
    fifth = sel.choose("spill", states)
    assert fifth.name == "far/r"  # both local full: the peer (a cold target) takes it
    sel.release(first)
    assert sel.choose("spill", states).name == "a"  # a has room again
    states["a"] = "stopping"
    assert sel.choose("spill", states).name in ("b", "far/r")  # a stopping target is skipped


def test_spillover_skips_stopping_targets() -> None:
    sel = Selection(CONFIG)
    sel.spills.clear()
    only_local = {"a": "stopping", "b": "stopping"}
    # the peer target stays cold (never "stopping"), so it is chosen rather than failing
    assert sel.choose("spill", only_local).name == "far/r"


@settings(max_examples=100, deadline=None)
@given(
    ops=st.lists(st.tuples(st.sampled_from(["choose", "release"]), st.integers(0, 50)), max_size=60),
    states=st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from(["ready", "starting", "stopping"])),
)
def test_spillover_reservations_balance(ops: list[tuple[str, int]], states: dict[str, str]) -> None:
    """Every choice reserves one slot and every release frees one; counts never go negative, and
    a target over its share is only chosen when nothing cold or less busy is left."""
    sel = Selection(CONFIG)
    held = []
    for op, index in ops:
        if op == "choose":
            before = dict(sel.spills.get("spill").inflight) if "spill" in sel.spills else {}
            choice = sel.choose("spill", states)
            key = choice.reserved
            assert key is not None
            active = [k for k in ("a", "b") if states.get(k) in ("ready", "starting") or before.get(k, 0) > 0]
            active += ["far/r"] if before.get("far/r", 0) > 0 else []
            if active and before.get(key, 0) > 0:  # joined an active target: it was among the least busy
                assert before.get(key, 0) == min(before.get(k, 0) for k in active)
            held.append(choice)
        elif held:
            sel.release(held.pop(index % len(held)))
        inflight = sel.spills["spill"].inflight if "spill" in sel.spills else {}
        assert all(count >= 0 for count in inflight.values())
        assert sum(inflight.values()) == len(held)


def test_profiles_pin_disable_and_target_selectors() -> None:
    sel = Selection(CONFIG)
    assert sel.choose("big", {}).name == "big"  # no profile active: unknown names pass through
    assert sel.set_profile("night") is True and sel.set_profile("night") is False
    assert sel.choose("a", {}).name == "c"
    assert sel.choose("big", {}).name == "a"  # pin -> selector -> target
    with pytest.raises(SelectionError) as caught:
        sel.choose("b", {})
    assert caught.value.status == 404 and "disabled by profile 'night'" in caught.value.message
    with pytest.raises(KeyError):
        sel.set_profile("nope")
    assert sel.set_profile(None) is True and sel.choose("a", {}).name == "a"


def test_upstream_paths_take_the_longest_pin() -> None:
    sel = Selection(CONFIG)
    sel.set_profile("day")
    assert sel.pin_path("/org/x/v1/models") == ("org/x", "a")
    assert sel.pin_path("/org/y") == ("org", "b")
    assert sel.pin_path("/organic/y") is None


def test_selector_status_for_the_listing() -> None:
    sel = Selection(CONFIG)
    pinned, warm = CONFIG.selectors["pinned"], CONFIG.selectors["warm"]
    assert sel.selector_status(pinned, {"a": "ready"}) == "unloaded"  # pin looks at its first target only
    assert sel.selector_status(warm, {"c": "starting"}) == "loaded"


def test_reload_selects_no_profile() -> None:
    sel = Selection(CONFIG)
    sel.set_profile("night")
    sel.reconfigure(CONFIG)
    assert sel.active is None
