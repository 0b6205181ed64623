"""Turn pydantic's validation errors into :class:`Problem` lines with file, line and the fix.

pydantic reports ``loc`` paths that mostly follow the data, but a union type inserts the name
of each alternative it tried (``llama_cpp.patches.0.PullRequestPatch.sha``, ``server.x.str``).
Those tags are dropped by walking the data along the path, and the alternatives of one union
are reported as one problem: the alternative that matched the shape of the input (a mapping for
a model, a string for a name) explains what is wrong inside it; if none matched, the message
lists what was expected.
"""

from __future__ import annotations

import re
import types
import typing
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from ..suggest import did_you_mean
from .problems import Problem
from .sourcemap import KeyPath, YamlDoc

EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "list_type": "a list",
    "none_required": "null",
}
"""pydantic error types that mean "this is not even the right kind of value"."""

PATTERNS = {
    r"^[0-9a-f]{64}$": "a lower-case hex sha256 (64 characters)",
    r"^[0-9a-f]{40}$": "a full 40-character git commit",
    r"^[A-Za-z0-9][A-Za-z0-9._-]*$": "a name of letters, digits, '.', '_' and '-' that starts with a letter or digit",
    r"^https?://": "an http:// or https:// URL",
    r"^[^\s:]+:\d{1,5}$": "HOST:PORT, e.g. 127.0.0.1:12434",
    r"^[A-Za-z_][A-Za-z0-9_]*$": "an environment variable name (letters, digits, '_'), e.g. HOMELAB_API_KEYS",
}


def validation_problems(exc: ValidationError, doc: YamlDoc, model: type[BaseModel]) -> list[Problem]:
    """Every error of ``exc`` (raised validating ``doc.data`` as ``model``) as a Problem."""
    plain: list[tuple[KeyPath, ErrorDetails]] = []
    unions: dict[KeyPath, dict[str, list[tuple[KeyPath, ErrorDetails]]]] = defaultdict(lambda: defaultdict(list))
    for error in exc.errors(include_url=False):
        path, tag_at, tag = _clean_loc(doc.data, tuple(error["loc"]))
        if tag is None:
            plain.append((path, error))
        else:
            unions[tag_at][tag].append((path, error))

    problems = [_problem(doc, model, path, error) for path, error in plain]
    for point, alternatives in unions.items():
        fitting = {
            tag: errors
            for tag, errors in alternatives.items()
            if not any(p == point and e["type"] in EXPECTED | {"literal_error": ""} for p, e in errors)
        }
        if fitting:
            for errors in fitting.values():
                problems.extend(_problem(doc, model, path, error) for path, error in errors)
        else:
            wanted: list[str] = []
            value: Any = None
            for errors in alternatives.values():
                for path, error in errors:
                    if path == point:
                        value = error["input"]
                        wanted.append(_expected(error))
            wanted = list(dict.fromkeys(w for w in wanted if w))
            problems.append(doc.problem(point, f"expected {_or(wanted)}, got {_show(value)}"))
    return problems


# --------------------------------------------------------------------------------------------


def _clean_loc(data: Any, loc: KeyPath) -> tuple[KeyPath, KeyPath, str | None]:
    """Drop union tags from ``loc``. Returns (clean path, path where the first tag was, tag)."""
    clean: list[str | int] = []
    tag_at: KeyPath = ()
    tag: str | None = None
    node = data
    for index, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            clean.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            clean.append(part)
            node = node[part]
        elif index == len(loc) - 1 and isinstance(node, dict) and not _looks_like_tag(part):
            clean.append(part)  # a missing key: names a key that is not in the data
            node = None
        elif tag is None and _looks_like_tag(part):
            tag_at, tag = tuple(clean), str(part)
        elif tag is not None and _looks_like_tag(part):
            continue  # nested union tags: keep the first
        else:
            clean.append(part)
            node = None
    return tuple(clean), tag_at, tag


