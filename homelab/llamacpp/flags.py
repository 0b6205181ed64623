"""Which flags a llama-server build accepts, and whether recipes ask for one it does not.

After a build we run ``llama-server --help`` and parse it (:func:`parse_help`) into
:class:`AcceptedFlags`, stored beside the binary as ``flags.json``. :func:`check_flags` then
compares a model's merged ``server`` flags against that set before anything is deployed, so a
flag renamed upstream (``--no-mmap`` -> ``--load-mode``, ``--draft-max`` -> ``--spec-draft-n-max``)
is an error naming the recipe, the flag and the build instead of a crash-looping backend.

The help format (b11434, ``common/arg.cpp``): each option starts at column 0 with its aliases
separated by ``", "`` (``-c,    --ctx-size N``), an optional value placeholder after the last
alias (``N``, ``[on|off|auto]`` for an optional value, ``{none,linear,yarn}`` for choices), then
the description from column 40 (or on the next line when the spec is long). Options that were
removed upstream are still listed, described as "the argument has been removed"; the binary
rejects them, and so do we.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from ..files import atomic_write_text
from ..suggest import closest, did_you_mean

ValueKind = Literal["none", "required", "optional"]

_FLAG = r"-{1,2}[A-Za-z0-9][A-Za-z0-9._-]*"
# aliases joined by ", " (llama.cpp pads the short one: "-c,    --ctx-size"), then an optional
# placeholder after exactly one space, which ends at two spaces (the description column) or EOL.
_SPEC = re.compile(rf"^(?P<aliases>{_FLAG}(?:,\s+{_FLAG})*)(?: (?P<value>\S.*?))?(?:\s{{2,}}(?P<desc>.*))?$")
_REMOVED = "the argument has been removed"
_ALLOWED = re.compile(r"allowed values: (?P<values>[\w.-]+(?:, [\w.-]+)*)")
# "... one of:" then one "- name: what it does" line per value (--reasoning-format, --split-mode);
# the default may sit on the bullet ("- layer (default): ...") or after the list ("(default: auto)")
_ONE_OF = "one of:"
_BULLET = re.compile(r"^- (?P<value>[\w.-]+)(?: \(default\))?:")
_DEFAULT = re.compile(r"^\(default: (?P<value>[\w.-]+)\)$")


@dataclass(frozen=True)
class FlagInfo:
    """One option of llama-server as ``--help`` shows it."""

    name: str
    """The canonical long name without dashes (the first long alias)."""
    aliases: tuple[str, ...]
    """Every spelling with its dashes, as printed (``-c``, ``--ctx-size``)."""
    value: ValueKind
    placeholder: str = ""
    choices: tuple[str, ...] = ()
    """Allowed values when the placeholder lists them (``{none,layer,row}`` or ``a,b,c``)."""
    removed: str | None = None
    """The upstream hint when the option is listed but rejected ("use --spec-draft-n-max ...")."""

    @property
    def takes_list(self) -> bool:
        """A bare comma list placeholder (``none,draft-simple,...``) takes several of its values
        at once (``--spec-type draft-mtp,ngram-mod``); ``{a,b}`` and ``[a|b]`` take one."""
        return "," in self.placeholder and not self.placeholder.startswith(("{", "["))


@dataclass(frozen=True)
class AcceptedFlags:
    """The flag set of one build, keyed by every long name without dashes."""

    flags: dict[str, FlagInfo]
    build: str = ""
    """Which build this is, for messages: ``b11434 (commit abc1234)`` or a path."""

    def accepts(self, name: str) -> bool:
        info = self.flags.get(name.lstrip("-"))
        return info is not None and info.removed is None

    def long_names(self, *, include_removed: bool = False) -> list[str]:
        return sorted(n for n, i in self.flags.items() if include_removed or i.removed is None)

    def to_json(self) -> str:
        seen: dict[str, FlagInfo] = {}
        for info in self.flags.values():
            seen.setdefault(info.name, info)
        data = {"build": self.build, "options": [asdict(i) for i in seen.values()]}
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> AcceptedFlags:
        data = json.loads(text)
        infos = [
            FlagInfo(
                name=o["name"],
                aliases=tuple(o["aliases"]),
                value=o["value"],
                placeholder=o.get("placeholder", ""),
                choices=tuple(o.get("choices", ())),
                removed=o.get("removed"),
            )
            for o in data["options"]
        ]
        return cls(flags=_index(infos), build=data.get("build", ""))

    def write(self, path: Path) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> AcceptedFlags:
        return cls.from_json(path.read_text())


def _index(infos: Iterable[FlagInfo]) -> dict[str, FlagInfo]:
    flags: dict[str, FlagInfo] = {}
    for info in infos:
        for alias in info.aliases:
            if alias.startswith("--"):
                flags.setdefault(alias[2:], info)
    return flags


def _choices(placeholder: str) -> tuple[str, ...]:
    text = placeholder.strip("[]{}")
    if placeholder.startswith("{") or ("," in text and re.fullmatch(r"[a-z0-9_,-]+", text)):
        return tuple(c for c in text.split(",") if c)
    if placeholder.startswith("[") and "|" in text:
        return tuple(text.split("|"))
    return ()


def _listed_choices(desc: list[str]) -> tuple[str, ...]:
    """The values of a description that lists them after "one of:", its default included
    (llama.cpp accepts ``--reasoning-format auto`` although only the default line says so)."""
    text = " ".join(desc)
    if _ONE_OF not in text:
        return ()
    values: list[str] = []
    for line in desc:
        if m := _BULLET.match(line):
            values.append(m["value"])
        elif values and (m := _DEFAULT.match(line)) and m["value"] not in values:
            values.append(m["value"])
    return tuple(values)


def parse_help(text: str, build: str = "") -> AcceptedFlags:
    """Parse ``llama-server --help`` output into the set of options it accepts."""
    infos: list[FlagInfo] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("-") or line.startswith("-----"):
            continue
        m = _SPEC.match(line.rstrip())
        if not m:
            continue
        aliases = tuple(a.strip() for a in m["aliases"].split(","))
        longs = [a for a in aliases if a.startswith("--")]
        if not longs:
            continue
        placeholder = (m["value"] or "").strip()
        value: ValueKind = "none" if not placeholder else "optional" if placeholder.startswith("[") else "required"
        # the description: the rest of this line, else the indented lines that follow
        desc = [m["desc"] or ""]
        for follow in lines[i + 1 :]:
            if not follow.startswith(" "):
                break
            desc.append(follow.strip())
        description = " ".join(d for d in desc if d)
        removed = re.sub(r"\s*\(env: \w+\)", "", description) if description.startswith(_REMOVED) else None
        choices = _choices(placeholder)
        if not choices and (allowed := _ALLOWED.search(description)):
            choices = tuple(c.strip() for c in allowed["values"].split(","))
        if not choices:
            choices = _listed_choices(desc)
        infos.append(
            FlagInfo(
                name=longs[0][2:],
                aliases=aliases,
                value=value,
                placeholder=placeholder,
                choices=choices,
                removed=removed,
            )
        )
    return AcceptedFlags(flags=_index(infos), build=build)


# --------------------------------------------------------------------------------------------
# Checking recipes against a build


RENAMED = {
    "no-mmap": "it became 'load-mode' (see `llama-server --help`)",
    "mlock": "it became 'load-mode' (see `llama-server --help`)",
    "draft-max": "use 'spec-draft-n-max' (or the recipe's `mtp:` key for MTP models)",
    "draft-min": "use 'spec-draft-n-min'",
}
"""Upstream renames whose new name a spelling match would not find."""


def nearest_choice(value: str, choices: Iterable[str]) -> str | None:
    """The allowed value a mistaken one most likely meant: a different case, a choice that has
    it as one of its ``-`` parts (``mtp`` -> ``draft-mtp``), else the closest spelling."""
    options = list(choices)
    lowered = value.lower()
    for choice in options:
        if choice.lower() == lowered:
            return choice
    parts = [c for c in options if lowered in c.lower().split("-")]
    if len(parts) == 1:
        return parts[0]
    return closest(value, options, cutoff=0.5)


def bad_values(info: FlagInfo, value: object) -> list[str]:
    """The parts of ``value`` that ``info``'s listed choices do not allow (``[]``: all fine or
    nothing to check). A list-taking flag checks each comma-separated (or YAML list) element."""
    if not info.choices or isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    elif info.takes_list:
        items = [v.strip() for v in str(value).split(",")]
    else:
        items = [str(value)]
    return [v for v in items if v not in info.choices]


def value_problem(name: str, info: FlagInfo, value: object, build: str) -> str | None:
    """One sentence about the disallowed values of ``name: value``, with the nearest allowed."""
    bad = bad_values(info, value)
    if not bad:
        return None
    nearest = {b: near for b in bad if (near := nearest_choice(b, info.choices))}
    if len(bad) == 1 and nearest:
        hint = f"; did you mean {next(iter(nearest.values()))!r}?"
    else:
        hint = f"; did you mean {', '.join(f'{b!r} -> {n!r}' for b, n in nearest.items())}?" if nearest else ""
    what = f"value {bad[0]!r} is" if len(bad) == 1 else f"values {', '.join(repr(b) for b in bad)} are"
    return f"server flag '{name}' {what} not one of {', '.join(info.choices)} in {build}{hint}"


@dataclass(frozen=True)
class FlagProblem:
    model: str
    flag: str
    message: str

    def __str__(self) -> str:
        return self.message


def check_flags(
    model: str,
    server: Mapping[str, object],
    accepted: AcceptedFlags,
    *,
    recipe_file: Path | str | None = None,
) -> list[FlagProblem]:
    """Every flag of ``server`` (long names without dashes) that ``accepted`` rejects.

    ``model`` names the recipe/model in messages; ``recipe_file`` where to fix it. A switch
    given a value (``metrics: 3``) or a valued flag given ``true`` is also a problem, as is a
    value outside a listed set of choices.
    """
    where = f"{recipe_file}: " if recipe_file else ""
    build = accepted.build or "the pinned llama-server"
    problems: list[FlagProblem] = []
    for raw, value in server.items():
        name = raw.lstrip("-")
        info = accepted.flags.get(name)
        if info is None:
            if name in RENAMED:
                hint = f"; {RENAMED[name]}"
            else:
                hint = did_you_mean(name, accepted.long_names(), cutoff=0.75)
            problems.append(
                FlagProblem(
                    model, name, f"{where}model '{model}': server flag '{name}' is not accepted by {build}{hint}"
                )
            )
            continue
        if info.removed:
            problems.append(
                FlagProblem(
                    model, name, f"{where}model '{model}': server flag '{name}' was removed in {build} ({info.removed})"
                )
            )
            continue
        if value is True and info.value == "required":
            problems.append(
                FlagProblem(
                    model, name, f"{where}model '{model}': server flag '{name}' needs a value ({info.placeholder})"
                )
            )
        elif value is not True and value is not None and value is not False and info.value == "none":
            problems.append(
                FlagProblem(
                    model,
                    name,
                    f"{where}model '{model}': server flag '{name}' is a switch in {build}; write `{name}: true`",
                )
            )
        elif message := value_problem(name, info, value, build):
            problems.append(FlagProblem(model, name, f"{where}model '{model}': {message}"))
    return problems


# --------------------------------------------------------------------------------------------
# MTP (multi-token prediction) as the pinned build spells it

DRAFT_SIMPLE = "draft-simple"
"""``--spec-type`` for a standalone draft model (b11434 does not infer it from the draft file)."""
DRAFT_MODEL_TYPES = frozenset({"draft-simple", "draft-eagle3", "draft-mtp", "draft-dflash", "draft-dspark"})
"""``--spec-type`` values that run on a draft model or head file (``--spec-draft-model``);
draft-mtp also runs on heads inside the main GGUF. The ngram types need none."""
NEEDS_DRAFT_FILE = DRAFT_MODEL_TYPES - {"draft-mtp"}

MTP_UPSTREAM_SINCE = 9180
"""Upstream llama.cpp build that added ``--spec-type draft-mtp`` (FACTS.md)."""


@dataclass(frozen=True)
class MtpSettings:
    draft_n_max: int = 2
    draft_n_min: int | None = None


def mtp_flags(
    mtp: MtpSettings | None,
    *,
    has_mtp_heads: bool,
    accepted: AcceptedFlags | None = None,
    build_number: int | None = None,
) -> dict[str, str]:
    """The llama-server flags (long names without dashes) that turn on MTP, or ``{}``.

    Emitted only when the recipe asks for MTP and the model's GGUF has MTP heads
    (``{arch}.nextn_predict_layers > 0``, read by the gguf stage). The spelling follows the
    build: the ``--spec-type`` choices in its ``--help`` when known, else the build number
    (``draft-mtp`` since b9180, ``mtp`` on older patched branches).
    """
    if mtp is None or not has_mtp_heads:
        return {}
    spec_type = "draft-mtp"
    if accepted is not None and (info := accepted.flags.get("spec-type")) and info.choices:
        if "draft-mtp" not in info.choices and "mtp" in info.choices:
            spec_type = "mtp"
    elif build_number is not None and build_number < MTP_UPSTREAM_SINCE:
        spec_type = "mtp"
    flags = {"spec-type": spec_type, "spec-draft-n-max": str(mtp.draft_n_max)}
    if mtp.draft_n_min is not None:
        flags["spec-draft-n-min"] = str(mtp.draft_n_min)
    return flags


# Which architectures have an MTP graph is llama.cpp's decision, read from the tree of the
# build: a model class whose ``build_arch_graph`` handles ``LLM_GRAPH_TYPE_DECODER_MTP`` (in
# ``src/models/*.cpp``; subclasses in ``models.h`` inherit it unless they define their own),
# the ``LLM_ARCH_*`` that ``src/llama-model.cpp`` maps to that class, and the GGUF name
# ``src/llama-arch.cpp`` gives that enum. For any other architecture ``nextn_predict_layers``
# is only weight: llama.cpp either refuses the MTP context or never runs the heads.

MTP_SOURCES = ("src/models/models.h", "src/llama-model.cpp", "src/llama-arch.cpp")
"""Files :func:`mtp_architectures` reads besides every ``src/models/*.cpp``."""
_GRAPH = re.compile(r"llama_model_(\w+)::build_arch_graph\s*\(")
_PARENT = re.compile(r"struct\s+llama_model_(\w+)\s*:\s*public\s+llama_model_(\w+)")
_FACTORY = re.compile(r"((?:case\s+LLM_ARCH_\w+\s*:\s*)+)return\s+new\s+llama_model_(\w+)\s*\(")
_ARCH_NAME = re.compile(r"\{\s*(LLM_ARCH_\w+)\s*,\s*\"([^\"]+)\"\s*\}")


def mtp_architectures(
    model_sources: Iterable[str], models_h: str, llama_model_cpp: str, llama_arch_cpp: str
) -> frozenset[str]:
    """GGUF architecture names (``general.architecture``) that llama.cpp builds an MTP graph for."""
    own: dict[str, bool] = {}
    for text in model_sources:
        for m in _GRAPH.finditer(text):
            end = text.find("\n}", m.end())
            own[m[1]] = "LLM_GRAPH_TYPE_DECODER_MTP" in text[m.end() : end if end >= 0 else None]
    parents = {m[1]: m[2] for m in _PARENT.finditer(models_h)}

    def has_mtp(cls: str, depth: int = 0) -> bool:
        if cls in own:
            return own[cls]
        return depth < 8 and cls in parents and has_mtp(parents[cls], depth + 1)

    names = dict(_ARCH_NAME.findall(llama_arch_cpp))
    archs: set[str] = set()
    for m in _FACTORY.finditer(llama_model_cpp):
        if has_mtp(m[2]):
            archs.update(names[e] for e in re.findall(r"LLM_ARCH_\w+", m[1]) if e in names)
    return frozenset(archs)


def mtp_architectures_in(tree: Path) -> frozenset[str] | None:
    """:func:`mtp_architectures` of a checked-out tree; None when it lacks the files (an old or
    unusual tree: then nothing is known and MTP is judged by the GGUF alone)."""
    try:
        texts = [(tree / rel).read_text(errors="replace") for rel in MTP_SOURCES]
    except OSError:
        return None
    models = [p.read_text(errors="replace") for p in sorted((tree / "src" / "models").glob("*.cpp"))]
    return mtp_architectures(models, *texts) or None


def mtp_unusable(arch: str, nextn_layers: int, mtp_archs: frozenset[str] | None) -> str | None:
    """Why ``--spec-type draft-mtp`` cannot take effect for a GGUF (None: it can)."""
    if nextn_layers <= 0:
        return f"the GGUF ({arch}) has no MTP heads ({arch}.nextn_predict_layers is 0 or absent)"
    if mtp_archs is not None and arch not in mtp_archs:
        return (
            f"the pinned llama.cpp builds no MTP graph for architecture {arch!r} "
            f"(it does for: {', '.join(sorted(mtp_archs))})"
        )
    return None


def snapshot_lines(accepted: AcceptedFlags) -> list[str]:
    """The static snapshot format: one accepted long flag name per line, no dashes, sorted."""
    return accepted.long_names()
