"""Parse llama-swap's ``config.yaml`` strictly into :class:`homelab.supervisor.config.Config`.

The format is llama-swap's (checked against its ``proxy/config`` / ``internal/config`` Go code);
we differ in being strict: an unknown key is an error (with the nearest valid key suggested),
except keys starting with ``x-``, which are free for extensions (ours: ``x-vramBudgetMiB``,
``x-maxWait``; the swap settings in :mod:`homelab.supervisor.config_swap`). Every error names
the file, the line and the key path, and says how to fix it.

Order of work, as llama-swap does it:

1. ``${env.NAME}`` is substituted in the YAML text first (only inside YAML values and keys, not
   comments); an unset variable is fatal. Substituting before parsing means ``ttl: ${env.TTL}``
   becomes a number, as upstream.
2. The YAML is parsed (line numbers kept from :func:`yaml.compose`), keys are checked.
3. Per model, macros are expanded: ``MODEL_ID`` first, then the global ``macros`` in order, with
   the model's own ``macros`` overriding a global of the same name in place or appending. A macro
   may use only macros defined before it.
4. ``${PORT}`` is allocated from ``startPort`` in sorted model-ID order, for models whose ``cmd``
   uses it. ``${PID}`` stays in ``cmdStop`` for the process layer.
5. Aliases, ``setParamsByID`` aliases, groups (or the matrix), peers and hooks are cross-checked.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from homelab.supervisor.config import (
    Config,
    Filters,
    GroupConfig,
    HooksConfig,
    MatrixConfig,
    ModelConfig,
    PeerConfig,
)
from homelab.supervisor.config_macros import (
    Macro,
    Scalar,
    leftover_macros,
    macro_text,
    read_macros,
    resolve_macros,
    substitute,
    substitute_typed,
    suggest_name,
)
from homelab.supervisor.config_swap import parse_model_prompt_cache, parse_prefetch, parse_prompt_cache
from homelab.supervisor.config_yaml import ConfigError, Value, compose, substitute_env
from homelab.supervisor.matrix import (
    DEFAULT_GROUP,
    MatrixError,
    MatrixExpressionError,
    expand_sets,
    expression_names,
    expression_refs,
    is_name_char,
)

# --------------------------------------------------------------------------- keys

TOP_LEVEL_KEYS = (
    "models", "macros", "healthCheckTimeout", "startPort", "globalTTL", "unloadTimeout",
    "logLevel", "logToStdout", "logRequests", "logTimeFormat", "metricsMaxInMemory",
    "captureBuffer", "apiKeys", "includeAliasesInList", "sendLoadingState", "hooks", "groups",
    "matrix", "peers",
)  # fmt: skip
MODEL_KEYS = (
    "cmd", "cmdStop", "proxy", "checkEndpoint", "ttl", "unloadTimeout", "env", "aliases",
    "useModelName", "name", "description", "unlisted", "concurrencyLimit", "metadata", "filters",
    "macros", "sendLoadingState",
)  # fmt: skip
FILTER_KEYS = ("stripParams", "setParams", "setParamsByID")
PEER_KEYS = ("proxy", "apiKey", "models", "filters")
GROUP_KEYS = ("swap", "exclusive", "persistent", "members")
MATRIX_KEYS = ("vars", "evict_costs", "sets")

NOT_SUPPORTED = "a llama-swap setting that homelab's supervisor does not support yet; remove it"
UNSUPPORTED_TOP_LEVEL = {
    key: NOT_SUPPORTED for key in ("profiles", "routing", "store", "ui", "performance", "upstream")
}
UNSUPPORTED_MODEL = {key: NOT_SUPPORTED for key in ("timeouts", "capabilities")}
UNSUPPORTED_MODEL["healthCheckTimeout"] = (
    "set by llama-swap from the top-level healthCheckTimeout; move it to the top level"
)
UNSUPPORTED_FILTERS = {"setParamsByMatch": NOT_SUPPORTED}
UNSUPPORTED_PEER = {key: NOT_SUPPORTED for key in ("timeouts", "tailcatKey")}

LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_TO_STDOUT = ("proxy", "upstream", "both", "none")
PROTECTED_PARAMS = ("model",)
"""Request parameters filters may not touch (llama-swap routes on them)."""

DEFAULT_PROXY = "http://localhost:${PORT}"
DEFAULT_UNLOAD_TIMEOUT = 10
DEFAULT_CONCURRENCY_LIMIT = 10
MIN_HEALTH_CHECK_TIMEOUT = 15

VAR_NAME = re.compile(r"^[a-zA-Z0-9]{1,8}$")


# --------------------------------------------------------------------------- commands


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


# --------------------------------------------------------------------------- the model section


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


def first_line_of_key(section: Value, key: str) -> Value:
    return section.entries().get(key, (section, section))[0]


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

    filters = f["filters"].mapping(FILTER_KEYS + ("strip_params",), UNSUPPORTED_FILTERS) if "filters" in f else {}
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


def build_model(
    raw: RawModel, global_macros: list[Macro], defaults: Defaults, ports: Callable[[], int]
) -> ModelConfig:
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
        raise text.at("proxy").error(f"proxy {text.proxy!r} is not an http(s) URL", "write it like http://127.0.0.1:${PORT}")

    unload_timeout = defaults.unload_timeout
    if "unloadTimeout" in f:  # 0 means "the global value", as upstream
        unload_timeout = f["unloadTimeout"].number(minimum=0) or defaults.unload_timeout
    concurrency = DEFAULT_CONCURRENCY_LIMIT
    if "concurrencyLimit" in f:  # 0 means the default (10), as upstream
        concurrency = f["concurrencyLimit"].integer(minimum=0) or DEFAULT_CONCURRENCY_LIMIT

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
    )


def parse_by_id(raw: Any, at: Value) -> dict[str, dict[str, Any]]:
    if not raw:
        return {}
    if not isinstance(raw, dict):
        raise at.error("expected a mapping of requested model IDs to parameters")
    return {str(key): check_params(params or {}, at) for key, params in raw.items()}


# --------------------------------------------------------------------------- the whole file


def load_config(path: Path | str, env: Mapping[str, str] | None = None) -> Config:
    """Read and parse a llama-swap ``config.yaml``; raises :class:`ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc}") from None
    return parse_config(text, path, os.environ if env is None else env)


def parse_config(
    text: str, source: Path | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Parse config text (``source`` only names the file in errors and in ``Config.source``)."""
    env = os.environ if env is None else env
    name = str(source) if source is not None else "<config>"
    text = substitute_env(text, name, env)
    node = compose(text, name)
    if node is None:
        raise ConfigError(f"{name}: the config is empty; it needs at least a models: section")
    root = Value(node, "", name)
    top = root.mapping(TOP_LEVEL_KEYS, UNSUPPORTED_TOP_LEVEL)
    extensions = root.extensions()

    health_check_timeout = float(
        max(MIN_HEALTH_CHECK_TIMEOUT, top["healthCheckTimeout"].integer(minimum=1))
        if "healthCheckTimeout" in top
        else 120
    )
    start_port = top["startPort"].integer(minimum=1) if "startPort" in top else 5800
    if start_port > 65535:
        raise top["startPort"].error("startPort must be a TCP port (1-65535)")
    global_ttl = top["globalTTL"].number(minimum=0) if "globalTTL" in top else 0.0
    unload_timeout = (
        top["unloadTimeout"].number(minimum=0) if "unloadTimeout" in top else DEFAULT_UNLOAD_TIMEOUT
    ) or DEFAULT_UNLOAD_TIMEOUT
    log_level = choice(top, "logLevel", LOG_LEVELS, "info")
    log_to_stdout = choice(top, "logToStdout", LOG_TO_STDOUT, "proxy")
    for key in ("logRequests", "includeAliasesInList", "sendLoadingState"):
        if key in top:
            top[key].boolean()
    for key in ("metricsMaxInMemory", "captureBuffer"):
        if key in top:
            top[key].integer(minimum=0)
    if "logTimeFormat" in top:
        top["logTimeFormat"].string()
    send_loading_state = top["sendLoadingState"].boolean() if "sendLoadingState" in top else False

    global_macros = read_macros(top["macros"]) if "macros" in top else []
    resolve_macros([Macro("MODEL_ID", "", root), *global_macros])  # definition errors, model or not

    # Models: key checks first, then macros and ports in sorted-ID order (llama-swap's port order).
    raw_models: dict[str, RawModel] = {}
    models_value = top.get("models")
    if models_value is not None:
        for model_id, (id_value, value) in models_value.entries("a mapping of model IDs to models").items():
            check_model_id(model_id, id_value)
            fields = value.mapping(MODEL_KEYS, UNSUPPORTED_MODEL)
            raw = RawModel(model_id, value, fields)
            raw.macros = read_macros(fields["macros"]) if "macros" in fields else []
            raw_models[model_id] = raw
    next_port = [start_port]

    def allocate() -> int:
        port = next_port[0]
        if port > 65535:
            raise root.error(f"ran out of ports: startPort {start_port} plus {len(raw_models)} models passes 65535")
        next_port[0] += 1
        return port

    defaults = Defaults(global_ttl, unload_timeout, send_loading_state)
    built = {
        model_id: build_model(raw_models[model_id], global_macros, defaults, allocate)
        for model_id in sorted(raw_models)
    }
    models = {model_id: built[model_id] for model_id in raw_models}  # file order for listings
    aliases, models = collect_aliases(raw_models, models)

    groups: dict[str, GroupConfig] = {}
    matrix: MatrixConfig | None = None
    if "matrix" in top and "groups" in top and not top["groups"].is_null:
        raise first_line_of_key(root, "matrix").error(
            "a config cannot use both groups and matrix", "keep one of them (matrix is the more general)"
        )
    if "matrix" in top:
        matrix = parse_matrix(top["matrix"], models)
    else:
        groups = parse_groups(top.get("groups"), models)

    peers = parse_peers(top.get("peers"), global_macros, models, aliases)
    hooks = parse_hooks(top.get("hooks"), models, aliases)
    api_keys = parse_api_keys(top.get("apiKeys"))

    vram_budget = None
    if "x-vramBudgetMiB" in extensions:
        vram_budget = extensions["x-vramBudgetMiB"].integer(minimum=1)
    max_wait = extensions["x-maxWait"].number(minimum=0) if "x-maxWait" in extensions else 30.0

    return Config(
        models=models,
        aliases=aliases,
        groups=groups,
        matrix=matrix,
        peers=peers,
        hooks=hooks,
        health_check_timeout=health_check_timeout,
        start_port=start_port,
        global_ttl=global_ttl,
        unload_timeout=unload_timeout,
        log_level=log_level,
        api_keys=api_keys,
        send_loading_state=send_loading_state,
        include_aliases_in_list=(
            top["includeAliasesInList"].boolean() if "includeAliasesInList" in top else False
        ),
        vram_budget_mib=vram_budget,
        max_wait=max_wait,
        source=source,
        log_to_stdout=log_to_stdout,
        log_requests=top["logRequests"].boolean() if "logRequests" in top else False,
        prompt_cache=parse_prompt_cache(extensions.get("x-promptCache"), source),
        prefetch=parse_prefetch(extensions.get("x-prefetch"), models, aliases),
    )


def choice(top: Mapping[str, Value], key: str, allowed: tuple[str, ...], default: str) -> str:
    if key not in top:
        return default
    value = top[key].string()
    if value not in allowed:
        raise top[key].error(f"must be one of {', '.join(allowed)}, found {value!r}", suggest_value(value, allowed))
    return value


def suggest_value(value: str, allowed: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(value, list(allowed), n=1)
    return f"did you mean {close[0]!r}?" if close else None


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
    close = difflib.get_close_matches(name, list(models) + list(aliases or {}), n=1)
    fix = f"did you mean {close[0]!r}?" if close else f"known models: {', '.join(models) or 'none'}"
    raise at.error(f"{what} {name!r} is not a model in this config", fix)


def parse_groups(section: Value | None, models: Mapping[str, ModelConfig]) -> dict[str, GroupConfig]:
    groups: dict[str, GroupConfig] = {}
    member_of: dict[str, str] = {}
    if section is not None:
        for group_name, (key, value) in section.entries("a mapping of group names to groups").items():
            if group_name == DEFAULT_GROUP:
                raise key.error(f"{DEFAULT_GROUP} is the name of the implicit group of ungrouped models", "rename the group")
            fields = value.mapping(GROUP_KEYS)
            members: list[str] = []
            for item in fields["members"].items() if "members" in fields else []:
                member = resolve_model_name(item.string(), item, models, "group member")
                if member in members:
                    raise item.error(f"{member!r} is listed twice in group {group_name!r}", "list it once")
                if member in member_of:
                    raise item.error(
                        f"model {member!r} is already in group {member_of[member]!r}",
                        "a model can be in only one group",
                    )
                member_of[member] = group_name
                members.append(member)
            groups[group_name] = GroupConfig(
                name=group_name,
                members=tuple(members),
                swap=fields["swap"].boolean() if "swap" in fields else True,
                exclusive=fields["exclusive"].boolean() if "exclusive" in fields else True,
                persistent=fields["persistent"].boolean() if "persistent" in fields else False,
            )
    # Ungrouped models are in llama-swap's implicit default group (swap and exclusive); that group
    # is not materialised here: group_evictions() applies it, and an empty ``groups`` tells the
    # runtime the config uses no groups at all.
    return groups


def parse_matrix(section: Value, models: Mapping[str, ModelConfig]) -> MatrixConfig:
    fields = section.mapping(MATRIX_KEYS)
    variables: dict[str, str] = {}
    for var, (key, value) in (fields["vars"].entries() if "vars" in fields else {}).items():
        if not VAR_NAME.match(var):
            raise key.error(f"var {var!r} must be 1-8 letters or digits")
        variables[var] = resolve_model_name(value.string(), value, models, f"var {var!r} names")

    def resolve(name: str, at: Value, what: str) -> str:
        if name in variables:
            return variables[name]
        if name in models:
            return name
        close = difflib.get_close_matches(name, list(variables) + list(models), n=1)
        fix = f"did you mean {close[0]!r}?" if close else "use a model ID or a name from matrix.vars"
        if any(not all(is_name_char(c) for c in model_id) for model_id in models):
            fix += " (model IDs with '/' or ':' need a short name in matrix.vars)"
        raise at.error(f"{what} {name!r} is neither a matrix var nor a model", fix)

    costs: dict[str, int] = {}
    cost_source: dict[str, str] = {}
    for name, (key, value) in (fields["evict_costs"].entries() if "evict_costs" in fields else {}).items():
        model = resolve(name, key, "evict_costs key")
        if model in cost_source:
            raise key.error(f"{cost_source[model]!r} and {name!r} both name model {model!r}", "keep one")
        cost_source[model] = name
        costs[model] = value.integer(minimum=1)

    set_entries = fields["sets"].entries() if "sets" in fields else {}
    if not set_entries:
        raise (fields.get("sets") or section).error("matrix needs at least one set under sets:")
    expressions: dict[str, str] = {}
    for set_name, (_, value) in set_entries.items():
        text = value.string(allow_empty=False)
        try:
            names = expression_names(text)
        except MatrixExpressionError as exc:
            raise value.error(str(exc)) from None
        for name in sorted(names):
            resolve(name, value, f"set {set_name!r}:")
        for ref in sorted(expression_refs(text)):
            if ref not in set_entries:
                raise value.error(
                    f"set {set_name!r} references +{ref}, which is not a set",
                    f"defined sets: {', '.join(set_entries)}",
                )
        expressions[set_name] = text
    try:
        sets = expand_sets(expressions, variables)
    except (MatrixError, MatrixExpressionError) as exc:
        raise fields["sets"].error(str(exc)) from None
    return MatrixConfig(vars=variables, evict_costs=costs, sets=sets)


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
        fields = value.mapping(PEER_KEYS, UNSUPPORTED_PEER)
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
                raise fields["models"].error(f"{routed!r} is both a peer model and a local model or alias", "rename one")
        api_key = substitute(fields["apiKey"].string(), macros) if "apiKey" in fields else None
        filter_fields = fields["filters"].mapping(FILTER_KEYS, UNSUPPORTED_FILTERS) if "filters" in fields else {}
        strip_value = filter_fields.get("stripParams")
        strip = substitute(parse_strip_params(strip_value), macros) if strip_value else ""
        set_params = substitute_typed(filter_fields["setParams"].python(), macros) if "setParams" in filter_fields else {}
        by_id = substitute_typed(filter_fields["setParamsByID"].python(), macros) if "setParamsByID" in filter_fields else {}
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
        )
    return peers


def parse_hooks(section: Value | None, models: Mapping[str, ModelConfig], aliases: Mapping[str, str]) -> HooksConfig:
    if section is None:
        return HooksConfig()
    fields = section.mapping(("on_startup",))
    if "on_startup" not in fields:
        return HooksConfig()
    startup = fields["on_startup"].mapping(("preload",))
    preload: list[str] = []
    for item in startup["preload"].items() if "preload" in startup else []:
        name = item.string().strip()
        if not name:
            continue
        model = resolve_model_name(name, item, models, "preload", aliases)
        if model not in preload:
            preload.append(model)
    return HooksConfig(preload=tuple(preload))


def parse_api_keys(section: Value | None) -> tuple[str, ...]:
    keys: list[str] = []
    for item in section.items() if section is not None else []:
        key = item.string()
        if not key:
            raise item.error("empty API key", "remove it or give a value (e.g. ${env.API_KEY})")
        if " " in key:
            raise item.error("an API key cannot contain spaces")
        keys.append(key)
    return tuple(keys)


# --------------------------------------------------------------------------- reload


RESTART_FIELDS = ("cmd", "cmd_stop", "proxy", "port", "check_endpoint", "env", "prompt_cache")
"""ModelConfig fields whose change means the running process is not what the config describes.

Everything else (ttl, unload_timeout, aliases, filters, metadata, name, description, unlisted,
use_model_name, concurrency_limit, send_loading_state, vram_mib) is read per request or per
decision from the live config, so a changed value takes effect without a restart."""


def changed_models(old: Config, new: Config) -> set[str]:
    """Model IDs to restart on reload: removed ones and those whose RESTART_FIELDS differ."""
    changed: set[str] = set()
    for model_id, before in old.models.items():
        after = new.models.get(model_id)
        if after is None or any(getattr(before, f) != getattr(after, f) for f in RESTART_FIELDS):
            changed.add(model_id)
    return changed
