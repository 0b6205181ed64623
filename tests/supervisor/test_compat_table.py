"""docs/llama-swap-compat.md covers every config key and route of llama-swap.

The keys come from upstream's own ``config-schema.json`` (copied unchanged into
``tests/data/llama-swap/``, whose README names the upstream version) plus the few keys its Go code reads
that the schema leaves out; the routes from the list read off its ``internal/server/server.go``.
Every one needs a row saying "same", "ours differs: why" or "not applicable: why"; a route marked
"same" must resolve in the supervisor's route table.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from homelab.supervisor.app import create_app
from homelab.supervisor.driver import Supervisor

from .conftest import fake_model, make_config

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parents[1] / "data" / "llama-swap"
TABLE = ROOT / "docs" / "llama-swap-compat.md"
STATUSES = ("same", "ours differs: ", "not applicable: ")
ROW = re.compile(r"^\| `([^`]+)` \| (.+) \|$")
MISSING = re.compile(r"(?<![\w`])missing(?![\w`])", re.I)
"""The word, not an error code such as ``model_missing``."""

def schema_keys(schema: dict[str, Any]) -> list[str]:
    """Every key path of the schema: ``models.*.cmd`` (``*``: a map's own keys), ``$ref``,
    ``anyOf``/``oneOf``/``allOf`` followed, list items folded into their key."""
    definitions = schema.get("definitions", {})
    keys: list[str] = []

    def variants(node: dict[str, Any]) -> list[dict[str, Any]]:
        while "$ref" in node:
            node = definitions[node["$ref"].rsplit("/", 1)[-1]]
        found = [node]
        for combinator in ("anyOf", "oneOf", "allOf"):
            for sub in node.get(combinator) or []:
                found += variants(sub)
        return found

    def walk(node: dict[str, Any], prefix: str, depth: int) -> None:
        if depth > 10:
            return
        for variant in variants(node):
            for key, sub in (variant.get("properties") or {}).items():
                if prefix + key not in keys:
                    keys.append(prefix + key)
                walk(sub, f"{prefix}{key}.", depth + 1)
            extra = variant.get("additionalProperties")
            if isinstance(extra, dict):
                walk(extra, prefix + "*.", depth + 1)
            for sub in (variant.get("patternProperties") or {}).values():
                walk(sub, prefix + "*.", depth + 1)
            if isinstance(variant.get("items"), dict):
                walk(variant["items"], prefix, depth + 1)

    walk(schema, "", 0)
    return keys


def data_lines(name: str) -> list[str]:
    lines = (DATA / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def table(section: str) -> dict[str, str]:
    text = TABLE.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in body.splitlines():
        match = ROW.match(line)
        if match:
            assert match.group(1) not in rows, f"two rows for {match.group(1)}"
            rows[match.group(1)] = match.group(2)
    return rows


def upstream_keys() -> list[str]:
    return schema_keys(json.loads((DATA / "config-schema.json").read_text())) + data_lines("code-only-keys.txt")


def test_schema_walk_finds_nested_and_referenced_keys() -> None:
    keys = upstream_keys()
    for key in ("models.*.cmd", "models.*.timeouts.responseHeader", "routing.router.settings.matrix.vars",
                "peers.*.timeouts.idleConn", "selectors.*.settings.spillover", "logRequests"):
        assert key in keys
    assert len(keys) > 100


@pytest.mark.parametrize(("section", "expected"), [
    ("Config keys", upstream_keys), ("Routes", lambda: data_lines("routes.txt")),
])
def test_every_upstream_key_and_route_has_a_row(section: str, expected) -> None:
    rows = table(section)
    missing = [item for item in expected() if item not in rows]
    assert not missing, f"docs/llama-swap-compat.md has no {section} row for: {', '.join(missing)}"
    stale = [item for item in rows if item not in expected()]
    assert not stale, f"rows for what upstream does not have: {', '.join(stale)}"
    for item, status in rows.items():
        assert status.startswith(STATUSES), f"{item}: status must start with one of {STATUSES}"
        assert not MISSING.search(status), f"{item}: {status}"
        if not status.startswith("same"):
            assert len(status.split(": ", 1)[1]) > 10, f"{item}: say why"


def concrete(pattern: str) -> str:
    """A path that the ServeMux pattern matches."""
    path = pattern.replace("{$}", "").replace("{upstreamPath...}", "m/health")
    return re.sub(r"\{[^}]+\}", "m", path)


async def test_routes_marked_same_resolve() -> None:
    app = create_app(Supervisor(make_config(fake_model("m"))))
    app.freeze()
    unresolved = []
    for route, status in table("Routes").items():
        if not status.startswith("same"):
            continue
        method, pattern = route.split(" ", 1)
        request = make_mocked_request("GET" if method == "*" else method, concrete(pattern), app=app)
        match = await app.router.resolve(request)
        if isinstance(match.http_exception, web.HTTPException):
            unresolved.append(route)
    assert not unresolved, f"marked 'same' but not routed: {unresolved}"
