"""The validated, merged view of one host that every later stage consumes.

The loader produces these; nothing downstream reads YAML. A :class:`ResolvedModel` is a host
model with its recipe merged in (host values override recipe values; a flag set to ``null`` or
``false`` on the host removes the recipe's flag).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .schema import MTP, Draft, FlagValue, Host, Profile, Recipe, Source


@dataclass(frozen=True)
class ResolvedModel:
    id: str
    recipe: Recipe
    recipe_file: Path | None
    """Where the recipe came from (None for an inline recipe); a URL recipe's cached copy."""
    source: Source
    server: dict[str, FlagValue]
    """Merged llama-server flags, long names without dashes, recipe order then host additions."""
    profiles: dict[str, Profile]
    """Selected profiles: profile name -> request parameters."""
    aliases: tuple[str, ...]
    mtp: MTP | None
    ttl: int | None
    env: dict[str, str]
    gpus: tuple[int, ...] | None
    port: int | None
    preload: bool
    recipe_ref: str = ""
    """``recipe:`` as the host file wrote it: a name, a path or a URL."""
    rpc_workers: tuple[str, ...] = ()
    """Hosts whose ``rpc-server`` takes part of this model's layers (``--rpc``), in order."""
    prompt_cache: bool | None = None
    """Keep the slots across evictions (supervisor ``x-promptCache``); None: its default."""
    draft: Draft | None = None
    """The speculative draft model (or MTP head file): the host entry's, else the recipe's."""

    def profile_ids(self) -> dict[str, Profile]:
        """Model IDs for llama-swap ``setParamsByID``: ``<id>:<profile>`` -> parameters."""
        return {f"{self.id}:{name}": params for name, params in self.profiles.items()}

    def names(self) -> list[str]:
        """Every name a request may use for this model: its ID, profile IDs, aliases."""
        return [self.id, *self.profile_ids(), *self.aliases]

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``homelab show`` (YAML) and for hashing into doit's ``config_changed``."""
        return {
            "id": self.id,
            "names": self.names(),
            "recipe": {
                "name": self.recipe.name,
                "ref": self.recipe_ref or self.recipe.name,
                "file": str(self.recipe_file) if self.recipe_file else None,
                "description": self.recipe.description,
                "tags": list(self.recipe.tags),
            },
            "source": self.source.model_dump(by_alias=True, exclude_none=True),
            "server": dict(self.server),
            "mtp": self.mtp.model_dump(by_alias=True, exclude_none=True) if self.mtp else None,
            "profiles": {name: dict(params) for name, params in self.profiles.items()},
            "aliases": list(self.aliases),
            "ttl": self.ttl,
            "env": dict(self.env),
            "gpus": list(self.gpus) if self.gpus is not None else None,
            "port": self.port,
            "preload": self.preload,
            "rpc": list(self.rpc_workers),
            "prompt_cache": self.prompt_cache,
            "draft": self.draft.model_dump(by_alias=True, exclude_none=True) if self.draft else None,
        }


@dataclass(frozen=True)
class ResolvedHost:
    host: Host
    host_file: Path
    inventory: Path
    models: tuple[ResolvedModel, ...]
    sets: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def lock_file(self) -> Path:
        """The lockfile lives beside the host file (committed by the user, like Cargo.lock)."""
        return self.host_file.with_suffix(".lock.json")

    @property
    def patches_dir(self) -> Path:
        return self.inventory / "patches"

    def as_dict(self) -> dict[str, Any]:
        """The whole host with every recipe merged in, as plain data (``homelab show``)."""
        data = self.host.model_dump(by_alias=True, exclude={"models", "sets"})
        data["file"] = str(self.host_file)
        data["models"] = [m.as_dict() for m in self.models]
        data["sets"] = dict(self.sets)
        return data

    @property
    def peer_names(self) -> tuple[str, ...]:
        return tuple(p if isinstance(p, str) else p.host for p in self.host.peers)

    @property
    def depends_on(self) -> tuple[str, ...]:
        """Hosts that must be deployed before this one: the RPC workers its models use."""
        return tuple(dict.fromkeys(w for m in self.models for w in m.rpc_workers))

    def model(self, model_id: str) -> ResolvedModel:
        for m in self.models:
            if m.id == model_id:
                return m
        raise KeyError(model_id)
