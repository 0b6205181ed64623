"""A generation's unit files (pure): parsed, which one is the main unit (the endpoint), which
are side units beside it (an RPC worker's rpc-server), and whether a side unit changed."""

from __future__ import annotations

import getpass
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".target")


@dataclass(frozen=True)
class Unit:
    name: str
    text: str

    def values(self, key: str) -> list[str]:
        """Every value of ``key=`` in the unit (any section), continuation lines joined."""
        found = []
        logical = self.text.replace("\\\n", " ")
        for line in logical.splitlines():
            line = line.strip()
            if line.startswith((";", "#")) or "=" not in line:
                continue
            name, _, value = line.partition("=")
            if name.strip() == key:
                found.append(value.strip())
        return found


def units_of(files: dict[str, bytes]) -> list[Unit]:
    """Unit files of a generation (anywhere in it; installed flat by file name)."""
    return [
        Unit(Path(name).name, data.decode()) for name, data in sorted(files.items()) if name.endswith(UNIT_SUFFIXES)
    ]


def rpc_unit_name(host: str) -> str:
    """The rpc-server unit of a host with ``rpc_server:`` (the render stage's contract)."""
    return f"homelab-rpc-{host}.service"


def main_unit(units: list[Unit], host: str) -> Unit | None:
    """The unit serving the endpoint: ``homelab-<host>.service`` (else the one service that is not
    the rpc-server unit); None for an RPC worker that renders only its rpc-server unit."""
    services = [u for u in units if u.name.endswith(".service") and u.name != rpc_unit_name(host)]
    for unit in services:
        if unit.name == f"homelab-{host}.service":
            return unit
    return services[0] if services else None


def side_units(units: list[Unit], host: str) -> list[Unit]:
    """Every ``.service`` unit of a generation besides the main one (the rpc-server unit)."""
    main = main_unit(units, host)
    return [u for u in units if u.name.endswith(".service") and (main is None or u.name != main.name)]


def side_unit_files(host: str, *generations: Mapping[str, bytes] | None) -> set[str]:
    """Paths (inside the generations) of side unit files: the main unit's action ignores them."""
    found: set[str] = set()
    for files in generations:
        if not files:
            continue
        sides = {u.name for u in side_units(units_of(dict(files)), host)}
        found |= {name for name in files if Path(name).name in sides}
    return found


def unit_changed(unit: Unit, old: Mapping[str, bytes] | None, new: Mapping[str, bytes]) -> bool:
    """Whether a side unit must restart: it is new, its text changed, or a file of the generation
    it reads through ``EnvironmentFile=`` changed."""
    if old is None:
        return True
    before = {u.name: u for u in units_of(dict(old))}.get(unit.name)
    if before is None or before.text != unit.text:
        return True
    read = {Path(expand_specifiers(v.lstrip("-"))).name for v in unit.values("EnvironmentFile")}
    return any(old.get(name) != new.get(name) for name in set(old) | set(new) if Path(name).name in read)


def expand_specifiers(value: str) -> str:
    home = str(Path.home())
    return value.replace("%%", "\0").replace("%h", home).replace("%u", getpass.getuser()).replace("\0", "%")
