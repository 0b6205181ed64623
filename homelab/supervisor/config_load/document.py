"""The whole file: top-level settings, then each section in the order llama-swap reads them."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ...suggest import closest
from ..config import Config
from .devices import BUDGET_KEY, parse_device_budget, with_devices
from .hooks import parse_hooks
from .macros import Macro, read_macros, resolve_macros
from .models import (
    MODEL_KEYS,
    UNSUPPORTED_MODEL,
    Defaults,
    RawModel,
    build_model,
    check_model_id,
    collect_aliases,
)
from .peers import parse_peers
from .routing import parse_profiles, parse_routing, parse_selectors
from .security import parse_security
from .settings import (
    parse_ignore_paths,
    parse_log_time_format,
    parse_performance,
    parse_session_headers,
    parse_store,
)
from .swap import parse_prefetch, parse_prompt_cache
from .values import ConfigError, Value, compose, substitute_env

TOP_LEVEL_KEYS = (
    "models", "macros", "healthCheckTimeout", "startPort", "globalTTL", "unloadTimeout",
    "logLevel", "logToStdout", "logRequests", "logTimeFormat", "metricsMaxInMemory",
    "captureBuffer", "apiKeys", "includeAliasesInList", "sendLoadingState", "hooks", "groups",
    "matrix", "peers", "routing", "selectors", "profiles", "upstream", "ui", "performance", "store",
)  # fmt: skip
LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_TO_STDOUT = ("proxy", "upstream", "both", "none")
DEFAULT_UNLOAD_TIMEOUT = 10
MIN_HEALTH_CHECK_TIMEOUT = 15


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


def parse_config(text: str, source: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Parse config text (``source`` only names the file in errors and in ``Config.source``)."""
    env = os.environ if env is None else env
    name = str(source) if source is not None else "<config>"
    text = substitute_env(text, name, env)
    node = compose(text, name)
    if node is None:
        raise ConfigError(f"{name}: the config is empty; it needs at least a models: section")
    root = Value(node, "", name)
    top = root.mapping(TOP_LEVEL_KEYS)
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
    metrics_max = top["metricsMaxInMemory"].integer(minimum=0) if "metricsMaxInMemory" in top else 1000
    capture_buffer = top["captureBuffer"].integer(minimum=0) if "captureBuffer" in top else 5
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
    device_budget = parse_device_budget(extensions.get(BUDGET_KEY))
    models = with_devices(models, {m: raw.at for m, raw in raw_models.items()}, device_budget)
    aliases, models = collect_aliases(raw_models, models)

    peers = parse_peers(top.get("peers"), global_macros, models, aliases)
    routing = parse_routing(root, top, models, aliases)
    selectors = parse_selectors(top.get("selectors"), models, aliases, peers, routing)
    profiles = parse_profiles(top.get("profiles"), models, aliases, peers, selectors)
    hooks, skipped = parse_hooks(top.get("hooks"), models, aliases, selectors)
    api_keys = parse_api_keys(top.get("apiKeys"))

    vram_budget = extensions["x-vramBudgetMiB"].integer(minimum=1) if "x-vramBudgetMiB" in extensions else None
    max_wait = _seconds(extensions, "x-maxWait", 30.0)
    max_hold = _seconds(extensions, "x-maxHold", 600.0)
    unload_grace = _seconds(extensions, "x-unloadGrace", 10.0)

    return Config(
        models=models,
        aliases=aliases,
        groups=routing.groups,
        matrix=routing.matrix,
        peers=peers,
        hooks=hooks,
        health_check_timeout=health_check_timeout,
        start_port=start_port,
        global_ttl=global_ttl,
        unload_timeout=unload_timeout,
        log_level=log_level,
        api_keys=api_keys,
        send_loading_state=send_loading_state,
        include_aliases_in_list=(top["includeAliasesInList"].boolean() if "includeAliasesInList" in top else False),
        vram_budget_mib=vram_budget,
        device_budget_mib=device_budget,
        max_wait=max_wait,
        max_hold=max_hold,
        unload_grace=unload_grace,
        source=source,
        log_to_stdout=log_to_stdout,
        log_requests=top["logRequests"].boolean() if "logRequests" in top else False,
        prompt_cache=parse_prompt_cache(extensions.get("x-promptCache"), source),
        prefetch=parse_prefetch(extensions.get("x-prefetch"), models, aliases),
        selectors=selectors,
        profiles=profiles,
        ignore_paths=parse_ignore_paths(top.get("upstream")),
        fifo_priority=routing.fifo_priority,
        session_headers=parse_session_headers(top.get("ui")),
        performance=parse_performance(top.get("performance")),
        store_path=parse_store(top.get("store"), source),
        log_time_format=parse_log_time_format(top),
        metrics_max_in_memory=metrics_max,
        capture_buffer_mib=capture_buffer,
        warnings=tuple(routing.warnings + skipped),
        security=parse_security(extensions.get("x-security"), api_keys),
    )


def choice(top: Mapping[str, Value], key: str, allowed: tuple[str, ...], default: str) -> str:
    if key not in top:
        return default
    value = top[key].string()
    if value not in allowed:
        raise top[key].error(f"must be one of {', '.join(allowed)}, found {value!r}", suggest_value(value, allowed))
    return value


def suggest_value(value: str, allowed: Iterable[str]) -> str | None:
    near = closest(value, allowed)
    return f"did you mean {near!r}?" if near else None


def _seconds(extensions: Mapping[str, Value], key: str, default: float) -> float:
    """An optional ``x-`` duration in seconds (0 or more)."""
    return extensions[key].number(minimum=0) if key in extensions else default


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