def _looks_like_tag(part: str | int) -> bool:
    if not isinstance(part, str):
        return False
    return (
        part in {"str", "int", "float", "bool", "none", "list", "dict"}
        or part.startswith(("function-", "constrained-", "literal[", "list[", "dict[", "nullable["))
        or bool(re.fullmatch(r"[A-Z][A-Za-z0-9]*", part))
    )


def _problem(doc: YamlDoc, model: type[BaseModel], path: KeyPath, error: Mapping[str, Any]) -> Problem:
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        key = path[-1] if path else "?"
        valid = valid_keys(model, path[:-1])
        return doc.problem(
            path[:-1], f"unknown key {key!r}" + did_you_mean(str(key), valid, listing="valid keys"), line=doc.line(path)
        )
    if kind == "missing":
        key = path[-1] if path else "?"
        return doc.problem(path[:-1], f"missing required key {key!r}")
    if kind in EXPECTED:
        return doc.problem(path, f"expected {EXPECTED[kind]}, got {_show(value)}")
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", error.get("ctx", {}).get("expected", ""))
        hint = did_you_mean(str(value), choices, listing="choices") if isinstance(value, str) else ""
        text = f"expected {_expected(error)}, got {_show(value)}"
        return doc.problem(path, text + (hint if hint.startswith("; did") else ""))
    if kind == "string_pattern_mismatch":
        pattern = error.get("ctx", {}).get("pattern", "")
        return doc.problem(path, f"expected {PATTERNS.get(pattern, f'text matching {pattern}')}, got {_show(value)}")
    if kind in {"value_error", "assertion_error"}:
        message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return doc.problem(path, message)
    message = str(error["msg"])
    if message.startswith("Input should be "):
        message = "expected " + message.removeprefix("Input should be ")
    return doc.problem(path, f"{message}, got {_show(value)}")


def _expected(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind in EXPECTED:
        return EXPECTED[kind]
    if kind == "literal_error":
        expected = str(error.get("ctx", {}).get("expected", ""))
        if expected in ("False", "True"):
            return expected.lower()
        return "one of " + expected
    return str(error["msg"]).removeprefix("Input should be ")


def _or(items: list[str]) -> str:
    if len(items) <= 1:
        return items[0] if items else "something else"
    return ", ".join(items[:-1]) + " or " + items[-1]


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


# --------------------------------------------------------------------------------------------
# Which keys are valid at a path: walk the model's type annotations along the path.


def valid_keys(model: type[BaseModel], path: KeyPath) -> list[str]:
    """The keys a file may use at ``path`` (field aliases), or [] if it is a free-form mapping."""
    keys: list[str] = []
    for candidate in _models_at(model, path):
        keys.extend(f.alias or name for name, f in candidate.model_fields.items())
    return list(dict.fromkeys(keys))


def _models_at(model: type[BaseModel], path: KeyPath) -> list[type[BaseModel]]:
    annotations: list[Any] = [model]
    for part in path:
        nxt: list[Any] = []
        for ann in annotations:
            for option in _options(ann):
                if isinstance(option, type) and issubclass(option, BaseModel) and isinstance(part, str):
                    for name, f in option.model_fields.items():
                        if part in (name, f.alias):
                            nxt.append(f.annotation)
                origin = typing.get_origin(option)
                if origin is list and isinstance(part, int):
                    nxt.append(typing.get_args(option)[0])
                elif origin is dict and isinstance(part, str):
                    nxt.append(typing.get_args(option)[1])
        annotations = nxt
    found: list[type[BaseModel]] = []
    for ann in annotations:
        for option in _options(ann):
            if isinstance(option, type) and issubclass(option, BaseModel):
                found.append(option)
    return found


def _options(ann: Any) -> list[Any]:
    """A type annotation's alternatives, with Annotated/Optional/Union unwrapped."""
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _options(typing.get_args(ann)[0])
    if origin is typing.Union or origin is types.UnionType:
        out: list[Any] = []
        for arg in typing.get_args(ann):
            out.extend(_options(arg))
        return out
    return [ann]
