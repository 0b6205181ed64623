"""Rendered configs validate against llama-swap's own config-schema.json (editors with
yaml-language-server use it), as well as loading in our supervisor."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from homelab.matrix import rename_expression
from homelab.render import render_host
from homelab.render.llamaswap import matrix_vars
from homelab.supervisor.config_load import parse_config

from .conftest import example_host, fake_inputs, with_runtime

SCHEMA = json.loads((Path(__file__).parents[1] / "data" / "llama-swap" / "config-schema.json").read_text())
GOLDEN = Path(__file__).with_name("golden")


def schema_errors(document: object) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(document)]


@pytest.mark.parametrize("name", ["xtx", "duo3060", "local", "nas", "rig4090"])
def test_rendered_configs_pass_upstream_schema_and_our_loader(name: str) -> None:
    host = with_runtime(example_host(name), api_key_env="HOMELAB_API_KEYS")
    text = render_host(fake_inputs(host))["config.yaml"]
    assert schema_errors(yaml.safe_load(text)) == []
    config = parse_config(text, Path(f"/tmp/{name}.yaml"), {"HOMELAB_API_KEYS": "k"})
    assert set(config.models) == {m.id for m in host.models}


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*/config.yaml")), ids=lambda p: p.parent.name)
def test_goldens_pass_upstream_schema(path: Path) -> None:
    assert schema_errors(yaml.safe_load(path.read_text())) == []


def test_the_schema_catches_what_it_should() -> None:
    """The check is not vacuous: the legacy matrix without vars and a wrong type both fail."""
    assert any("'vars' is a required property" in e for e in schema_errors({"models": {}, "matrix": {"sets": {"a": "x"}}}))
    assert schema_errors({"models": {"m": {"cmd": 3}}})


def test_matrix_vars_are_short_unique_and_schema_shaped() -> None:
    ids = ["think-small", "think-smaller", "Qwen/Qwen3:Q4", "a"]
    variables = matrix_vars(ids)
    assert sorted(variables.values()) == sorted(ids)
    assert all(len(v) <= 8 and v.isalnum() for v in variables)
    assert rename_expression("(a | think-small) & +other", {"a": "x", "think-small": "ts"}) == "(x | ts) & +other"
