"""The ``models`` section: one model's keys, macros, ``${PORT}``, command and settings; aliases."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import yaml

from ...suggest import closest
from ..config import MODEL_TIMEOUTS, Capabilities, Filters, ModelConfig, Timeouts
from .filters import (
    FILTER_KEYS,
    check_params,
    parse_by_id,
    parse_strip_params,
    sanitize_strip_params,
)
from .macros import (
    Macro,
    Scalar,
    leftover_macros,
    macro_text,
    resolve_macros,
    substitute,
    substitute_typed,
    suggest_name,
)
from .swap import parse_model_prompt_cache
from .values import Value

MODEL_KEYS = (
    "cmd", "cmdStop", "proxy", "checkEndpoint", "ttl", "unloadTimeout", "env", "aliases",
    "useModelName", "name", "description", "unlisted", "concurrencyLimit", "metadata", "filters",
    "macros", "sendLoadingState", "timeouts", "compat", "capabilities",
)  # fmt: skip
UNSUPPORTED_MODEL = {
    "healthCheckTimeout": "set by llama-swap from the top-level healthCheckTimeout; move it to the top level"
}
TIMEOUT_KEYS = {
    "connect": "connect", "keepalive": "keepalive", "responseHeader": "response_header",
    "tlsHandshake": "tls_handshake", "expectContinue": "expect_continue", "idleConn": "idle_conn",
}  # fmt: skip
CAPABILITY_KEYS = ("in", "out", "tools", "reranker", "context")
MODALITIES = ("text", "audio", "image")
COMPAT_KEYS = ("ignoreWebsockets",)
COMFYUI_MODEL_ID = "comfyui_auto"
"""llama-swap's fixed ComfyUI model: at least 50 concurrent requests, websockets ignored."""
COMFYUI_CONCURRENCY = 50

DEFAULT_PROXY = "http://localhost:${PORT}"
DEFAULT_CONCURRENCY_LIMIT = 10


def split_command(text: str, at: Value) -> tuple[str, ...]:
    """llama-swap's cmd: ``#`` comment lines dropped, trailing ``\\`` joins lines, shell-style
    split with no shell (pipes, ``$VAR`` and globs are not interpreted)."""
    lines: list[str] = []
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith("#"):
            continue
        lines.append(stripped[:-1] + " " if stripped.endswith("\\") else line)
    try:
        argv = shlex.split("\n".join(lines), posix=True)
    except ValueError as exc:
        raise at.error(f"cannot split the command: {exc}", "check the quotes") from None
    return tuple(argv)


@dataclass
class RawModel:
    """A model's fields after key checks, before macros and ports."""

    id: str
    at: Value
    fields: dict[str, Value]
    macros: list[Macro] = field(default_factory=list)


def check_model_id(model_id: str, key: Value) -> None:
    if not model_id.strip():
        raise key.error("a model ID must not be empty")
    if model_id != model_id.strip():
        raise key.error("a model ID must not start or end with spaces")


def parse_env(value: Value) -> dict[str, str]:
    env: dict[str, str] = {}
    if isinstance(value.node, yaml.MappingNode):
        for name, (key, item) in value.entries().items():
            if not name:
                raise key.error("empty variable name")
            raw = item.python()
            if raw is None or isinstance(raw, (dict, list)):
                raise item.error("an environment value must be a string or number")
            env[name] = macro_text(raw)
        return env
    for item in value.items():
        text = item.string()
        name, sep, rest = text.partition("=")
        if not sep or not name.strip():
            raise item.error(f"expected NAME=value, found {text!r}", 'write it as "NAME=value"')
        env[name.strip()] = rest
    return env


@dataclass
class Defaults:
    """Top-level settings models inherit."""

    global_ttl: float
    unload_timeout: float
    send_loading_state: bool


