"""The supervisor's view of a llama-swap ``config.yaml`` (contract: llama-swap's format).

This module holds the typed result of parsing. Parsing itself (strict keys with file:line
errors, macros, ``${env.X}``, ``${PORT}`` allocation, groups, matrix expansion, peers) lives in
:mod:`homelab.supervisor.config_load`; the matrix solver, and the group and matrix settings it
reads, in :mod:`homelab.matrix`.

Every field here is already expanded: ``cmd`` is an argv list with every macro and ``${PORT}``
substituted; ``cmd_stop`` keeps ``${PID}`` for the process layer to fill in.
"""

from __future__ import annotations

import re
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
class Timeouts:
    """llama-swap's ``timeouts`` of a model or peer, in seconds; 0 disables one."""

    connect: int = 30
    """Opening the TCP connection."""
    keepalive: int = 30
    """TCP keep-alive probe interval on backend connections."""
    response_header: int = 0
    """From sending the request to the response headers."""
    tls_handshake: int = 10
    """Added to ``connect`` for https backends (aiohttp times the handshake within connect)."""
    expect_continue: int = 1
    """Accepted for llama-swap; never used: the supervisor does not send ``Expect: 100-continue``."""
    idle_conn: int = 90
    """How long an idle pooled connection is kept."""


MODEL_TIMEOUTS = Timeouts()
PEER_TIMEOUTS = Timeouts(response_header=60)
"""llama-swap's peer default: headers within 60 s (models: no limit, a load can be slow)."""


@dataclass(frozen=True)
class Capabilities:
    """llama-swap's ``capabilities``: what ``/v1/models`` tells clients about a model."""

    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    tools: bool = False
    reranker: bool = False
    context: int = 0

    @property
    def empty(self) -> bool:
        return not (self.inputs or self.outputs or self.tools or self.reranker or self.context)


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
    devices_mib: dict[str, int] | None = None
    """``x-devices``: MiB the model takes on each device (``CUDA0``, ``CPU``...; the plan writes it),
    checked against ``x-deviceBudgetMiB`` device by device."""
    prompt_cache: bool | None = None
    """``x-promptCache``: keep the KV cache across evictions; None = on for long contexts."""
    timeouts: Timeouts = MODEL_TIMEOUTS
    capabilities: Capabilities = field(default_factory=Capabilities)
    ignore_websockets: bool = False
    """``compat.ignoreWebsockets``: a websocket through ``/upstream`` never starts the model and
    is not counted as activity (concurrency, TTL, swaps)."""


@dataclass(frozen=True)
class PeerConfig:
    name: str
    proxy: str
    models: tuple[str, ...]
    api_key: str | None = None
    filters: Filters = field(default_factory=Filters)
    timeouts: Timeouts = PEER_TIMEOUTS


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
class SelectorConfig:
    """llama-swap's ``selectors``: a virtual model ID resolved to one of ``targets`` per request."""

    id: str
    strategy: str
    """``warm`` (first ready, else first starting, else the first), ``pin`` (always the first) or
    ``spillover`` (fill targets in order up to ``spillover`` requests each)."""
    targets: tuple[str, ...]
    """As written: model IDs, aliases or peer models (never other selectors)."""
    spillover: int = 1
    name: str | None = None
    description: str | None = None
    unlisted: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProfileConfig:
    """llama-swap's ``profiles``: model-ID rewrites switched at run time (``PUT /api/profiles/active``)."""

    id: str
    pins: dict[str, str]
    """Requested ID -> target (a model, alias, peer model or selector); "" disables the ID (404)."""
    description: str = ""


@dataclass(frozen=True)
class PerformanceSettings:
    """llama-swap's ``performance``: how often it samples CPU/RAM/GPU for its UI."""

    disabled: bool = False
    every: float = 5.0


