"""``peers``: other llama-swap compatible servers whose models are routed as ``<peer>/<model>``."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from ..config import PEER_TIMEOUTS, Filters, ModelConfig, PeerConfig
from .filters import (
    FILTER_KEYS,
    check_params,
    parse_by_id,
    parse_strip_params,
    sanitize_strip_params,
)
from .macros import (
    Macro,
    leftover_macros,
    resolve_macros,
    substitute,
    substitute_typed,
    suggest_name,
)
from .models import parse_timeouts
from .values import Value

PEER_KEYS = ("proxy", "apiKey", "models", "filters", "timeouts")


def parse_peers(
    section: Value | None,
    global_macros: list[Macro],
    models: Mapping[str, ModelConfig],
    aliases: Mapping[str, str],
) -> dict[str, PeerConfig]:
    peers: dict[str, PeerConfig] = {}
    if section is None:
        return peers
    macros = resolve_macros(global_macros)
    for peer_name, (_, value) in section.entries("a mapping of peer names to peers").items():
        fields = value.mapping(PEER_KEYS)
        if "proxy" not in fields:
            raise value.error("missing proxy", "add proxy: http://other-host:8080")
        proxy = fields["proxy"].string(allow_empty=False)
        parts = urlsplit(proxy)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise fields["proxy"].error(f"{proxy!r} is not an http(s) URL")
        if "models" not in fields or not fields["models"].items():
            raise (fields.get("models") or value).error("a peer needs a non-empty models: list")
        peer_models = tuple(dict.fromkeys(fields["models"].string_list()))
        for model in peer_models:
            routed = f"{peer_name}/{model}"
            if routed in models or routed in aliases:
                raise fields["models"].error(
                    f"{routed!r} is both a peer model and a local model or alias", "rename one"
                )
        api_key = substitute(fields["apiKey"].string(), macros) if "apiKey" in fields else None
        filter_fields = fields["filters"].mapping(FILTER_KEYS) if "filters" in fields else {}
        strip_value = filter_fields.get("stripParams")
        strip = substitute(parse_strip_params(strip_value), macros) if strip_value else ""
        set_params = (
            substitute_typed(filter_fields["setParams"].python(), macros) if "setParams" in filter_fields else {}
        )
        by_id = (
            substitute_typed(filter_fields["setParamsByID"].python(), macros)
            if "setParamsByID" in filter_fields
            else {}
        )
        for label, data, at in (
            ("apiKey", api_key or "", fields.get("apiKey", value)),
            ("filters.stripParams", strip, strip_value or value),
            ("filters.setParams", set_params, filter_fields.get("setParams", value)),
            ("filters.setParamsByID", by_id, filter_fields.get("setParamsByID", value)),
        ):
            for leftover in leftover_macros(data):
                raise at.error(f"unknown macro ${{{leftover}}} in {label}", suggest_name(leftover, macros))
        peers[peer_name] = PeerConfig(
            name=peer_name,
            proxy=proxy.rstrip("/"),
            models=peer_models,
            api_key=api_key or None,
            filters=Filters(
                strip_params=sanitize_strip_params(strip, strip_value or value),
                set_params=check_params(set_params or {}, filter_fields.get("setParams", value)),
                set_params_by_id=parse_by_id(by_id, filter_fields.get("setParamsByID", value)),
            ),
            timeouts=parse_timeouts(fields.get("timeouts"), PEER_TIMEOUTS),
        )
    return peers