@dataclass
class ModelText:
    """A model's macro-expanded fields, each with the YAML value to blame in errors."""

    raw: RawModel
    cmd: str
    cmd_stop: str
    proxy: str
    check_endpoint: str
    name: str
    description: str
    strip_params: str
    set_params: Any
    set_params_by_id: Any
    metadata: Any

    def at(self, key: str) -> Value:
        """The YAML value of ``key`` (``filters.x`` works), or the model itself when absent."""
        fields = self.raw.fields
        if key.startswith("filters.") and "filters" in fields:
            sub = fields["filters"].entries()
            name = key.removeprefix("filters.")
            if name == "stripParams" and name not in sub:
                name = "strip_params"
            return sub[name][1] if name in sub else fields["filters"]
        return fields.get(key, self.raw.at)

    def checked(self) -> list[tuple[str, Any]]:
        return [
            ("cmd", self.cmd), ("cmdStop", self.cmd_stop), ("proxy", self.proxy),
            ("checkEndpoint", self.check_endpoint), ("name", self.name),
            ("description", self.description), ("filters.stripParams", self.strip_params),
            ("filters.setParams", self.set_params), ("filters.setParamsByID", self.set_params_by_id),
            ("metadata", self.metadata),
        ]  # fmt: skip


def model_macros(raw: RawModel, global_macros: list[Macro]) -> dict[str, Scalar]:
    """``MODEL_ID``, then the globals in order; a model macro overrides a global in place (so
    later globals built on it see the model's value) or is appended."""
    merged: list[Macro] = [Macro("MODEL_ID", raw.id, raw.at), *global_macros]
    for macro in raw.macros:
        for i, existing in enumerate(merged):
            if existing.name == macro.name:
                merged[i] = macro
                break
        else:
            merged.append(macro)
    return resolve_macros(merged)


def expand_model_text(raw: RawModel, macros: Mapping[str, Scalar]) -> ModelText:
    f = raw.fields

    def text(key: str, default: str = "") -> str:
        return substitute(f[key].string() if key in f else default, macros)

    filters = f["filters"].mapping(FILTER_KEYS + ("strip_params",)) if "filters" in f else {}
    strip_value = filters.get("stripParams") or filters.get("strip_params")

    def data(value: Value | None) -> Any:
        return substitute_typed(value.python(), macros) if value is not None else {}

    metadata = data(f.get("metadata")) or {}
    if not isinstance(metadata, dict):
        raise f["metadata"].error("expected a mapping")
    return ModelText(
        raw=raw,
        cmd=text("cmd"),
        cmd_stop=text("cmdStop"),
        proxy=text("proxy", DEFAULT_PROXY),
        check_endpoint=text("checkEndpoint", "/health"),
        name=text("name"),
        description=text("description"),
        strip_params=substitute(parse_strip_params(strip_value), macros) if strip_value else "",
        set_params=data(filters.get("setParams")) or {},
        set_params_by_id=data(filters.get("setParamsByID")) or {},
        metadata=metadata,
    )


def apply_port(text: ModelText, ports: Callable[[], int]) -> int | None:
    """llama-swap allocates a port only when the cmd uses ``${PORT}``; a proxy that needs it
    without the cmd using it could never be reached, so that is an error."""
    if "${PORT}" not in text.cmd:
        if "${PORT}" in text.proxy:
            raise text.at("proxy").error(
                "proxy uses ${PORT} but cmd does not",
                "pass --port ${PORT} in cmd, or give proxy a fixed address"
                + ("" if "proxy" in text.raw.fields else " (proxy defaults to http://localhost:${PORT})"),
            )
        return None
    port = ports()
    value = {"PORT": port}
    text.cmd, text.cmd_stop, text.proxy = (substitute(t, value) for t in (text.cmd, text.cmd_stop, text.proxy))
    text.name, text.description = substitute(text.name, value), substitute(text.description, value)
    text.metadata = substitute_typed(text.metadata, value)
    return port


def check_no_leftover_macros(text: ModelText, macros: Mapping[str, Scalar]) -> None:
    """Anything still looking like ``${...}`` is a macro nobody defined (``${PID}`` is kept in
    cmdStop for the process layer)."""
    for label, value in text.checked():
        for leftover in leftover_macros(value):
            if leftover == "PID" and label == "cmdStop":
                continue
            if leftover == "PID":
                raise text.at(label).error("${PID} is only available in cmdStop")
            raise text.at(label).error(f"unknown macro ${{{leftover}}} in {label}", suggest_name(leftover, macros))


