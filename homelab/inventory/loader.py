"""Load the inventory: read YAML with positions, validate strictly, resolve recipes, cross-check.

Every problem is collected (not just the first) and raised together as one
:class:`InventoryError`, one ``file:line: key.path: what and how to fix it`` per line.

Recipes are found three ways (``recipe:`` in a host's model entry):

- a name: ``<inventory>/recipes/<name>.yaml``;
- a path (contains ``/`` or ends in ``.yaml``/``.yml``): relative to the host file, or absolute;
- an ``http(s)://`` URL, pinned by the entry's ``sha256:`` and cached by content
  (:mod:`homelab.inventory.remote`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ValidationError

from ..address import split_host_port
from ..matrix import (
    MatrixError,
    MatrixExpressionError,
    expand_sets,
    expression_names,
    expression_refs,
)
from ..suggest import did_you_mean
from .exposure import listen_problems
from .flagnames import DEFAULT_REF, DRAFT_MODEL_TYPES, NEEDS_DRAFT_FILE, RESERVED, known_flags, value_message
from .powers import recipe_power_problems
from .problems import InventoryError, Problem
from .remote import RecipeFetchError, fetch_recipe, hash_of_url
from .resolved import ResolvedHost, ResolvedModel
from .schema import (
    HIP_ARCH,
    MTP,
    Host,
    HostModel,
    Recipe,
    cuda_architecture,
    cuda_floor_problem,
)
from .sourcemap import KeyPath, YamlDoc, YamlSyntaxError, display_name, parse_yaml
from .validation import validation_problems

__all__ = [
    "InventoryError",
    "Problem",
    "check_recipe_file",
    "list_hosts",
    "list_recipes",
    "load_host",
    "load_host_file",
    "load_recipe",
    "recipe_ref_kind",
]

LOG = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
RefKind = Literal["name", "path", "url"]


# --------------------------------------------------------------------------------------------
# Public API


def list_hosts(inventory: str | Path) -> list[str]:
    return sorted(p.stem for p in (Path(inventory) / "hosts").glob("*.yaml"))


def host_path(name: str, inventory: str | Path) -> Path:
    """Where the host ``name``'s file is (it may not exist)."""
    return Path(inventory) / "hosts" / f"{name}.yaml"


def list_recipes(inventory: str | Path) -> list[str]:
    return sorted(p.stem for p in (Path(inventory) / "recipes").glob("*.yaml"))


def load_host(name: str, inventory: str | Path) -> ResolvedHost:
    """The host ``<inventory>/hosts/<name>.yaml``, validated, with every recipe merged in."""
    path = host_path(name, inventory)
    if not path.is_file():
        known = list_hosts(inventory)
        raise InventoryError(
            f"unknown host {name!r}: there is no {path}"
            + did_you_mean(name, known, listing="known hosts", fallback="; known hosts: (none)")
        )
    return load_host_file(path, inventory)


def load_host_file(path: str | Path, inventory: str | Path) -> ResolvedHost:
    """A host file anywhere on disk, resolved against ``inventory`` (for its ``recipes/``)."""
    path = Path(path)
    session = _Session(Path(inventory))
    doc = read_doc(path)
    host = session.resolve_host(doc, path)
    session.raise_if_problems()
    assert host is not None
    return host


def load_recipe(
    inventory: str | Path,
    ref: str,
    *,
    base: str | Path | None = None,
    sha256: str | None = None,
    ref_kind: RefKind | None = None,
) -> tuple[Recipe, Path]:
    """One recipe by name, path (relative to ``base``, default the inventory) or pinned URL.

    Returns the recipe and the file it was read from (for a URL, the cached copy).
    """
    inventory = Path(inventory)
    session = _Session(inventory)
    holder = YamlDoc(display="(recipe reference)", data={"recipe": ref})
    holder.lines[("recipe",)] = 1
    loaded = session.recipe(
        ref, sha256, base=Path(base) if base else inventory, where=holder, path=("recipe",), kind=ref_kind
    )
    session.raise_if_problems()
    assert loaded is not None and loaded.recipe is not None and loaded.file is not None
    return loaded.recipe, loaded.file


