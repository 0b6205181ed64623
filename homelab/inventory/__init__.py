"""The inventory: host and recipe files, validated strictly, merged into :class:`ResolvedHost`."""

from .checks import validate_inventory
from .loader import (
    InventoryError,
    check_recipe_file,
    host_path,
    list_hosts,
    list_recipes,
    load_host,
    load_host_file,
    load_recipe,
)
from .problems import Problem
from .resolved import ResolvedHost, ResolvedModel
from .schema import Host, HostModel, Recipe

__all__ = [
    "Host",
    "HostModel",
    "InventoryError",
    "Problem",
    "Recipe",
    "ResolvedHost",
    "ResolvedModel",
    "check_recipe_file",
    "host_path",
    "list_hosts",
    "list_recipes",
    "load_host",
    "load_host_file",
    "load_recipe",
    "validate_inventory",
]
