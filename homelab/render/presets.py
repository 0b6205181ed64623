"""llama.cpp router-mode presets (``llama-server --models-preset presets.ini``).

``[*]`` holds what every model shares (the same flags the llama-swap ``common`` macro holds,
plus the router's ``stop-timeout``), and one ``[<model id>]`` section per model holds its file,
aliases and remaining flags. Keys are llama-server's long flag names without dashes; llama-server
refuses the whole file on one unknown key, so each key is checked against the pinned binary
here. Router mode has no per-model environment: GPU pinning uses ``device`` (``CUDA0``...).
Profiles (setParamsByID) have no router equivalent and are left out; a model's own ``env:``
cannot be applied either (a comment in its section says so), while a host-wide HSA override goes
into the unit's environment.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..gpuarch import DEVICE_PREFIX
from ..inventory.schema import FlagValue
from .backends import Backend, check_accepted
from .errors import RenderError
from .formats import ini_value
from .inputs import RenderInputs
from .llamaswap import common_flags, own_flags
from .templating import render

PRESET_ONLY_KEYS = frozenset({"load-on-startup", "stop-timeout", "dedup-cache-models"})
"""Router options that exist only in preset files (not in ``--help``)."""

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")

STOP_TIMEOUT_S = 10
"""Seconds a router child gets to exit before it is killed (like llama-swap's unloadTimeout)."""


def _section(name: str, items: Sequence[tuple[str, FlagValue]], where: str) -> dict[str, object]:
    if not name or "]" in name or "\n" in name:
        raise RenderError(f"{where}: {name!r} cannot be a preset section name")
    for key, _ in items:
        if not _KEY.fullmatch(key):
            raise RenderError(f"{where}: {key!r} cannot be a preset key (letters, digits, '_', '.', '-')")
    return {"name": name, "items": [(key, ini_value(value, where=f"{where} {key}")) for key, value in items]}


def render_presets(inputs: RenderInputs, backends: Sequence[Backend]) -> str:
    backend_kind = inputs.host.host.backend
    shared = common_flags(backends)
    sections = []
    for b in backends:
        items: list[tuple[str, FlagValue]] = [("model", b.model_file)]
        flags = dict(b.flags)
        if "mmproj" in flags:
            items.append(("mmproj", flags["mmproj"]))
        if b.aliases:
            for alias in b.aliases:
                if "," in alias:
                    raise RenderError(f"model {b.id}: alias {alias!r} contains ',', which router mode splits on")
            items.append(("alias", ",".join(b.aliases)))
        if b.model.gpus is not None and backend_kind in DEVICE_PREFIX:
            items.append(("device", ",".join(f"{DEVICE_PREFIX[backend_kind]}{i}" for i in b.model.gpus)))
        items += [(n, v) for n, v in own_flags(b, shared) if n != "mmproj"]
        if b.preload:
            items.append(("load-on-startup", True))
        check_accepted(inputs, b.model, dict(items), extra_ok=PRESET_ONLY_KEYS)
        section = _section(b.id, items, f"presets.ini [{b.id}]")
        # router children share the router's environment: say what a per-model env loses
        dropped = sorted(b.model.env)
        section["notes"] = [f"env not applied in router mode: {', '.join(dropped)}"] if dropped else []
        sections.append(section)
    defaults = [*shared, ("stop-timeout", STOP_TIMEOUT_S)]
    return render(
        "presets.ini.j2",
        host=inputs.host.name,
        host_file=inputs.host.host_file.name,
        defaults=_section("*", defaults, "presets.ini [*]"),
        sections=sections,
        build=inputs.build,
    )