def check_recipe_file(path: str | Path) -> Recipe:
    """Validate one recipe file on its own (flags checked against the default llama.cpp ref)."""
    path = Path(path)
    session = _Session(path.parent.parent)
    expected = path.stem if path.parent.name == "recipes" else None
    loaded = session.recipe_file(path, display_name(path), expected_name=expected)
    if loaded.recipe is not None and loaded.doc is not None:
        session.check_server(loaded.doc, ("server",), loaded.recipe.server, DEFAULT_REF)
    session.raise_if_problems()
    assert loaded.recipe is not None
    return loaded.recipe


def recipe_ref_kind(ref: str) -> RefKind:
    """How ``recipe:`` is meant: an http(s) URL, a file path, or a name in ``recipes/``."""
    if re.match(r"https?://", ref):
        return "url"
    if "/" in ref or "\\" in ref or ref.endswith((".yaml", ".yml")) or ref.startswith(("~", ".")):
        return "path"
    return "name"


# --------------------------------------------------------------------------------------------
# Reading files


def read_doc(path: Path, display: str | None = None) -> YamlDoc:
    display = display or display_name(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InventoryError(Problem(display, None, (), "file not found")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(Problem(display, None, (), f"cannot read the file: {exc}")) from None
    return _parse(text, display)


def _parse(text: str, display: str) -> YamlDoc:
    try:
        doc = parse_yaml(text, display)
    except YamlSyntaxError as exc:
        raise InventoryError(exc.problem) from None
    if not isinstance(doc.data, dict):
        what = "empty" if doc.data is None else f"a {type(doc.data).__name__}"
        raise InventoryError(
            Problem(display, doc.line(()), (), f"the file is {what}; expected a mapping (name: ..., ...)")
        )
    return doc


EXTENSION_PREFIX = "x-"
"""Top-level keys starting with ``x-`` are ignored (as in docker compose): a place for YAML anchors
shared by several entries, e.g. ``x-sampling: &qwen {temperature: 0.7}``."""


def _validate(doc: YamlDoc, model: type[M]) -> tuple[M | None, list[Problem]]:
    data = doc.data
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith(EXTENSION_PREFIX))}
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, validation_problems(exc, doc, model)


# --------------------------------------------------------------------------------------------
# One load


@dataclass
class _LoadedRecipe:
    recipe: Recipe | None
    file: Path | None
    doc: YamlDoc | None
    ref: str


