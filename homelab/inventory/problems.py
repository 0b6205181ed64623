"""One inventory problem, said the way a person fixes it: ``file:line: key.path: what and how``."""

from __future__ import annotations

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
