"""``filters`` of a model or a peer: stripParams, setParams, setParamsByID."""

from __future__ import annotations

from typing import Any

import yaml

from .values import Value

FILTER_KEYS = ("stripParams", "setParams", "setParamsByID")
PROTECTED_PARAMS = ("model",)
"""Request parameters filters may not touch (llama-swap routes on them)."""


def parse_strip_params(value: Value) -> str:
    if isinstance(value.node, yaml.SequenceNode):
        listed = ", ".join(item.string() for item in value.items())
        raise value.error(
            "stripParams is a comma-separated string in llama-swap's format",
            f'write it as stripParams: "{listed}"',
        )
    return value.string()


def sanitize_strip_params(text: str, at: Value) -> tuple[str, ...]:
    params = sorted({part.strip() for part in text.split(",") if part.strip()})
    for param in params:
        if param in PROTECTED_PARAMS:
            raise at.error(f"{param!r} cannot be stripped (the supervisor routes on it)", f"remove {param!r}")
    return tuple(params)


def check_params(params: Any, at: Value) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise at.error("expected a mapping of request parameters to values")
    for key in params:
        if key in PROTECTED_PARAMS:
            raise at.error(f"{key!r} cannot be set by filters (the supervisor routes on it)", f"remove {key!r}")
    return {str(k): v for k, v in params.items()}


def parse_by_id(raw: Any, at: Value) -> dict[str, dict[str, Any]]:
    if not raw:
        return {}
    if not isinstance(raw, dict):
        raise at.error("expected a mapping of requested model IDs to parameters")
    return {str(key): check_params(params or {}, at) for key, params in raw.items()}