DEFAULT_IGNORE_PATHS = (re.compile(r".*\.(js|json|css|png|gif|jpg|jpeg|ico|txt)$"),)
"""llama-swap's default ``upstream.ignorePaths``: static assets never start a model."""
DEFAULT_SESSION_HEADERS = ("X-Session-ID", "X-Litellm-Session-Id")


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
    """Seconds a client may take to send a request body (between chunks, for a streamed upload)."""
    write_timeout: float = 60.0
    """Seconds a client may leave a streamed answer unread before its connection is closed."""


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
    """``x-vramBudgetMiB``: with per-model ``vram_mib``, never start what would exceed it (one pool
    for all GPUs: configs without per-device figures)."""
    device_budget_mib: dict[str, int] = field(default_factory=dict)
    """``x-deviceBudgetMiB``: device -> MiB its resident models may fill (with per-model ``x-devices``)."""
    max_wait: float = 30.0
    """``x-maxWait``: seconds a swap waits for in-flight requests of a model it must evict."""
    max_hold: float = 600.0
    """``x-maxHold``: seconds past ``max_wait`` a swap waits for in-flight requests of a model it
    must evict before it cuts them (a backend that never answers cannot hold every swap); 0: wait
    as long as they take."""
    unload_grace: float = 10.0
    """``x-unloadGrace``: seconds ``/unload`` lets in-flight requests finish before it stops the
    model anyway (llama-swap stops at once; a wedged request must not keep a model loaded)."""
    source: Path | None = None
    log_to_stdout: str = "proxy"
    """llama-swap's ``logToStdout``: proxy | upstream | both | none."""
    log_requests: bool = False
    """llama-swap's ``logRequests``."""
    prompt_cache: PromptCacheSettings = field(default_factory=PromptCacheSettings)
    prefetch: PrefetchSettings = field(default_factory=PrefetchSettings)
    selectors: dict[str, SelectorConfig] = field(default_factory=dict)
    profiles: dict[str, ProfileConfig] = field(default_factory=dict)
    ignore_paths: tuple[re.Pattern[str], ...] = DEFAULT_IGNORE_PATHS
    """``upstream.ignorePaths``: an ``/upstream/<model>/<path>`` matching one never starts a model."""
    fifo_priority: dict[str, int] = field(default_factory=dict)
    """``routing.scheduler.settings.fifo.priority``: model ID -> priority (default 0); a higher
    priority's pending start goes first."""
    session_headers: tuple[str, ...] = DEFAULT_SESSION_HEADERS
    """``ui.activity.session_id``: headers whose first non-empty value names a request's session."""
    performance: PerformanceSettings = field(default_factory=PerformanceSettings)
    store_path: Path | None = None
    """``store.path``: llama-swap's activity database; accepted, not written (see docs)."""
    log_time_format: str = ""
    metrics_max_in_memory: int = 1000
    capture_buffer_mib: int = 5
    warnings: tuple[str, ...] = ()
    """Things llama-swap accepts silently that probably are not what was meant (``serve --check``
    prints them)."""
    security: SecuritySettings = field(default_factory=SecuritySettings)

    def resolve(self, requested: str) -> str | None:
        """Model ID for a requested name or alias, or None."""
        if requested in self.models:
            return requested
        return self.aliases.get(requested)

    def peer_model(self, requested: str) -> tuple[PeerConfig, str] | None:
        """``<peer>/<model>``, or a bare model name exactly one peer lists (llama-swap's rule;
        local models and aliases come first, so callers resolve those before this)."""
        return peer_model(self.peers, requested)


def peer_model(peers: dict[str, PeerConfig], requested: str) -> tuple[PeerConfig, str] | None:
    for peer in peers.values():
        if requested.startswith(peer.name + "/") and requested[len(peer.name) + 1 :] in peer.models:
            return peer, requested[len(peer.name) + 1 :]
    serving = [peer for peer in peers.values() if requested in peer.models]
    return (serving[0], requested) if len(serving) == 1 else None
