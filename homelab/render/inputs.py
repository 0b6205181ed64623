"""Everything the render reads, in one typed object: render is a pure function of it.

The doit task and the CLI assemble a :class:`RenderInputs` from the other stages' outputs
(:mod:`homelab.render.assemble`); tests build one by hand with fixed fake paths. Nothing in
:func:`homelab.render.render_host` touches the file system, the environment or the clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..inventory.multihost import PeerLink
from ..inventory.resolved import ResolvedHost
from ..llamacpp.flags import AcceptedFlags


@dataclass(frozen=True)
class PlannedModel:
    """What the plan decided for one model."""

    vram_mib: tuple[int, ...] = ()
    """MiB per GPU the model is allowed to use, in host GPU order (index = host GPU index)."""
    total_mib: int | None = None
    """MiB over all GPUs (default: the sum of ``vram_mib``)."""
    ctx_size: int | None = None
    """The context size the plan chose (replaces ``ctx-size: auto`` and the recipe's value)."""
    ram_mib: int = 0
    """MiB in system RAM (the plan's ``cpu`` device: weights kept on the CPU, host buffers)."""
    tensor_split: tuple[float, ...] = ()
    """Share of the model per device, in llama.cpp's device order (each RPC worker's devices in
    ``rpc:`` order first, then the host's GPUs the model uses: b11434's llama_prepare_model_devices
    puts RPC devices at the front); non-empty -> ``--tensor-split a,b,c``
    (replaces a recipe/host ``tensor-split``). Filled by the plan stage."""

    @property
    def total(self) -> int | None:
        if self.total_mib is not None:
            return self.total_mib
        return sum(self.vram_mib) if self.vram_mib else None


@dataclass(frozen=True)
class StatePaths:
    """Where the installed host lives at run time (the units and config point there)."""

    state: Path
    """HOMELAB_STATE as the service will see it."""
    host: str

    @property
    def host_dir(self) -> Path:
        return self.state / "hosts" / self.host

    @property
    def current(self) -> Path:
        """The deploy stage's ``current`` link to the active generation."""
        return self.host_dir / "current"

    @property
    def secrets_env(self) -> Path:
        """Secrets (API keys) for the service: mode 0600, outside every generation."""
        return self.host_dir / "secrets.env"

    @property
    def api_key_file(self) -> Path:
        """The API keys, one per line, for llama-server's ``--api-key-file`` (router mode, and every
        backend under upstream llama-swap): mode 0600, owned by the service user, beside secrets.env."""
        return self.host_dir / "api-keys"


@dataclass(frozen=True)
class RenderInputs:
    host: ResolvedHost
    server_binary: Path
    """The built ``llama-server`` (absolute)."""
    accepted_flags: AcceptedFlags | frozenset[str] | None
    """Long flags (no dashes) the pinned binary accepts: the build's ``flags.json`` (full
    :class:`AcceptedFlags`, which also checks values) or a plain name set; None = unknown, skip."""
    model_files: Mapping[str, tuple[Path, ...]]
    """Model ID -> weight files (absolute), the first one is passed with ``--model``."""
    paths: StatePaths
    homelab_executable: Path
    """The ``homelab`` command the supervisor unit runs (``ExecStart=<it> serve ...``)."""
    mmproj: Mapping[str, Path] = field(default_factory=dict)
    """Model ID -> multimodal projector file."""
    draft: Mapping[str, Path] = field(default_factory=dict)
    """Model ID -> its speculative draft model (or MTP head file), ``--spec-draft-model``."""
    model_bytes: Mapping[str, int] = field(default_factory=dict)
    """Model ID -> size of its weights in bytes (from the lock): sizes ``healthCheckTimeout``."""
    plan: Mapping[str, PlannedModel] | None = None
    plan_json: str | None = None
    """The plan stage's report, copied into the generation as ``plan.json``."""
    rpc_reserved_mib: Mapping[int, int] = field(default_factory=dict)
    """GPU index -> MiB the plan keeps free on this worker for head hosts' layers sent through
    its rpc-server (not available to the worker's own models)."""
    mtp_supported: Mapping[str, bool] = field(default_factory=dict)
    """Model ID -> the GGUF has MTP heads (and the build can use them)."""
    mtp_refused: Mapping[str, str] = field(default_factory=dict)
    """Model ID -> why its ``mtp:`` cannot take effect (render refuses it with this reason)."""
    build_number: int | None = None
    build_label: str = ""
    """How messages name the build: ``llama.cpp b11434 (commit abc1234)``."""
    llama_swap_binary: Path | None = None
    """Upstream ``llama-swap`` for ``runtime.kind: llama-swap``."""
    previous_ports: Mapping[str, int] = field(default_factory=dict)
    """Ports of the installed generation: a model keeps its port while it exists."""
    input_hashes: Mapping[str, object] = field(default_factory=dict)
    """sha256 of every input (host file, recipes, lock, patches, build key, homelab), for the
    manifest: a name -> hex digest, or a nested mapping of them."""
    peers: tuple[PeerLink, ...] = ()
    """Other hosts whose models this endpoint forwards (llama-swap ``peers:``), from
    :func:`homelab.inventory.multihost.load_related`."""
    rpc_workers: Mapping[str, str] = field(default_factory=dict)
    """RPC worker host name -> ``address:port`` of its rpc-server (``--rpc``), for every worker
    a model of this host names."""
    rpc_support: bool | None = None
    """The build has llama.cpp's RPC backend (GGML_RPC=ON); None = unknown (not checked)."""
    llama_cpp: Mapping[str, object] = field(default_factory=dict)
    """The pinned llama.cpp for the manifest: ``ref``, ``commit``, ``source``, ``repo``, ``patches``
    (the lock's ``llama_cpp``); the backend is the host's."""
    model_pins: Mapping[str, Sequence[Mapping[str, object]]] = field(default_factory=dict)
    """Model ID -> its pinned files from the lock (role, repo, revision, path, size, sha256), for
    the manifest: what the generation serves, by content."""

    @property
    def rpc_binary(self) -> Path:
        """The build's ``rpc-server`` for this host's ``rpc_server:`` unit: the build installs it
        beside ``server_binary`` (``bin/``)."""
        return self.server_binary.with_name("rpc-server")

    @property
    def build(self) -> str:
        if self.build_label:
            return self.build_label
        if isinstance(self.accepted_flags, AcceptedFlags) and self.accepted_flags.build:
            return self.accepted_flags.build
        if self.build_number is not None:
            return f"llama.cpp b{self.build_number} ({self.server_binary})"
        return str(self.server_binary)
