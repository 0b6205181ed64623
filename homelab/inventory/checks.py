"""Check a whole inventory (``homelab validate``): every host and recipe file, and the other
hosts each host names (peers, RPC workers), with all problems raised together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .loader import check_recipe_file, load_host_file, read_doc
from .multihost import related_problems
from .problems import InventoryError, Problem
from .sourcemap import display_name


@dataclass(frozen=True)
class ValidationReport:
    hosts: tuple[str, ...]
    recipes: tuple[str, ...]
    warnings: tuple[Problem, ...] = ()
    """Likely mistakes that do not stop a deploy (printed, exit status 0)."""


def validate_inventory(inventory: str | Path, paths: Sequence[str | Path] = ()) -> ValidationReport:
    """Validate ``paths`` (host or recipe files), or every host and recipe of the inventory.

    All problems of all files are raised together.
    """
    inventory = Path(inventory)
    problems: list[Problem] = []
    warnings: list[Problem] = []
    hosts: list[str] = []
    recipes: list[str] = []
    if not paths:
        files = sorted((inventory / "hosts").glob("*.yaml")) + sorted((inventory / "recipes").glob("*.yaml"))
        if not files:
            raise InventoryError(f"{inventory} has no hosts/*.yaml or recipes/*.yaml to validate")
    else:
        files = [Path(p) for p in paths]
    for file in files:
        try:
            if file.is_dir():
                report = validate_inventory(file)
                hosts.extend(report.hosts)
                recipes.extend(report.recipes)
                warnings.extend(report.warnings)
            elif file_kind(file) == "host":
                # a host file inside an inventory's hosts/ resolves recipes from that inventory
                host_inventory = file.parent.parent if file.parent.name == "hosts" else inventory
                host = load_host_file(file, host_inventory)
                hosts.append(host.name)
                # peers and RPC workers: the other hosts it names, from the same inventory
                found, warned = related_problems(host)
                problems.extend(found)
                warnings.extend(warned)
            else:
                recipes.append(check_recipe_file(file).name)
        except InventoryError as exc:
            problems.extend(exc.problems or [Problem(display_name(file), None, (), str(exc))])
    if problems:
        raise InventoryError(problems)
    return ValidationReport(tuple(hosts), tuple(recipes), tuple(dict.fromkeys(warnings)))


def file_kind(path: Path) -> Literal["host", "recipe"]:
    if path.parent.name == "hosts":
        return "host"
    if path.parent.name == "recipes":
        return "recipe"
    try:
        doc = read_doc(path)
    except InventoryError:
        return "host"  # the host loader reports the reading problem
    return "recipe" if "source" in doc.data and "backend" not in doc.data else "host"
