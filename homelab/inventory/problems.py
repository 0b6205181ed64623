"""One inventory problem, said the way a person fixes it: ``file:line: key.path: what and how``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import HomelabError


def format_path(path: Sequence[str | int]) -> str:
    """``("models", 0, "server")`` -> ``models[0].server``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    path: tuple[str | int, ...]
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        key = format_path(self.path)
        return f"{where}: {key}: {self.message}" if key else f"{where}: {self.message}"

    def sort_key(self) -> tuple[str, int, str]:
        return (self.file, self.line or 0, self.message)


class InventoryError(HomelabError):
    """The inventory is invalid. ``problems`` lists every problem found, one per line of the message."""

    def __init__(self, problems: str | Problem | Iterable[Problem]) -> None:
        if isinstance(problems, str):
            self.problems: tuple[Problem, ...] = ()
            super().__init__(problems)
            return
        if isinstance(problems, Problem):
            problems = [problems]
        unique = list(dict.fromkeys(problems))
        self.problems = tuple(sorted(unique, key=Problem.sort_key))
        super().__init__("\n".join(str(p) for p in self.problems))


def did_you_mean(
    word: str, choices: Iterable[str], *, listing: str = "valid keys", fallback: str = ""
) -> str:
    """``; did you mean 'x'?`` for a near miss, else ``; <listing>: a, b, c`` for a short list,
    else ``fallback``."""
    choices = sorted(set(choices))
    near = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not near:
        # a typo in the separator (ctx_size for ctx-size) or the case is still a near miss
        normal = {c.replace("_", "-").lower(): c for c in choices}
        hit = normal.get(word.replace("_", "-").lower().lstrip("-"))
        near = [hit] if hit else []
    if near:
        return f"; did you mean {near[0]!r}?"
    if not choices:
        return fallback
    if len(choices) > 25:
        return fallback
    return f"; {listing}: " + ", ".join(choices)
