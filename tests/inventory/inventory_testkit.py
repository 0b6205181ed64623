"""The inventory tests' toolkit: a private copy of the real example inventory, and edits to it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Inventory:
    root: Path

    def host_path(self, name: str) -> Path:
        return self.root / "hosts" / f"{name}.yaml"

    def recipe_path(self, name: str) -> Path:
        return self.root / "recipes" / f"{name}.yaml"

    def edit(self, path: Path, old: str, new: str) -> int:
        """Replace ``old`` (which must occur once) by ``new``; return the 1-based line where
        ``old`` started (the line a problem in ``new`` is reported on)."""
        text = path.read_text()
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {path}"
        position = text.index(old)
        path.write_text(text.replace(old, new))
        return text.count("\n", 0, position) + 1

    def edit_host(self, name: str, old: str, new: str) -> int:
        return self.edit(self.host_path(name), old, new)

    def edit_recipe(self, name: str, old: str, new: str) -> int:
        return self.edit(self.recipe_path(name), old, new)
