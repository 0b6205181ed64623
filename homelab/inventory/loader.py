"""Load and validate the inventory (minimal first cut; see the inventory issue for the full one)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from ..errors import HomelabError
from .resolved import ResolvedHost, ResolvedModel
from .schema import Host, Recipe


class InventoryError(HomelabError):
    pass


def _read(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InventoryError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise InventoryError(f"{path}: expected a mapping at the top level")
    return data


def list_hosts(inventory: str | Path) -> list[str]:
    return sorted(p.stem for p in (Path(inventory) / "hosts").glob("*.yaml"))


def load_recipe(inventory: Path, ref: str) -> tuple[Recipe, Path]:
    path = inventory / "recipes" / f"{ref}.yaml"
    try:
        return Recipe.model_validate(_read(path)), path
    except ValidationError as exc:
        raise InventoryError(f"{path}: {exc}") from None


def load_host(name: str, inventory: str | Path) -> ResolvedHost:
    inventory = Path(inventory)
    path = inventory / "hosts" / f"{name}.yaml"
    try:
        host = Host.model_validate(_read(path))
    except ValidationError as exc:
        raise InventoryError(f"{path}: {exc}") from None
    models = []
    for entry in host.models:
        recipe, recipe_file = load_recipe(inventory, entry.recipe)
        server = {**recipe.server, **entry.server}
        server = {k: v for k, v in server.items() if v is not None and v is not False}
        profiles = {
            k: v for k, v in recipe.profiles.items() if entry.profiles is None or k in entry.profiles
        }
        models.append(
            ResolvedModel(
                id=entry.id or recipe.name,
                recipe=recipe,
                recipe_file=recipe_file,
                source=recipe.source,
                server=server,
                profiles=profiles,
                aliases=tuple(recipe.aliases) + tuple(entry.aliases),
                mtp=entry.mtp or recipe.mtp,
                ttl=entry.ttl if entry.ttl is not None else recipe.ttl,
                env={**recipe.env, **entry.env},
                gpus=tuple(entry.gpus) if entry.gpus is not None else None,
                port=entry.port,
                preload=entry.preload,
            )
        )
    return ResolvedHost(
        host=host, host_file=path, inventory=inventory, models=tuple(models), sets=dict(host.sets)
    )
