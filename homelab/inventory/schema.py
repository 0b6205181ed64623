"""The inventory file formats (contract): ``hosts/<name>.yaml`` and ``recipes/<name>.yaml``.

Strict pydantic v2 models: an unknown key or a wrong type is an error. The loader
(:mod:`homelab.inventory.loader`) turns pydantic's errors into messages with file, line and the
nearest valid key. JSON Schemas for editors are generated from these models (``schemas/``).

Flag dictionaries (``server``, ``profiles``) use llama-server's long flag names without the
leading dashes (``ctx-size``, ``cache-type-k``) and sampling parameter names as the OpenAI/llama.cpp
request body spells them (``temperature``, ``top_p``).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    field_validator,
    model_validator,
)

from ..address import is_any_address, split_host_port
from ..gpuarch import CUDA_ERA_MAJOR, cuda_min_for

FlagValue = Union[bool, int, float, str, None]
"""A flag's value: ``true`` for a switch, ``false``/``null`` to drop a flag set by the recipe."""

SHA256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="lower-case hex sha256")]
COMMIT = Annotated[str, Field(pattern=r"^[0-9a-f]{40}$", description="a full 40-hex git commit")]
NAME = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        max_length=96,
        description="letters, digits, '.', '_' and '-'; starts with a letter or digit",
    ),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------------------------
# Recipes