def parse_check_endpoint(text: ModelText) -> str | None:
    """llama-swap: ``none`` skips the check; an empty value keeps the default ``/health``."""
    endpoint = text.check_endpoint.strip() or "/health"
    if endpoint == "none":
        return None
    if not endpoint.startswith("/"):
        raise text.at("checkEndpoint").error(f"checkEndpoint {endpoint!r} must be a path starting with '/', or none")
    return endpoint


def parse_ttl(f: Mapping[str, Value], defaults: Defaults) -> float:
    if "ttl" not in f:
        return defaults.global_ttl
    ttl = f["ttl"].number()
    if ttl == -1:
        return defaults.global_ttl  # llama-swap's "use globalTTL" marker
    if ttl < 0:
        raise f["ttl"].error("ttl must be 0 (never unload) or a number of seconds")
    return ttl


def parse_vram_mib(text: ModelText) -> int | None:
    if "vram_mib" not in text.metadata:
        return None
    vram = text.metadata["vram_mib"]
    if not isinstance(vram, int) or isinstance(vram, bool) or vram < 0:
        raise text.at("metadata").error(f"metadata.vram_mib must be a whole number of MiB, found {vram!r}")
    return vram


def build_model(raw: RawModel, global_macros: list[Macro], defaults: Defaults, ports: Callable[[], int]) -> ModelConfig:
    f = raw.fields
    if "cmd" not in f:
        raise raw.at.error(
            "missing cmd", "add cmd: the command that starts the server, e.g. llama-server --port ${PORT} -m model.gguf"
        )
    macros = model_macros(raw, global_macros)
    text = expand_model_text(raw, macros)
    port = apply_port(text, ports)
    check_no_leftover_macros(text, macros)

    cmd = split_command(text.cmd, f["cmd"])
    if not cmd:
        raise f["cmd"].error("cmd is empty (only comments?)", "give the command that starts the server")
    parts = urlsplit(text.proxy)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise text.at("proxy").error(
            f"proxy {text.proxy!r} is not an http(s) URL", "write it like http://127.0.0.1:${PORT}"
        )

    unload_timeout = defaults.unload_timeout
    if "unloadTimeout" in f:  # 0 means "the global value", as upstream
        unload_timeout = f["unloadTimeout"].number(minimum=0) or defaults.unload_timeout
    concurrency = DEFAULT_CONCURRENCY_LIMIT
    if "concurrencyLimit" in f:  # 0 means the default (10), as upstream
        concurrency = f["concurrencyLimit"].integer(minimum=0) or DEFAULT_CONCURRENCY_LIMIT
    ignore_websockets = parse_compat(f.get("compat"))
    if raw.id == COMFYUI_MODEL_ID:  # as llama-swap: ComfyUI's UI holds many requests and a websocket
        concurrency = max(concurrency, COMFYUI_CONCURRENCY)
        ignore_websockets = True

    return ModelConfig(
        id=raw.id,
        cmd=cmd,
        proxy=text.proxy,
        port=port,
        cmd_stop=(split_command(text.cmd_stop, f["cmdStop"]) or None) if "cmdStop" in f else None,
        check_endpoint=parse_check_endpoint(text),
        ttl=parse_ttl(f, defaults),
        unload_timeout=unload_timeout,
        env=parse_env(f["env"]) if "env" in f else {},
        aliases=tuple(f["aliases"].string_list()) if "aliases" in f else (),
        use_model_name=f["useModelName"].string(allow_empty=False) if "useModelName" in f else None,
        name=text.name or None,
        description=text.description or None,
        unlisted=f["unlisted"].boolean() if "unlisted" in f else False,
        concurrency_limit=concurrency,
        metadata=text.metadata,
        filters=Filters(
            strip_params=sanitize_strip_params(text.strip_params, text.at("filters.stripParams")),
            set_params=check_params(text.set_params, text.at("filters.setParams")),
            set_params_by_id=parse_by_id(text.set_params_by_id, text.at("filters.setParamsByID")),
        ),
        send_loading_state=(
            f["sendLoadingState"].boolean() if "sendLoadingState" in f else defaults.send_loading_state
        ),
        vram_mib=parse_vram_mib(text),
        prompt_cache=parse_model_prompt_cache(raw.at),
        timeouts=parse_timeouts(f.get("timeouts"), MODEL_TIMEOUTS),
        capabilities=parse_capabilities(f.get("capabilities")),
        ignore_websockets=ignore_websockets,
    )