@dataclass
class _Session:
    """One load: the inventory, recipes read so far, and every problem found."""

    inventory: Path
    problems: list[Problem] = field(default_factory=list)
    recipes: dict[str, _LoadedRecipe] = field(default_factory=dict)

    def add(self, problem: Problem) -> None:
        self.problems.append(problem)

    def raise_if_problems(self) -> None:
        if self.problems:
            raise InventoryError(self.problems)

    # -- recipes ------------------------------------------------------------------------------

    def recipe(
        self,
        ref: str,
        sha256: str | None,
        *,
        base: Path,
        where: YamlDoc,
        path: KeyPath,
        kind: RefKind | None = None,
    ) -> _LoadedRecipe | None:
        """Find, fetch and validate the recipe ``ref`` named at ``where``/``path``."""
        kind = kind or recipe_ref_kind(ref)
        expected_name = None
        if kind == "url":
            if sha256 is None:
                try:
                    actual = hash_of_url(ref)
                    hint = f"add `sha256: {actual}` to this model entry (after reading the file)"
                except RecipeFetchError as exc:
                    hint = f"add `sha256: <its sha256>` to this model entry ({exc})"
                self.add(where.problem(path, f"a recipe URL must be pinned by sha256: {hint}"))
                return None
            key = f"{ref}#{sha256}"
            if key in self.recipes:
                return self.recipes[key]
            try:
                file = fetch_recipe(ref, sha256)
            except RecipeFetchError as exc:
                self.add(where.problem(path, str(exc)))
                return None
            display = ref
        else:
            if kind == "path":
                file = Path(ref).expanduser()
                if not file.is_absolute():
                    file = base / file
                if not file.is_file():
                    self.add(where.problem(path, f"recipe file not found: {file}"))
                    return None
            else:
                if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", ref):
                    self.add(where.problem(path, f"{ref!r} is neither a recipe name, a path nor a URL"))
                    return None
                file = self.inventory / "recipes" / f"{ref}.yaml"
                if not file.is_file():
                    self.add(
                        where.problem(
                            path,
                            f"unknown recipe {ref!r} (there is no recipes/{ref}.yaml in {self.inventory})"
                            + did_you_mean(
                                ref,
                                list_recipes(self.inventory),
                                listing="known recipes",
                                fallback="; give a path or an https:// URL with sha256 for recipes kept elsewhere",
                            ),
                        )
                    )
                    return None
                expected_name = ref
            file = file.resolve()
            key = str(file)
            if sha256 is not None:
                actual = hashlib.sha256(file.read_bytes()).hexdigest()
                if actual != sha256:
                    self.add(
                        where.problem(
                            path,
                            f"recipe {display_name(file)} does not match its pin: expected sha256 "
                            f"{sha256}, got {actual}; review the change, then update sha256 (or remove it)",
                        )
                    )
                    return None
            if key in self.recipes:
                return self.recipes[key]
            display = display_name(file)
        loaded = self.recipe_file(file, display, expected_name=expected_name, ref=ref)
        self.recipes[key] = loaded
        return loaded

    def recipe_file(
        self, file: Path, display: str, *, expected_name: str | None, ref: str | None = None
    ) -> _LoadedRecipe:
        try:
            doc = read_doc(file, display)
        except InventoryError as exc:
            self.problems.extend(exc.problems)
            return _LoadedRecipe(None, file, None, ref or str(file))
        self.problems.extend(doc.problems)
        recipe, problems = _validate(doc, Recipe)
        self.problems.extend(problems)
        if recipe is not None and expected_name is not None and recipe.name != expected_name:
            self.add(
                doc.problem(
                    ("name",),
                    f"the recipe is named {recipe.name!r} but its file is recipes/{expected_name}.yaml; "
                    f"hosts find recipes by file name, so use name: {expected_name} (or rename the file)",
                )
            )
        return _LoadedRecipe(recipe, file, doc, ref or str(file))

    # -- checks -------------------------------------------------------------------------------

    def check_server(self, doc: YamlDoc, base: KeyPath, server: Mapping[str, object], ref: str) -> None:
        """Flag names (reserved ones, and typos against the ref's snapshot), values of enumerated
        flags against the ref's help text, and ctx-size values."""
        known = known_flags(ref)
        for name, value in server.items():
            path = (*base, name)
            if name in RESERVED:
                self.add(doc.problem(path, f"flag {name!r} is set by homelab: {RESERVED[name]}"))
            elif name.startswith("-"):
                self.add(doc.problem(path, f"write flag names without dashes: {name.lstrip('-')!r}, not {name!r}"))
            elif known is not None and name not in known:
                self.add(
                    doc.problem(
                        path,
                        f"unknown llama-server flag {name!r} (llama.cpp {ref})"
                        + did_you_mean(
                            name,
                            known,
                            listing="flags",
                            fallback="; flags are llama-server's long names without dashes (see `llama-server --help`)",
                        ),
                    )
                )
            if message := value_message(ref, name, value):
                self.add(doc.problem(path, message))
            if name == "ctx-size" and not _ctx_size_ok(value):
                self.add(
                    doc.problem(path, f"ctx-size must be a number of tokens or 'auto' (the plan picks), got {value!r}")
                )
        if known is None and server:
            LOG.debug("no llama-server flag snapshot for %s; flag names not checked", ref)

    # -- hosts --------------------------------------------------------------------------------

    def resolve_host(self, doc: YamlDoc, host_file: Path) -> ResolvedHost | None:
        self.problems.extend(doc.problems)
        host, problems = _validate(doc, Host)
        if host is None:
            self.problems.extend(problems)
            return None
        expected = host_file.stem
        if host_file.parent.name == "hosts" and host.name != expected:
            self.add(
                doc.problem(
                    ("name",),
                    f"the host is named {host.name!r} but its file is hosts/{expected}.yaml; "
                    f"`host={expected}` selects this file, so use name: {expected}",
                )
            )
        self.check_gpus(doc, host)
        self.check_patches(doc, host)
        models: list[tuple[int, ResolvedModel]] = []
        for index, entry in enumerate(host.models):
            model = self.resolve_model(doc, host_file, host, index, entry)
            if model is not None:
                models.append((index, model))
        self.check_names(doc, host, models)
        self.check_sets(doc, host, [m for _, m in models])
        self.check_runtime(doc, host, [m for _, m in models])
        return ResolvedHost(
            host=host,
            host_file=host_file.resolve(),
            inventory=self.inventory.resolve(),
            models=tuple(m for _, m in models),
            sets=dict(host.sets),
        )

    def check_gpus(self, doc: YamlDoc, host: Host) -> None:
        for index, gpu in enumerate(host.gpus):
            if gpu.arch is None:
                continue
            path = ("gpus", index, "arch")
            if host.backend == "hip" and not HIP_ARCH.fullmatch(gpu.arch):
                hint = (
                    " (that is a CUDA compute capability: NVIDIA GPUs need backend: cuda)"
                    if cuda_architecture(gpu.arch)
                    else ""
                )
                self.add(
                    doc.problem(
                        path,
                        f"{gpu.arch!r} is not a ROCm target for backend hip{hint}; use the gfx name "
                        "`rocminfo` prints, e.g. gfx1100 for an RX 7900 XTX",
                    )
                )
            elif host.backend == "cuda" and cuda_architecture(gpu.arch) is None:
                hint = (
                    " (that is an AMD target: AMD GPUs need backend: hip or vulkan)"
                    if gpu.arch.startswith("gfx")
                    else ""
                )
                self.add(
                    doc.problem(
                        path,
                        f"{gpu.arch!r} is not a CUDA compute capability for backend cuda{hint}; use "
                        "`nvidia-smi --query-gpu=compute_cap --format=csv`, e.g. 86 (or 8.6, sm_86) "
                        "for an RTX 3060",
                    )
                )
            elif host.backend == "cuda" and (floor := cuda_floor_problem(gpu.arch)):
                self.add(doc.problem(path, floor))

    def check_patches(self, doc: YamlDoc, host: Host) -> None:
        """Patch files named in ``llama_cpp.patches`` exist under ``<inventory>/patches/`` (a file,
        or a folder with a ``series`` file). Whether they apply is the build stage's business."""
        folder = self.inventory / "patches"
        for k, ref in enumerate(host.llama_cpp.patches):
            if not isinstance(ref, str):
                continue
            path = folder / ref
            if path.is_file() or (path.is_dir() and (path / "series").is_file()):
                continue
            if path.is_dir():
                problem = f"patch folder patches/{ref} has no `series` file listing its patches in order"
            else:
                existing = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
                problem = f"no patch patches/{ref} in {self.inventory}" + did_you_mean(
                    ref, existing, listing="patches there", fallback=""
                )
            self.add(doc.problem(("llama_cpp", "patches", k), problem))

    def resolve_model(
        self, doc: YamlDoc, host_file: Path, host: Host, index: int, entry: HostModel
    ) -> ResolvedModel | None:
        at = ("models", index)
        loaded = self.recipe(entry.recipe, entry.sha256, base=host_file.parent, where=doc, path=(*at, "recipe"))
        if entry.gpus is not None:
            seen: set[int] = set()
            for k, gpu in enumerate(entry.gpus):
                if not 0 <= gpu < len(host.gpus):
                    have = (
                        f"this host lists {len(host.gpus)} GPU(s), indices 0-{len(host.gpus) - 1}"
                        if host.gpus
                        else "this host lists no gpus"
                    )
                    self.add(doc.problem((*at, "gpus", k), f"GPU index {gpu} is out of range: {have}"))
                elif gpu in seen:
                    self.add(doc.problem((*at, "gpus", k), f"GPU index {gpu} is listed twice"))
                seen.add(gpu)
        self.check_server(doc, (*at, "server"), entry.server, host.llama_cpp.ref)
        if loaded is None or loaded.recipe is None or loaded.doc is None:
            return None
        recipe = loaded.recipe
        self.check_server(loaded.doc, ("server",), recipe.server, host.llama_cpp.ref)
        self.problems.extend(recipe_power_problems(loaded.doc, recipe, doc.display, index, entry))
        if entry.profiles is not None:
            for k, profile in enumerate(entry.profiles):
                if profile not in recipe.profiles:
                    self.add(
                        doc.problem(
                            (*at, "profiles", k),
                            f"recipe {recipe.name!r} has no profile {profile!r}"
                            + did_you_mean(
                                profile,
                                recipe.profiles,
                                listing="its profiles",
                                fallback="; it defines no profiles",
                            ),
                        )
                    )
        model = merge_model(entry, recipe, loaded.file, loaded.ref)
        self.check_tensor_split(doc, loaded.doc, index, entry, host, model)
        self.check_draft(doc, loaded.doc, index, entry, model)
        return model

    def check_draft(
        self, doc: YamlDoc, recipe_doc: YamlDoc, index: int, entry: HostModel, model: ResolvedModel
    ) -> None:
        """A draft model and ``spec-type`` agree: a type that drafts with a model file has a
        ``draft:`` to run on, and a ``draft:`` is used by the type (b11434 loads a draft it is
        given but drafts with it only under a draft-* type)."""
        spec = model.server.get("spec-type")
        if spec is None or spec is True:
            return
        types = {t.strip() for t in str(spec).split(",") if t.strip()}
        where, path = (
            (doc, ("models", index, "server", "spec-type"))
            if "spec-type" in entry.server
            else (recipe_doc, ("server", "spec-type"))
        )
        if model.draft is None and types & NEEDS_DRAFT_FILE:
            self.add(
                where.problem(
                    path,
                    f"spec-type {spec!r} drafts with a separate model file, but model {model.id!r} has no `draft:`; "
                    "declare one (draft: {hf: {repo: OWNER/NAME-GGUF, file: NAME.gguf}}, like source:) or use "
                    "an ngram type",
                )
            )
        elif model.draft is not None and not types & DRAFT_MODEL_TYPES:
            self.add(
                where.problem(
                    path,
                    f"model {model.id!r} has a `draft:` but spec-type {spec!r} never uses it (llama-server would "
                    "load it and not draft with it); add draft-simple (e.g. spec-type: draft-simple), or drop "
                    "spec-type (homelab then passes draft-simple), or remove `draft:`",
                )
            )

    def check_tensor_split(
        self, doc: YamlDoc, recipe_doc: YamlDoc, index: int, entry: HostModel, host: Host, model: ResolvedModel
    ) -> None:
        """``tensor-split`` gives one share per GPU the model may use; more shares than GPUs is a
        typo (llama.cpp would silently ignore the extra ones)."""
        split = model.server.get("tensor-split")
        if split is None:
            return
        where, path = (
            (doc, ("models", index, "server", "tensor-split"))
            if "tensor-split" in entry.server
            else (recipe_doc, ("server", "tensor-split"))
        )
        if model.rpc_workers:
            self.add(
                where.problem(
                    path,
                    f"model {model.id!r} is split over rpc workers ({', '.join(model.rpc_workers)}): the plan "
                    "sets --tensor-split over their devices and this host's GPUs, so remove it here "
                    "(a recipe's value can be dropped in the host entry with `server: {tensor-split: null}`)",
                )
            )
            return
        usable = len(entry.gpus) if entry.gpus is not None else len(host.gpus)
        shares = [part for part in str(split).replace("/", ",").split(",") if part.strip()]
        try:
            [float(part) for part in shares]
        except ValueError:
            ok = False
        else:
            ok = len(shares) <= max(usable, 1)
        if ok:
            return
        self.add(
            where.problem(
                path,
                f"tensor-split {split!r} must be comma-separated numbers, one share per GPU the model "
                f'uses ({usable} here), e.g. "1,1.5"',
            )
        )

    def check_names(self, doc: YamlDoc, host: Host, models: list[tuple[int, ResolvedModel]]) -> None:
        """Model IDs, profile IDs (``<id>:<profile>``) and aliases share one namespace."""
        owners: dict[str, str] = {}
        duplicates: set[int] = set()
        for index, model in models:
            entry_path = ("models", index, "id") if host.models[index].id else ("models", index, "recipe")
            if model.id in owners:
                duplicates.add(index)
                self.add(
                    doc.problem(
                        entry_path,
                        f"model ID {model.id!r} is already {owners[model.id]}; give one of them a distinct `id:`",
                    )
                )
            else:
                owners[model.id] = f"the ID of models[{index}] (line {doc.line(entry_path)})"
        for index, model in models:
            if index in duplicates:
                continue  # its profile IDs and aliases would only repeat the same problem
            entry = host.models[index]
            for profile_id in model.profile_ids():
                path: KeyPath = ("models", index, "profiles") if entry.profiles else ("models", index, "recipe")
                if profile_id in owners and not owners[profile_id].startswith("the ID of"):
                    self.add(doc.problem(path, f"profile ID {profile_id!r} is already {owners[profile_id]}"))
                owners.setdefault(profile_id, f"the profile ID of models[{index}] (line {doc.line(path)})")
            for alias in model.aliases:
                if alias in entry.aliases:
                    path = ("models", index, "aliases", entry.aliases.index(alias))
                    source = ""
                else:
                    path = ("models", index, "recipe")
                    source = f" (an alias from recipe {model.recipe.name!r})"
                if alias in owners:
                    self.add(
                        doc.problem(
                            path,
                            f"alias {alias!r}{source} is already {owners[alias]}; model IDs, profile IDs "
                            "and aliases must all be different",
                        )
                    )
                else:
                    owners[alias] = f"an alias of models[{index}] (line {doc.line(path)})"

    def check_sets(self, doc: YamlDoc, host: Host, models: list[ResolvedModel]) -> None:
        if not host.sets:
            return
        ids = {m.id for m in models}
        wanted = {e.id or _recipe_stem(e.recipe) for e in host.models}  # IDs even of broken entries
        clean = True
        for name, expression in host.sets.items():
            path = ("sets", name)
            try:
                names = expression_names(expression)
            except MatrixExpressionError as exc:
                self.add(doc.problem(path, f"{exc.problem} at position {exc.position} of {expression!r}"))
                clean = False
                continue
            for unknown in sorted(names - ids - wanted):
                self.add(
                    doc.problem(
                        path,
                        f"set {name!r} names unknown model {unknown!r}"
                        + did_you_mean(unknown, ids, listing="model IDs on this host"),
                    )
                )
                clean = False
            for ref in sorted(expression_refs(expression) - set(host.sets)):
                self.add(
                    doc.problem(
                        path,
                        f"+{ref} is not a set of this host" + did_you_mean(ref, host.sets, listing="sets"),
                    )
                )
                clean = False
        if clean:
            try:
                expand_sets(host.sets)
            except MatrixError as exc:
                self.add(doc.problem(("sets",), str(exc)))

    def check_runtime(self, doc: YamlDoc, host: Host, models: list[ResolvedModel]) -> None:
        ids = {m.id for m in models}
        wanted = ids | {e.id or _recipe_stem(e.recipe) for e in host.models}
        for k, model_id in enumerate(host.runtime.preload):
            if model_id not in wanted:
                self.add(
                    doc.problem(
                        ("runtime", "preload", k),
                        f"unknown model {model_id!r}" + did_you_mean(model_id, ids, listing="model IDs"),
                    )
                )
        self.check_rpc_server(doc, host)
        self.problems.extend(listen_problems(doc, host))
        ports: dict[int, int] = {}
        for index, entry in enumerate(host.models):
            if entry.port is None:
                continue
            if entry.port in ports:
                self.add(
                    doc.problem(
                        ("models", index, "port"),
                        f"port {entry.port} is already pinned by models[{ports[entry.port]}]",
                    )
                )
            ports.setdefault(entry.port, index)

    def check_rpc_server(self, doc: YamlDoc, host: Host) -> None:
        """rpc-server's port must not be one the endpoint or a backend of this host takes."""
        server = host.rpc_server
        if server is None:
            return
        _address, port = split_host_port(server.listen)
        path = ("rpc_server", "listen")
        _address, listen_port = split_host_port(host.runtime.listen)
        start = host.runtime.start_port
        pinned = {entry.port for entry in host.models if entry.port is not None}
        if not 1 <= port <= 65535:
            self.add(doc.problem(path, f"port {port} is not a TCP port (1-65535); rpc-server's default is 50052"))
        elif port == listen_port:
            self.add(
                doc.problem(path, f"port {port} is runtime.listen's port; use another (rpc-server's default is 50052)")
            )
        elif start <= port < start + 1000 or port in pinned:
            self.add(
                doc.problem(
                    path,
                    f"port {port} is in this host's backend port window ({start}-{start + 999}, "
                    "runtime.start_port) or pinned by a model; use another (rpc-server's default is 50052)",
                )
            )


