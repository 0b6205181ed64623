"""JSON Schemas for host and recipe files, generated from the pydantic models (for editors).

The committed copies live in ``schemas/`` of the checkout; example files point at them with a
``# yaml-language-server: $schema=../schemas/host.schema.json`` first line, which the YAML
extension of VS Code (and other yaml-language-server clients) uses for completion and checks.

Regenerate with ``homelab schema --write`` (or ``python -m homelab.inventory.schemas --write``);
a test fails when the committed copies are stale.

``server:`` maps get one property per llama-server long flag of the default build's snapshot, so
editors complete flag names; unknown names stay allowed there (the loader checks them against
the host's own llama.cpp ref).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel

from ..errors import HomelabError
from ..files import atomic_write_text
from ..settings import CHECKOUT
from .flagnames import DEFAULT_REF, known_flags
from .schema import Host, Recipe

SCHEMA_DIR = CHECKOUT / "schemas"
KINDS: dict[str, type[BaseModel]] = {"host": Host, "recipe": Recipe}
DESCRIPTIONS = {
    "host": "A homelab host file (hosts/<name>.yaml): one machine, its GPUs, build and models.",
    "recipe": "A homelab recipe (recipes/<name>.yaml): one model and how to serve it; shareable.",
}


def schema_for(kind: str) -> dict[str, Any]:
    model = KINDS[kind]
    schema = model.model_json_schema(by_alias=True, mode="validation")
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"homelab {kind} file",
        **{k: v for k, v in schema.items() if k != "title"},
        "description": DESCRIPTIONS[kind],
    }
    # top-level x-* keys are ignored by the loader (anchors to share); editors must allow them
    schema["patternProperties"] = {"^x-": {}}
    flags = known_flags(DEFAULT_REF)
    if flags:
        _add_flag_names(schema, schema, sorted(flags))
    return schema


def _add_flag_names(root: dict[str, Any], node: Any, flags: list[str]) -> None:
    """Give every ``server`` map one (optional) property per known flag, for completion."""
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict) and isinstance(props.get("server"), dict):
            server = props["server"]
            value = server.get("additionalProperties")
            if isinstance(value, dict):
                root.setdefault("$defs", {})["FlagValue"] = value
                ref = {"$ref": "#/$defs/FlagValue"}
                server["additionalProperties"] = ref
                server["properties"] = {flag: ref for flag in flags}
        for key, child in list(node.items()):
            if key != "$defs" or child is not root.get("$defs"):
                _add_flag_names(root, child, flags)
            else:
                for name, definition in list(cast(dict[str, Any], child).items()):  # root["$defs"]
                    if name != "FlagValue":
                        _add_flag_names(root, definition, flags)
    elif isinstance(node, list):
        for child in node:
            _add_flag_names(root, child, flags)


def render(kind: str) -> str:
    return json.dumps(schema_for(kind), indent=2, ensure_ascii=False) + "\n"


def schema_path(kind: str, directory: Path = SCHEMA_DIR) -> Path:
    return directory / f"{kind}.schema.json"


def stale(directory: Path = SCHEMA_DIR) -> list[Path]:
    """The committed schema files that differ from what the models generate now."""
    out = []
    for kind in KINDS:
        path = schema_path(kind, directory)
        try:
            current = path.read_text(encoding="utf-8")
        except OSError:
            current = None
        if current != render(kind):
            out.append(path)
    return out


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write both schemas (atomically); returns the files that changed."""
    changed = []
    directory.mkdir(parents=True, exist_ok=True)
    for path in stale(directory):
        kind = path.name.split(".")[0]
        atomic_write_text(path, render(kind))  # committed, world-readable files: the default 0644
        changed.append(path)
    return changed


def run(kind: str | None, do_write: bool, check: bool, directory: Path) -> int:
    """What ``homelab schema`` does (shared by the CLI and ``python -m``)."""
    if do_write:
        changed = write(directory)
        for path in changed:
            print(f"wrote {path}")
        if not changed:
            print(f"schemas in {directory} are current")
        return 0
    if check:
        out_of_date = stale(directory)
        if out_of_date:
            raise HomelabError(
                "out of date: " + ", ".join(str(p) for p in out_of_date) + "; run `homelab schema --write`"
            )
        print(f"schemas in {directory} are current")
        return 0
    sys.stdout.write(render(kind or "host"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m homelab.inventory.schemas", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args.kind, args.write, args.check, Path(args.dir))
    except HomelabError as exc:
        print(f"homelab: error: {exc}", file=sys.stderr)
        return exc.exit_code


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", nargs="?", choices=sorted(KINDS), help="print this schema (default: host)")
    parser.add_argument("--write", action="store_true", help="write both schemas into --dir")
    parser.add_argument("--check", action="store_true", help="fail if the files in --dir are stale")
    parser.add_argument("--dir", default=str(SCHEMA_DIR), help=f"schema folder (default: {SCHEMA_DIR})")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