def parse_timeouts(value: Value | None, defaults: Timeouts) -> Timeouts:
    """llama-swap's ``timeouts``: whole seconds, 0 disables one; unset keys keep ``defaults``."""
    if value is None or value.is_null:
        return defaults
    fields = value.mapping(TIMEOUT_KEYS)
    return replace(defaults, **{TIMEOUT_KEYS[key]: item.integer(minimum=0) for key, item in fields.items()})


def parse_capabilities(value: Value | None) -> Capabilities:
    if value is None or value.is_null:
        return Capabilities()
    fields = value.mapping(CAPABILITY_KEYS)

    def modalities(key: str) -> tuple[str, ...]:
        found = []
        for item in fields[key].items() if key in fields else []:
            modality = item.string()
            if modality not in MODALITIES:
                raise item.error(f"invalid modality {modality!r}", f"use one of {', '.join(MODALITIES)}")
            found.append(modality)
        return tuple(found)

    return Capabilities(
        inputs=modalities("in"),
        outputs=modalities("out"),
        tools=fields["tools"].boolean() if "tools" in fields else False,
        reranker=fields["reranker"].boolean() if "reranker" in fields else False,
        context=fields["context"].integer(minimum=0) if "context" in fields else 0,
    )


def parse_compat(value: Value | None) -> bool:
    if value is None or value.is_null:
        return False
    fields = value.mapping(COMPAT_KEYS)
    return fields["ignoreWebsockets"].boolean() if "ignoreWebsockets" in fields else False


def model_fields(raw_models: Mapping[str, RawModel], model_id: str, key: str) -> Value:
    raw = raw_models[model_id]
    return raw.fields.get(key, raw.at)


def collect_aliases(
    raw_models: Mapping[str, RawModel], models: dict[str, ModelConfig]
) -> tuple[dict[str, str], dict[str, ModelConfig]]:
    """Alias -> model ID, from ``aliases`` and ``setParamsByID`` keys (llama-swap's rules).

    A duplicate alias, or one equal to another model's ID, is an error. ``setParamsByID`` keys are
    appended to the model's aliases (the model's own ID is skipped).
    """
    aliases: dict[str, str] = {}

    def claim(alias: str, model_id: str, at: Value, via: str) -> None:
        if alias in models and alias != model_id:
            raise at.error(f"{via} {alias!r} is also a model ID", "rename the alias or the model")
        if alias == model_id:
            if via == "alias":
                raise at.error(f"alias {alias!r} is the model's own ID", "remove it")
            return
        owner = aliases.get(alias)
        if owner is not None and owner != model_id:
            raise at.error(
                f"duplicate alias {alias!r}: model {owner!r} already uses it", "aliases must be unique across models"
            )
        aliases[alias] = model_id

    updated: dict[str, ModelConfig] = {}
    for model_id, model in models.items():
        extra: list[str] = []
        at = model_fields(raw_models, model_id, "aliases")
        for alias in model.aliases:
            claim(alias, model_id, at, "alias")
        by_id_at = model_fields(raw_models, model_id, "filters")
        for key in model.filters.set_params_by_id:
            if key != model_id and key not in model.aliases:
                claim(key, model_id, by_id_at, "filters.setParamsByID key")
                extra.append(key)
        updated[model_id] = replace(model, aliases=model.aliases + tuple(extra)) if extra else model
    return aliases, updated


def resolve_model_name(
    name: str, at: Value, models: Mapping[str, ModelConfig], what: str, aliases: Mapping[str, str] | None = None
) -> str:
    if name in models:
        return name
    if aliases and name in aliases:
        return aliases[name]
    raise at.error(f"{what} {name!r} is not a model in this config", suggest_model(name, models, aliases or {}))


def suggest_model(name: str, models: Mapping[str, object], aliases: Mapping[str, str]) -> str:
    """The fix for a name that is not a model: the nearest model or alias, else the models."""
    near = closest(name, [*models, *aliases])
    return f"did you mean {near!r}?" if near else f"known models: {', '.join(models) or 'none'}"
