"""Numbered generations of a host's rendered files, a ``current`` link, rollback and pruning.

Layout under ``HOMELAB_STATE/hosts/<host>/``::

    generations/1/            rendered files (config.yaml, units, env files, manifest.json)
    generations/1/.homelab-generation.json   what this generation is (number, date, changes)
    generations.json          {"current": N, "previous": M}
    current -> generations/N  switched atomically (new symlink under a temp name + os.replace)

A generation is identified by its content: the sha256 over every file's path and bytes. A deploy
whose rendered files equal the current generation's creates nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HomelabError
from ..files import atomic_symlink, atomic_write_text, fsync_dir, fsync_tree
from .paths import HostPaths

META_NAME = ".homelab-generation.json"

Files = dict[str, bytes]
"""Relative path (posix) -> content."""


class GenerationError(HomelabError):
    pass


def read_tree(directory: Path) -> Files:
    """Every regular file below ``directory`` (generation metadata excluded), by relative path."""
    files: Files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != META_NAME:
            files[path.relative_to(directory).as_posix()] = path.read_bytes()
    return files


def content_hash(files: Mapping[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()


@dataclass
class Generation:
    number: int
    path: Path
    created: float
    content_hash: str
    status: str = "new"
    """new (being activated), ok (verified), failed (verification failed, rolled back)."""
    action: str = ""
    """What activating it did: start, restart, reload, none."""
    changes: list[str] = field(default_factory=list)
    """One line per changed file or input, for ``homelab generations``."""

    @property
    def meta_file(self) -> Path:
        return self.path / META_NAME

    def files(self) -> Files:
        return read_tree(self.path)

    def save(self) -> None:
        data = {
            "number": self.number,
            "created": self.created,
            "content_hash": self.content_hash,
            "status": self.status,
            "action": self.action,
            "changes": self.changes,
        }
        atomic_write_text(self.meta_file, json.dumps(data, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> Generation:
        try:
            data = json.loads((path / META_NAME).read_text())
        except (OSError, ValueError):
            # a generation without readable metadata: describe it from its files
            return cls(
                number=int(path.name),
                path=path,
                created=path.stat().st_mtime,
                content_hash=content_hash(read_tree(path)),
                status="unknown",
            )
        return cls(
            number=int(data["number"]),
            path=path,
            created=float(data["created"]),
            content_hash=data["content_hash"],
            status=data.get("status", "ok"),
            action=data.get("action", ""),
            changes=list(data.get("changes", [])),
        )


class GenerationStore:
    """The generations of one host."""

    def __init__(self, paths: HostPaths) -> None:
        self.paths = paths

    # ---- reading

    def numbers(self) -> list[int]:
        if not self.paths.generations.is_dir():
            return []
        return sorted(int(p.name) for p in self.paths.generations.iterdir() if p.name.isdigit())

    def get(self, number: int) -> Generation:
        path = self.paths.generations / str(number)
        if not path.is_dir():
            known = ", ".join(map(str, self.numbers())) or "none"
            raise GenerationError(
                f"host {self.paths.host!r} has no generation {number} (generations: {known}); "
                f"see `homelab generations {self.paths.host}`"
            )
        return Generation.load(path)

    def all(self) -> list[Generation]:
        return [self.get(n) for n in self.numbers()]

    def _state(self) -> dict[str, int | None]:
        try:
            data = json.loads(self.paths.state_file.read_text())
        except (OSError, ValueError):
            data = {}
        return {"current": data.get("current"), "previous": data.get("previous")}

    def current_number(self) -> int | None:
        """The generation the ``current`` link points at (None before the first deploy)."""
        try:
            target = os.readlink(self.paths.current)
        except OSError:
            return None
        name = Path(target).name
        return int(name) if name.isdigit() else None

    def current(self) -> Generation | None:
        number = self.current_number()
        return None if number is None else self.get(number)

    def previous_number(self) -> int | None:
        """The generation that was current before the current one was switched to."""
        previous = self._state()["previous"]
        return previous if previous in self.numbers() else None

    def rollback_target(self) -> int | None:
        """The newest good generation older than the current one (what ``rollback`` picks)."""
        current = self.current_number()
        older = [n for n in self.numbers() if (current is None or n < current) and self.get(n).status != "failed"]
        return older[-1] if older else None

    # ---- writing

    def create(self, files: Mapping[str, bytes], changes: list[str], action: str) -> Generation:
        """Write a new generation (not yet current). Its number is one above the highest."""
        self.paths.generations.mkdir(parents=True, exist_ok=True)
        number = (self.numbers() or [0])[-1] + 1
        final = self.paths.generations / str(number)
        # a fresh folder of a random name (made with O_EXCL semantics): run as root, a name
        # someone could predict could be a symlink planted to redirect the writes below
        staging = Path(tempfile.mkdtemp(dir=self.paths.generations, prefix=f".{number}.", suffix=".tmp"))
        staging.chmod(0o755)  # the service user reads it (mkdtemp makes 0700)
        for name, data in files.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        generation = Generation(
            number=number,
            path=staging,
            created=time.time(),
            content_hash=content_hash(files),
            action=action,
            changes=changes,
        )
        generation.save()
        # every file on disk before the generation appears under its number
        fsync_tree(staging)
        os.rename(staging, final)
        fsync_dir(self.paths.generations)
        generation.path = final
        return generation

    def switch(self, number: int) -> None:
        """Point ``current`` at generation ``number`` atomically; remember the one before."""
        self.get(number)  # raises with the list of generations when unknown
        before = self.current_number()
        atomic_symlink(self.paths.current, f"generations/{number}")
        if before != number:
            state = {"current": number, "previous": before}
            atomic_write_text(self.paths.state_file, json.dumps(state, indent=2) + "\n")

    def unset_current(self) -> None:
        """Forget the current generation (a first deploy that failed has nothing to go back to)."""
        if self.paths.current.is_symlink():
            self.paths.current.unlink()
        atomic_write_text(self.paths.state_file, json.dumps({"current": None, "previous": None}) + "\n")

    def prune(self, keep: int) -> list[int]:
        """Delete all but the newest ``keep`` generations; never the current, previous or the
        rollback target. Returns the numbers deleted."""
        protected = {self.current_number(), self.previous_number(), self.rollback_target()}
        numbers = self.numbers()
        newest = set(numbers[-keep:]) if keep > 0 else set()
        removed = []
        for number in numbers:
            if number in newest or number in protected:
                continue
            shutil.rmtree(self.paths.generations / str(number))
            removed.append(number)
        return removed
