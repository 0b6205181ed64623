"""Property tests: escaping round-trips through each format's own parser; port assignment."""

from __future__ import annotations

import shlex

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from homelab.render.errors import RenderError
from homelab.render.formats import (
    env_file_value,
    ini_value,
    shell_word,
    systemd_env,
    systemd_word,
    yaml_scalar,
)
from homelab.render.ports import assign_ports

text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)
ids = st.from_regex(r"[a-z][a-z0-9._-]{0,20}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(st.one_of(text, st.integers(), st.floats(allow_nan=False), st.booleans(), st.none()))
def test_yaml_scalar_round_trips(value: object) -> None:
    assert yaml.safe_load(f"key: {yaml_scalar(value)}\n") == {"key": value}


@settings(max_examples=200, deadline=None)
@given(text)
def test_shell_word_round_trips_or_is_refused(value: str) -> None:
    try:
        word = shell_word(value)
    except RenderError:
        assert "${" in value
        return
    assert shlex.split(f"--flag {word}") == ["--flag", value]


@settings(max_examples=200, deadline=None)
@given(text)
def test_ini_values_are_verbatim_or_refused(value: str) -> None:
    try:
        out = ini_value(value)
    except RenderError:
        assert any(c in value for c in ";#") or value != value.strip()
        return
    assert out == value


def _systemd_unquote(word: str, *, variables: bool = True) -> str:
    """systemd's reading of one ExecStart word (C-style quotes), then specifiers and, where
    variables expand (ExecStart=, not Environment=), ``$$``."""
    if word.startswith('"'):
        word = word[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    word = word.replace("%%", "%")
    return word.replace("$$", "$") if variables else word


@settings(max_examples=200, deadline=None)
@given(text)
def test_systemd_words_round_trip(value: str) -> None:
    assert _systemd_unquote(systemd_word(value)) == value
    assert _systemd_unquote(systemd_env("NAME", value), variables=False) == f"NAME={value}"


@settings(max_examples=200, deadline=None)
@given(text)
def test_env_file_values_parse_back(value: str) -> None:
    try:
        line = env_file_value("NAME", value)
    except RenderError:
        assert "'" in value
        return
    name, _, raw = line.partition("=")
    assert name == "NAME"
    assert (shlex.split(raw) or [""])[0] == value or (value == "" and raw == "")


@settings(max_examples=150, deadline=None)
@given(st.lists(ids, min_size=1, max_size=25, unique=True), ids)
def test_ports_are_unique_in_the_window_and_never_move_once_deployed(models: list[str], new: str) -> None:
    before = assign_ports(models, start_port=10001, pinned={}, reserved=[12434])
    assert len(set(before.values())) == len(before)
    assert all(10001 <= p < 11001 for p in before.values())
    after = assign_ports([*models, new], start_port=10001, pinned={}, previous=before, reserved=[12434])
    assert all(after[m] == before[m] for m in models)
    assert len(set(after.values())) == len(after)


def test_the_window_can_fill_up() -> None:
    with pytest.raises(RenderError, match="no free backend port"):
        assign_ports(["a", "b", "c"], start_port=65534, pinned={})
