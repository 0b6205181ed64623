"""The stage interface: what a stage of the deploy chain consumes, produces, and its fingerprint.

Each stage package defines its :class:`Stage` beside its own logic (``homelab.hub.stage``,
``homelab.llamacpp.stage``, ``homelab.plan.stage``, ``homelab.render.stage``,
``homelab.deploy.stage``); ``homelab.tasks`` turns the list of them into doit tasks with one
factory. One freshness rule for all (:meth:`Stage.is_fresh`): the fingerprint computed now (a
digest of its inputs, read when the stage is about to run, so an earlier stage's output of the
same run counts) equals the one recorded when it last succeeded, and, where the stage says so,
its product is still in place. A fingerprint of None means "cannot be told from files here":
the stage always runs.

The record is a small file per host and stage, ``$HOMELAB_STATE/hosts/<host>/stages/``, not
doit's dep file: ``deploy host=all`` runs one doit per host while an outer doit holds the dep
file, and each doit writes back the whole file it loaded, so records kept there get lost.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from .files import atomic_write_text
from .settings import state_dir

if TYPE_CHECKING:
    from .inventory.resolved import ResolvedHost

PACKAGE_ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Stage:
    """One step of the chain for one host (or, with ``parts``, for each part of a host).

    With ``parts`` set (the fetch stage: one part per model), ``fingerprint``, ``run``,
    ``target`` and ``in_place`` take ``(host, part)``; otherwise ``(host)``.
    """

    name: str
    doc: str
    consumes: tuple[str, ...]
    """What the fingerprint is made of, in words (shown by ``doit info``)."""
    produces: str
    """What the stage writes, in words."""
    after: tuple[str, ...]
    """Stages of the same host that run first (ordering only: freshness is the fingerprint's)."""
    fingerprint: Callable[..., str | None]
    run: Callable[..., None]
    target: Callable[..., Path] | None = None
    """A file the stage writes: missing, the stage runs whatever the fingerprint says."""
    in_place: Callable[..., bool] | None = None
    """Whether the product is still there as made (a build directory, a running service)."""
    parts: Callable[[ResolvedHost], tuple[str, ...]] | None = None

    def record_file(self, host: ResolvedHost, *part: str) -> Path:
        return state_dir() / "hosts" / host.name / "stages" / (".".join((self.name, *part)) + ".json")

    def is_fresh(self, host: ResolvedHost, *part: str) -> bool:
        now = self.fingerprint(host, *part)
        if now is None:
            return False
        recorded = read_record(self.record_file(host, *part)) or {}
        return recorded.get("fingerprint") == now and (self.in_place is None or self.in_place(host, *part))

    def run_and_record(self, host: ResolvedHost, *part: str) -> None:
        """Run the stage, then record its fingerprint (computed after the work: the lock stage's
        own output is one of its inputs)."""
        self.run(host, *part)
        write_record(self.record_file(host, *part), {"fingerprint": self.fingerprint(host, *part)})


# --------------------------------------------------------------------------------------------
# Records: the small JSON files stages keep beside their products (the freshness record above,
# the render memo, the build stamp and build-key memo)


def read_record(path: Path) -> dict[str, Any] | None:
    """A record written by :func:`write_record`; None when it is missing, unreadable or not an
    object (a record is only ever a shortcut: without it the stage works it out again)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_record(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as a record, atomically (:func:`homelab.files.atomic_write_text`), creating
    its folder; an unchanged record is left alone (no write, no fsync)."""
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    try:
        if path.read_text() == text:
            return
    except OSError:
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


# --------------------------------------------------------------------------------------------
# Digests for fingerprints


@cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _stable(value: Any) -> Any:
    """Plain, ordered data for hashing (dataclasses, pydantic models, mappings, sets, paths); an
    unknown object falls back to its repr, which at worst makes a fingerprint differ and the
    stage run (never the other way round). Plain values and lists come first: they are most of
    what a fingerprint walks (the render inputs hold every flag of the build)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        return {"@": cls.__name__, **{name: _stable(getattr(value, name)) for name in _field_names(cls)}}
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return [[_stable(k), _stable(v)] for k, v in sorted(value.items(), key=lambda kv: repr(kv[0]))]
    if isinstance(value, (set, frozenset)):
        return sorted((_stable(v) for v in value), key=repr)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, bytes):
        return hashlib.sha256(value).hexdigest()
    return repr(value)


def digest(*parts: Any) -> str:
    """sha256 over structured data (see :func:`_stable` for what it accepts)."""
    return hashlib.sha256(json.dumps(_stable(list(parts)), sort_keys=True, default=repr).encode()).hexdigest()


def file_bytes(path: Path) -> bytes | None:
    """A small input file's content, None when it does not exist (a distinct fingerprint)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def tree_files(root: Path) -> list[tuple[str, bytes]]:
    """Every file under ``root`` (relative name, content), sorted; empty when it is absent."""
    if not root.is_dir():
        return []
    return [(p.relative_to(root).as_posix(), p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]


_RELATIVE_IMPORT = re.compile(r"^\s*from (\.+)([\w.]*) import ([\w, ()]+)", re.MULTILINE)


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split(".")[1:])
    for candidate in (PACKAGE_ROOT / rel / "__init__.py", PACKAGE_ROOT / rel.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imports_of(module: str, path: Path, text: str) -> set[str]:
    """The homelab modules ``path`` imports (relative imports, at any depth in the file)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for dots, name, names in _RELATIVE_IMPORT.findall(text):
        base = package[: len(package) - (len(dots) - 1)]
        target = ".".join([*base, *([name] if name else [])])
        found.add(target)
        for item in names.replace("(", "").replace(")", "").split(","):  # `from . import x` names modules
            if item.strip() and _module_file(f"{target}.{item.strip()}"):
                found.add(f"{target}.{item.strip()}")
    return found


def code_files(*packages: str) -> dict[str, Path]:
    """The modules of ``packages`` (every module in them) and every homelab module they import
    directly, by module name: a new file in a package or a new import is covered without a list
    to keep."""
    files: dict[str, Path] = {}
    for package in packages:
        root = _module_file(package)
        if root is None:
            raise ValueError(f"no such homelab package or module: {package}")
        members = sorted(root.parent.rglob("*.py")) if root.name == "__init__.py" else [root]
        for path in members:
            if "__pycache__" not in path.parts:
                rel = path.relative_to(PACKAGE_ROOT).with_suffix("")
                name = ".".join(["homelab", *rel.parts])
                files[name.removesuffix(".__init__")] = path
    for name, path in list(files.items()):
        for imported in _imports_of(name, path, path.read_text()):
            found = _module_file(imported)
            if found is not None:
                files.setdefault(imported, found)
    return files


@cache
def code_digest(*packages: str) -> str:
    """sha256 over :func:`code_files` (cached per process: a running process's code is fixed)."""
    files = code_files(*packages)
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name].read_bytes() + b"\0")
    return h.hexdigest()