class HFFile(Strict):
    """A model on the Hugging Face Hub."""

    repo: str = Field(description="repository id, e.g. unsloth/Qwen3-0.6B-GGUF")
    file: str = Field(
        description="path of the GGUF inside the repo; for split models the first part "
        "(`name-00001-of-0000N.gguf`), the rest are found by name"
    )
    revision: str | None = Field(
        default=None, description="branch, tag or commit; the lock pins the commit (default main)"
    )
    sha256: SHA256 | None = Field(default=None, description="expected sha256 (else the lock's)")
    mmproj: str | None = Field(default=None, description="multimodal projector GGUF in the same repo")

    @field_validator("repo")
    @classmethod
    def _repo_id(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", v):
            raise ValueError(f"{v!r} is not a Hugging Face repo id like 'owner/name'")
        return v


class URLFile(Strict):
    """A GGUF at a plain http(s) URL, pinned by sha256."""

    url: str = Field(pattern=r"^https?://", description="http(s) URL of the GGUF")
    sha256: SHA256 | None = Field(default=None, description="expected sha256 (else the lock's)")


class LocalFile(Strict):
    """A GGUF already on the host's disk."""

    path: str = Field(description="absolute path, or relative to the inventory directory")
    sha256: SHA256 | None = Field(default=None, description="expected sha256 (else the lock's)")


class Source(Strict):
    """Where the weights come from: exactly one of ``hf``, ``url``, ``path``."""

    hf: HFFile | None = Field(default=None, description="a file in a Hugging Face model repo")
    url: URLFile | None = Field(default=None, description="a file at an http(s) URL")
    path: LocalFile | None = Field(default=None, description="a file on the host's disk")

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        given = [k for k in ("hf", "url", "path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"{type(self).__name__.lower()} needs exactly one of 'hf', 'url' or 'path'"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def kind(self) -> Literal["hf", "url", "path"]:
        return "hf" if self.hf else "url" if self.url else "path"


class MTP(Strict):
    """Multi-token prediction with the model's own MTP heads (GGUF nextn_predict_layers > 0)."""

    draft_n_max: int = Field(
        default=2, ge=1, le=16, alias="draft-n-max", description="tokens drafted per step (--spec-draft-n-max)"
    )
    draft_n_min: int | None = Field(
        default=None, ge=0, le=16, alias="draft-n-min", description="minimum draft length (--spec-draft-n-min)"
    )


class Draft(Source):
    """A draft model for speculative decoding, fetched, pinned and planned like the main model:
    a small model of the same vocabulary (``--spec-type draft-simple``) or a separate MTP head
    file (with ``mtp:``, ``--spec-type draft-mtp``). homelab passes it as ``--spec-draft-model``;
    where it runs follows llama.cpp's draft flags in ``server:`` (``spec-draft-device``,
    ``spec-draft-ngl``, ``cache-type-k-draft``/``cache-type-v-draft``)."""

    @model_validator(mode="after")
    def _no_projector(self) -> Draft:
        if self.hf is not None and self.hf.mmproj:
            raise ValueError("a draft model takes no mmproj (the projector belongs to the main model's source)")
        return self


Profile = dict[str, JsonValue]
"""Request parameters set for one profile ID (llama-swap ``setParamsByID``): any JSON the request
body takes, e.g. ``temperature: 0.6`` or ``chat_template_kwargs: {enable_thinking: false}``."""


class Recipe(Strict):
    """A shareable description of one model and how to serve it."""

    name: NAME = Field(description="the recipe's name; in recipes/ it must match the file name")
    description: str = Field(default="", description="free text for people")
    source: Source = Field(description="where the weights come from: exactly one of hf, url, path")
    server: dict[str, FlagValue] = Field(
        default_factory=dict,
        description="llama-server flags, long names without dashes; `ctx-size: auto` lets the plan choose",
    )
    mtp: MTP | None = Field(default=None, description="enable MTP speculative decoding")
    draft: Draft | None = Field(
        default=None,
        description="speculative decoding draft model (or separate MTP head file): exactly one of hf, url, path, "
        "like source; locked, fetched, planned and passed as --spec-draft-model",
    )
    profiles: dict[NAME, Profile] = Field(
        default_factory=dict, description="profile name -> request parameters; each becomes a model ID"
    )
    aliases: list[str] = Field(default_factory=list, description="extra names requests may use for the model")
    ttl: int | None = Field(default=None, ge=0, description="seconds idle before unload (0 = never)")
    prompt_cache: bool | None = Field(
        default=None,
        description="keep the model's slots (its KV cache) on disk across evictions, restored when it starts "
        "again (homelab's supervisor); default: on when ctx-size is at least 16384",
    )
    env: dict[str, str] = Field(default_factory=dict, description="environment variables for the backend process")
    tags: list[str] = Field(default_factory=list, description="free-form: chat, code, vision...")


# --------------------------------------------------------------------------------------------
# Hosts


class GPU(Strict):
    name: str = Field(description="a label for people and logs, e.g. RX 7900 XTX")
    vram_mib: int = Field(gt=0, description="total VRAM in MiB as the driver reports it")
    arch: str | None = Field(
        default=None,
        description="gfx target for hip (gfx1100), compute capability for cuda (86, 8.6 or sm_86); "
        "default: build for the GPUs present at build time",
    )


HIP_ARCH = re.compile(r"gfx[0-9a-z]+(?::[a-z+-]+)*")
"""A ROCm offload target: ``gfx1100``, ``gfx90a``, ``gfx942``, optionally with features (``:xnack-``)."""

_CUDA_ARCH = re.compile(
    r"(?:sm_|compute_)?(?P<major>\d{1,2}?)(?P<minor>\d)(?P<suffix>[af]?)|(?P<dmajor>\d{1,2})\.(?P<dminor>\d)"
)


def cuda_architecture(arch: str) -> str | None:
    """``86``, ``8.6``, ``sm_86`` -> ``86`` (the CMAKE_CUDA_ARCHITECTURES spelling); None if not one.

    Suffixes ``a``/``f`` (``sm_90a``, ``100f``) are kept. Numbers below 50 are refused: CUDA 12
    supports compute capability 5.0 and newer, so ``8`` or ``35`` is a typo, not a GPU.
    """
    m = _CUDA_ARCH.fullmatch(arch.strip())
    if not m:
        return None
    if m["dmajor"]:
        major, minor, suffix = m["dmajor"], m["dminor"], ""
    else:
        major, minor, suffix = m["major"], m["minor"], m["suffix"]
    if not major or int(major) < 5:
        return None
    return f"{int(major)}{minor}{suffix}"


def cuda_floor_problem(arch: str) -> str | None:
    """Why a valid compute capability cannot be built by a CUDA 13 toolkit, or None."""
    spelled = cuda_architecture(arch)
    if spelled is None:
        return None
    # the toolkit of this llama.cpp's era; the build stage checks the host's own nvcc again
    number, lowest = int(re.match(r"\d+", spelled)[0]), cuda_min_for(CUDA_ERA_MAJOR)  # type: ignore[index]  # spelled starts with digits
    if number >= lowest:
        return None
    return (
        f"{arch!r} (compute capability {number / 10:.1f}) cannot be built with CUDA {CUDA_ERA_MAJOR} "
        f"(lowest: {lowest / 10:.1f}, Turing); use backend: vulkan for this card"
    )


class PullRequestPatch(Strict):
    """An upstream llama.cpp pull request, downloaded as .patch and pinned by sha256 in the lock."""

    pr: int = Field(gt=0, description="pull request number")
    sha256: SHA256 | None = Field(default=None, description="expected sha256 of the .patch (else the lock's)")
    repo: str | None = Field(default=None, description="GitHub owner/name (default: from llama_cpp.repo)")


PatchRef = Union[str, PullRequestPatch]
"""A path under ``patches/`` (a file, or a folder with a ``series`` file), or an upstream PR."""


class LlamaCpp(Strict):
    repo: str = Field(default="https://github.com/ggml-org/llama.cpp", description="git URL")
    ref: str = Field(default="b11434", description="tag, branch or commit; the lock pins the commit")
    tarball: str | None = Field(default=None, description="release tarball URL instead of git (pin sha256)")
    tarball_sha256: SHA256 | None = Field(default=None, description="sha256 of the tarball")
    path: str | None = Field(default=None, description="a local llama.cpp source directory instead of git")
    build_number: int | None = Field(
        default=None, description="LLAMA_BUILD_NUMBER when it cannot be read from the ref (tarball, path)"
    )
    patches: list[PatchRef] = Field(
        default_factory=list,
        description="applied in order: paths under patches/ (a file, or a folder with a series file), "
        "or {pr: N} for an upstream pull request",
    )
    cmake: dict[str, Union[str, int, bool]] = Field(default_factory=dict, description="extra -D options")
    targets: list[str] = Field(default_factory=list, description="extra build targets (llama-fit-params, rpc-server)")
    jobs: int | None = Field(default=None, ge=1, description="parallel compile jobs (default: CPU count)")


class Runtime(Strict):
    kind: Literal["supervisor", "llama-swap", "router"] = Field(
        default="supervisor",
        description="what serves the models: homelab's supervisor, upstream llama-swap, or llama.cpp router mode",
    )
    listen: str = Field(
        default="127.0.0.1:12434", pattern=r"^[^\s:]+:\d{1,5}$", description="HOST:PORT of the OpenAI endpoint"
    )
    service: Literal["user", "system", "none", "auto"] = Field(
        default="auto",
        description="systemd unit kind: user, system, none (a detached process), auto (user where a systemd "
        "user manager runs, else none)",
    )
    start_port: int = Field(default=10001, ge=1024, le=65000, description="first backend port")
    ttl: int | None = Field(default=None, ge=0, description="default idle seconds before unload")
    health_check_timeout: int | None = Field(
        default=None, ge=15, description="seconds a backend may take to become healthy (default 120)"
    )
    api_key_env: str | None = Field(default=None, description="environment variable holding API keys (comma separated)")
    allow_no_key: bool = Field(
        default=False,
        description="permit a listen address beyond loopback without api_key_env: anyone who reaches the "
        "port can use every model (only behind a firewall or a proxy that authenticates)",
    )
    user: str | None = Field(default=None, description="service user for service: system")
    preload: list[str] = Field(default_factory=list, description="model IDs started at boot")
    keep_generations: int = Field(default=5, ge=2, description="installed generations kept for rollback")
    verify: Literal["health", "models", "completion"] = Field(
        default="completion",
        description="what a deploy checks after activation (a failure rolls back): health = GET /health "
        "answers 200; models = also GET /v1/models lists every configured model; completion = also a "
        "one-token completion to every preload model and every model whose definition changed (loads "
        "it: catches a bad flag or file)",
    )


HOST_PORT = r"^[^\s:]+:\d{1,5}$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Peer(Strict):
    """Another host of the inventory whose models this host's endpoint also serves (llama-swap
    ``peers``): requests for ``<peer>/<model>`` (or an unambiguous bare name) are forwarded there."""

    host: NAME = Field(description="the peer's host name (hosts/<name>.yaml in this inventory)")
    api_key_env: str | None = Field(
        default=None,
        pattern=ENV_NAME,
        description="environment variable (in this host's service environment) holding the API key the peer "
        "expects; default: the peer's own runtime.api_key_env",
    )
    models: list[str] | None = Field(
        default=None, description="which of the peer's model IDs to expose (default: all of them)"
    )


class RpcServer(Strict):
    """This host runs llama.cpp's ``rpc-server`` so a head host can put model layers on its devices.

    The RPC protocol has no authentication and no encryption: bind it to a LAN address that only
    your own machines reach, never to every interface unless ``allow_any_address`` says so."""

    listen: str = Field(pattern=HOST_PORT, description="LAN_ADDRESS:PORT rpc-server binds, e.g. 192.168.1.21:50052")
    allow_any_address: bool = Field(
        default=False, description="permit 0.0.0.0/:: in listen (the protocol is unauthenticated: think twice)"
    )
    threads: int | None = Field(default=None, ge=1, description="CPU threads for a CPU worker (-t)")
    cache: bool = Field(default=True, description="keep received tensors in a local file cache (-c)")
    devices: list[str] | None = Field(
        default=None, description="which of the worker's devices to offer (-d), default: all"
    )

    @model_validator(mode="after")
    def _lan_only(self) -> RpcServer:
        address, _port = split_host_port(self.listen)
        if is_any_address(address) and not self.allow_any_address:
            raise ValueError(
                f"rpc_server.listen {self.listen!r} binds every interface, and llama.cpp's RPC protocol is "
                "unauthenticated: use this host's LAN address (e.g. 192.168.1.21:50052), or set "
                "allow_any_address: true if a firewall guards the port"
            )
        return self


class HostModel(Strict):
    """One model on a host: a recipe, optionally overridden."""

    recipe: str = Field(description="recipe name in recipes/, a path, or an http(s) URL")
    sha256: SHA256 | None = Field(default=None, description="required when recipe is a URL")
    id: NAME | None = Field(default=None, description="model ID (default: the recipe's name)")
    profiles: list[NAME] | None = Field(default=None, description="which recipe profiles to expose (default: all)")
    server: dict[str, FlagValue] = Field(default_factory=dict, description="overrides recipe flags")
    mtp: MTP | Literal[False] | None = Field(
        default=None, description="MTP settings replacing the recipe's; `false` turns the recipe's MTP off"
    )
    draft: Draft | Literal[False] | None = Field(
        default=None, description="a draft model replacing the recipe's; `false` turns the recipe's draft off"
    )
    aliases: list[str] = Field(default_factory=list, description="extra names, added to the recipe's")
    ttl: int | None = Field(default=None, ge=0, description="overrides the recipe's ttl")
    prompt_cache: bool | None = Field(default=None, description="overrides the recipe's prompt_cache")
    env: dict[str, str] = Field(default_factory=dict, description="merged over the recipe's env")
    gpus: list[int] | None = Field(
        default=None, description="indices into the host's gpus this model may use (default: all)"
    )
    port: int | None = Field(default=None, ge=1024, le=65535, description="pinned backend port")
    preload: bool = Field(default=False, description="start this model when the service starts")
    rpc: list[NAME] = Field(
        default_factory=list,
        description="worker hosts (with rpc_server) whose devices take part of this model's layers (--rpc)",
    )


class Host(Strict):
    name: NAME = Field(description="the host's name; must match the file name hosts/<name>.yaml")
    description: str = Field(default="", description="free text for people")
    address: str = Field(default="local", description="'local' or ssh://user@host[:port]")
    backend: Literal["hip", "cuda", "vulkan", "cpu"] = Field(
        description="llama.cpp backend: hip (AMD ROCm), cuda (NVIDIA), vulkan, cpu"
    )
    gpus: list[GPU] = Field(default_factory=list, description="the GPUs, in device order (index 0 first)")
    vram_budget: float = Field(default=0.93, gt=0, le=1, description="share of each GPU the plan may fill")
    ram_mib: int | None = Field(default=None, gt=0, description="system RAM, for CPU backends and offload")
    llama_cpp: LlamaCpp = Field(default_factory=LlamaCpp, description="which llama.cpp to build, and how")
    runtime: Runtime = Field(default_factory=Runtime, description="how the models are served")
    env: dict[str, str] = Field(default_factory=dict, description="environment for every backend")
    models: list[HostModel] = Field(default_factory=list, description="the models this host serves")
    sets: dict[NAME, str] = Field(
        default_factory=dict, description="models allowed to be resident together: 'a & b', 'a | b'"
    )
    lan_address: str | None = Field(
        default=None,
        description="the name or IP other hosts of the inventory use to reach this one (peers, RPC); default: "
        "the host of an ssh:// address, else runtime.listen's address",
    )
    peers: list[Union[NAME, Peer]] = Field(
        default_factory=list, description="other hosts whose models this endpoint also serves: names or {host: ...}"
    )
    rpc_server: RpcServer | None = Field(
        default=None, description="run llama.cpp's rpc-server here, as a worker for models split across hosts"
    )

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if v != "local" and not re.fullmatch(r"ssh://([^@/\s]+@)?[^:/\s]+(:\d+)?", v):
            raise ValueError(f"{v!r} is neither 'local' nor ssh://user@host[:port]")
        if re.match(r"ssh://(?:[^@/\s]+@)?-|ssh://-", v):
            # ssh would read a user or host starting with '-' as an option (-oProxyCommand=...)
            raise ValueError(f"{v!r}: a user or host name cannot start with '-'")
        return v
