"""The supervisor's view of a llama-swap ``config.yaml`` (contract: llama-swap's format).

This module holds the typed result of parsing. Parsing itself (strict keys with file:line
errors, macros, ``${env.X}``, ``${PORT}`` allocation, groups, matrix expansion, peers) lives in
:mod:`homelab.supervisor.config_load`; the matrix solver, and the group and matrix settings it
reads, in :mod:`homelab.matrix`.

Every field here is already expanded: ``cmd`` is an argv list with every macro and ``${PORT}``
substituted; ``cmd_stop`` keeps ``${PID}`` for the process layer to fill in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..matrix import GroupConfig, MatrixConfig


@dataclass(frozen=True)
class Filters:
    strip_params: tuple[str, ...] = ()
    set_params: dict[str, Any] = field(default_factory=dict)
    set_params_by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Request-ID -> parameters. Every key except the model's own ID is also an alias."""


@dataclass(frozen=True)
class ModelConfig:
    id: str
    cmd: tuple[str, ...]
    proxy: str
    port: int | None
    """The port ``${PORT}`` expanded to, or None if the cmd does not use ``${PORT}``."""
    cmd_stop: tuple[str, ...] | None = None
    check_endpoint: str | None = "/health"
    """None means llama-swap's ``none``: ready as soon as the process runs."""
    ttl: float = 0
    """Seconds idle before unload; 0 = never."""
    unload_timeout: float = 10.0
    env: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    use_model_name: str | None = None
    name: str | None = None
    description: str | None = None
    unlisted: bool = False
    concurrency_limit: int = 10
    metadata: dict[str, Any] = field(default_factory=dict)
    filters: Filters = field(default_factory=Filters)
    send_loading_state: bool = False
    vram_mib: int | None = None
    """From ``metadata.vram_mib`` (the plan writes it): used for VRAM-aware admission."""
    prompt_cache: bool | None = None
    """``x-promptCache``: keep the KV cache across evictions; None = on for long contexts."""


@dataclass(frozen=True)
class PeerConfig:
    name: str
    proxy: str
    models: tuple[str, ...]
    api_key: str | None = None
    filters: Filters = field(default_factory=Filters)


@dataclass(frozen=True)
class HooksConfig:
    preload: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromptCacheSettings:
    """Top-level ``x-promptCache``: where and how much of the saved slots to keep."""

    dir: Path | None = None
    """None: ``prompt-cache`` beside the config file (a config given as text has no cache)."""
    max_mib: int = 16384
    max_mib_per_model: int = 4096
    save_timeout: float = 5.0
    """Seconds an eviction may spend saving slots before the backend is stopped anyway."""
    restore_timeout: float = 10.0
    min_ctx: int = 16384
    """Models without their own ``x-promptCache`` are cached when ``--ctx-size`` is at least this."""


@dataclass(frozen=True)
class PrefetchSettings:
    """Top-level ``x-prefetch``: read an incoming model's files into the page cache."""

    enabled: bool = True
    keep_warm: tuple[str, ...] = ()
    """Model IDs whose files are read again after each swap (likely next)."""
    reserve_mib: int = 1024
    """RAM left untouched on top of what resident models' files take."""


@dataclass(frozen=True)
class SecuritySettings:
    """Top-level ``x-security``: who may talk to the supervisor, from where, and how much."""

    allowed_hosts: tuple[str, ...] = ()
    """``Host`` names answered besides loopback names, IP addresses, this machine's hostname and
    the ``--listen`` host (lower case; ``*`` turns the check off)."""
    allowed_origins: tuple[str, ...] = ()
    """Browser origins (``scheme://host[:port]``) allowed besides loopback origins and the
    server's own; ``*`` (only with ``apiKeys``) allows every origin."""
    max_body_mib: int = 64
    max_json_depth: int = 64
    body_timeout: float = 60.0
    """Seconds a client may take to send a request body."""


@dataclass(frozen=True)
class Config:
    models: dict[str, ModelConfig]
    aliases: dict[str, str] = field(default_factory=dict)
    """Alias (incl. setParamsByID IDs) -> model ID."""
    groups: dict[str, GroupConfig] = field(default_factory=dict)
    matrix: MatrixConfig | None = None
    peers: dict[str, PeerConfig] = field(default_factory=dict)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    health_check_timeout: float = 120.0
    start_port: int = 5800
    global_ttl: float = 0
    unload_timeout: float = 10.0
    log_level: str = "info"
    api_keys: tuple[str, ...] = ()
    send_loading_state: bool = False
    include_aliases_in_list: bool = False
    vram_budget_mib: int | None = None
    """``x-vramBudgetMiB``: with per-model ``vram_mib``, never start what would exceed it."""
    max_wait: float = 30.0
    """``x-maxWait``: seconds a swap waits for in-flight requests of a model it must evict."""
    source: Path | None = None
    log_to_stdout: str = "proxy"
    """llama-swap's ``logToStdout``: proxy | upstream | both | none."""
    log_requests: bool = False
    """llama-swap's ``logRequests``."""
    prompt_cache: PromptCacheSettings = field(default_factory=PromptCacheSettings)
    prefetch: PrefetchSettings = field(default_factory=PrefetchSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)

    def resolve(self, requested: str) -> str | None:
        """Model ID for a requested name or alias, or None."""
        if requested in self.models:
            return requested
        return self.aliases.get(requested)
