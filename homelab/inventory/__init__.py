"""The inventory: host and recipe files, validated strictly, merged into :class:`ResolvedHost`."""

from .loader import InventoryError, list_hosts, load_host, load_recipe
from .resolved import ResolvedHost, ResolvedModel
from .schema import Host, HostModel, Recipe

__all__ = [
    "Host",
    "HostModel",
    "InventoryError",
    "Recipe",
    "ResolvedHost",
    "ResolvedModel",
    "list_hosts",
    "load_host",
    "load_recipe",
]