def _recipe_stem(ref: str) -> str:
    """The default model ID for a broken entry (used only to avoid follow-up errors)."""
    return Path(ref.rstrip("/")).stem if recipe_ref_kind(ref) != "name" else ref


def _ctx_size_ok(value: object) -> bool:
    if value is None or value is False or value == "auto":
        return True
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --------------------------------------------------------------------------------------------
# Merging a host entry over its recipe (pure)


def merge_flags(base: dict[str, object], override: dict[str, object]) -> dict[str, object]:
    """``override`` over ``base``; a ``null``/``false`` value removes the flag. Order: base's
    flags in their order, then new ones."""
    merged = dict(base)
    for name, value in override.items():
        merged[name] = value
    return {k: v for k, v in merged.items() if v is not None and v is not False}


def merge_model(entry: HostModel, recipe: Recipe, recipe_file: Path | None, recipe_ref: str = "") -> ResolvedModel:
    """One host model: the recipe with the entry's overrides applied."""
    if entry.profiles is None:
        profiles = dict(recipe.profiles)
    else:
        profiles = {p: recipe.profiles[p] for p in entry.profiles if p in recipe.profiles}
    mtp: MTP | None
    if entry.mtp is False:
        mtp = None
    else:
        mtp = entry.mtp or recipe.mtp
    draft = None if entry.draft is False else entry.draft or recipe.draft
    return ResolvedModel(
        id=entry.id or recipe.name,
        recipe=recipe,
        recipe_file=recipe_file,
        source=recipe.source,
        server=merge_flags(recipe.server, entry.server),  # type: ignore[arg-type]  # dict is invariant in its values
        profiles=profiles,
        aliases=tuple(dict.fromkeys([*recipe.aliases, *entry.aliases])),
        mtp=mtp,
        ttl=entry.ttl if entry.ttl is not None else recipe.ttl,
        prompt_cache=entry.prompt_cache if entry.prompt_cache is not None else recipe.prompt_cache,
        env={**recipe.env, **entry.env},
        gpus=tuple(entry.gpus) if entry.gpus is not None else None,
        port=entry.port,
        preload=entry.preload,
        recipe_ref=recipe_ref or recipe.name,
        rpc_workers=tuple(dict.fromkeys(entry.rpc)),
        draft=draft,
    )
