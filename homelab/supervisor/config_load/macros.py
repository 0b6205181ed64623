"""llama-swap's macros: ``${name}`` text substitution with definition order and typed values.

A macro may use only the macros defined before it. Values are scalars; where a whole value is
``${name}`` in structured data (metadata, filter parameters) it takes the macro's type, as
llama-swap does. ``${PORT}`` and ``${PID}`` are left in place: the port is allocated after the
macros, ``${PID}`` is filled in by the process layer when it runs ``cmdStop``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from ...suggest import closest
from .values import Value

MACRO_REF = re.compile(r"\$\{([a-zA-Z0-9_-]+)\}")
MACRO_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,63}$")
RESERVED_MACROS = ("PORT", "MODEL_ID", "PID")


Scalar = str | int | float | bool


@dataclass(frozen=True)
class Macro:
    name: str
    value: Scalar
    at: Value


def read_macros(section: Value) -> list[Macro]:
    macros: list[Macro] = []
    for name, (key, value) in section.entries("a mapping of macro names to values").items():
        if not MACRO_NAME.match(name):
            raise key.error("macro names may use only letters, digits, '_' and '-' (at most 63 characters)")
        if name in RESERVED_MACROS:
            raise key.error(
                f"{name} is reserved (PORT, MODEL_ID and PID are filled in by the supervisor)",
                "rename the macro",
            )
        raw = value.python() if isinstance(value.node, yaml.ScalarNode) and not value.is_null else None
        if not isinstance(raw, (str, int, float, bool)):
            raise value.error("a macro must be a string, number or boolean")
        if isinstance(raw, str):
            if len(raw) >= 1024:
                raise value.error("a macro value must be shorter than 1024 characters")
            if f"${{{name}}}" in raw:
                raise value.error(f"macro {name!r} refers to itself")
        macros.append(Macro(name, raw, value))
    return macros


def macro_text(value: Scalar) -> str:
    """A macro value as text, the way llama-swap (Go's %v) writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return str(value)


def resolve_macros(ordered: list[Macro]) -> dict[str, Scalar]:
    """Each macro's value with the macros before it substituted; later or unknown ones are errors.

    ``${PORT}`` (and ``${PID}``) are left for later: the port is allocated after macros.
    """
    resolved: dict[str, Scalar] = {}
    defined_later = {macro.name: macro for macro in ordered}
    for macro in ordered:
        value = macro.value
        if isinstance(value, str):

            def replace(match: re.Match[str], macro: Macro = macro) -> str:
                name = match.group(1)
                if name in resolved:
                    return macro_text(resolved[name])
                if name in ("PORT", "PID"):
                    return match.group(0)
                if name in defined_later:
                    raise macro.at.error(
                        f"macro {macro.name!r} uses ${{{name}}}, which is defined after it",
                        f"move {name!r} above {macro.name!r} (a macro may use only macros defined before it)",
                    )
                raise macro.at.error(
                    f"macro {macro.name!r} uses ${{{name}}}, which is not defined",
                    suggest_name(name, resolved),
                )

            value = MACRO_REF.sub(replace, value)
        resolved[macro.name] = value
    return resolved


def suggest_name(name: str, known: Iterable[str]) -> str:
    known = list(known)
    near = closest(name, known)
    if near:
        return f"did you mean ${{{near}}}?"
    return f"define it under macros (defined: {', '.join(known) or 'none'})"


def substitute(text: str, macros: Mapping[str, Scalar]) -> str:
    return MACRO_REF.sub(lambda m: macro_text(macros[m.group(1)]) if m.group(1) in macros else m.group(0), text)


def substitute_typed(value: Any, macros: Mapping[str, Scalar]) -> Any:
    """Substitute in nested data; a string that is exactly ``${name}`` takes the macro's type."""
    if isinstance(value, str):
        whole = MACRO_REF.fullmatch(value)
        if whole and whole.group(1) in macros:
            return macros[whole.group(1)]
        return substitute(value, macros)
    if isinstance(value, dict):
        return {substitute(str(k), macros): substitute_typed(v, macros) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_typed(v, macros) for v in value]
    return value


def leftover_macros(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield from (m.group(1) for m in MACRO_REF.finditer(value))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from leftover_macros(str(key))
            yield from leftover_macros(item)
    elif isinstance(value, list):
        for item in value:
            yield from leftover_macros(item)
