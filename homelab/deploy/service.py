"""A host's service, whichever mode runs it: the verbs every mode offers and the errors they raise.

Every mode offers the same verbs: ``apply(generation, action)`` (install what the generation
needs and start/restart/reload), ``stop()``, ``status()``, ``alive()`` and ``logs(n)``.

A generation has a main unit (``homelab-<host>.service``: the endpoint; ``action`` is for it) and
may have side units beside it, such as ``homelab-rpc-<host>.service`` (llama.cpp's rpc-server on
an RPC worker host; a worker with no models has only that one). A side unit is enabled and
started with the generation, restarted only when its own unit file or an ``EnvironmentFile`` of
the generation it reads changed (rpc-server cannot reload, and a restart drops the head's
connection), and started again when it is found dead. ``alive()`` means every unit runs.

The modes: :mod:`homelab.deploy.systemd` (``user``, ``system``), :mod:`homelab.deploy.detached`
(``none``); :mod:`homelab.deploy.service_mode` picks one.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import HomelabError
from .generations import Generation
from .paths import HostPaths
from .units import UNIT_SUFFIXES, Unit, main_unit, side_units, units_of


class ServiceError(HomelabError):
    pass


def say(message: str) -> None:
    print(message, flush=True)


class Service:
    mode = "?"

    def __init__(self, paths: HostPaths) -> None:
        self.paths = paths
        self._units_cache: tuple[Path | None, tuple[str | None, list[str]]] = (None, (None, []))

    @property
    def main_name(self) -> str:
        return f"homelab-{self.paths.host}.service"

    def current_units(self) -> tuple[str | None, list[str]]:
        """Main and side unit names of the current generation (main: None for an RPC worker with
        only its rpc-server unit); with no current generation (or no unit in it), the main unit
        by its usual name."""
        try:
            target = self.paths.current.resolve(strict=True)
        except OSError:
            return self.main_name, []
        if self._units_cache[0] != target:  # read once per generation: alive() is polled
            units = [Unit(p.name, p.read_text()) for p in sorted(target.rglob("*")) if p.name.endswith(UNIT_SUFFIXES)]
            main_u = main_unit(units, self.paths.host)
            sides = [u.name for u in side_units(units, self.paths.host)]
            self._units_cache = (target, (main_u.name if main_u else None, sides))
        main, sides = self._units_cache[1]
        if main is None and not sides:
            return self.main_name, []
        return main, list(sides)

    def unit_names(self) -> list[str]:
        """Every unit of the current generation, the main one first: what stop/status/logs cover."""
        main, sides = self.current_units()
        return ([main] if main else []) + sides

    def apply(self, generation: Generation, previous: Generation | None, action: str) -> list[str]:
        """Install and (re)start what ``generation`` needs; returns one line per side unit that
        was (re)started. ``action`` is for the main unit (``ensure``: start what is not running)."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def unit_alive(self, unit: str) -> bool:
        """Whether one unit (by file name) runs."""
        raise NotImplementedError

    def status(self) -> str:
        raise NotImplementedError

    def logs(self, lines: int = 30) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        return self.mode


def generation_units(generation: Generation, host: str, mode: str) -> tuple[dict[str, bytes], Unit | None, list[Unit]]:
    files = generation.files()
    units = units_of(files)
    main, sides = main_unit(units, host), side_units(units, host)
    if main is None and not sides:
        raise ServiceError(
            f"generation {generation.number} of {host} has no .service unit: the render stage must "
            f"produce one for service: {mode}"
        )
    return files, main, sides
