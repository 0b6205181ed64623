"""YAML documents that remember where every key stands, so errors can name ``file:line``.

PyYAML's ``safe_load`` forgets positions. Here the document is composed into nodes first (which
carry marks), then built into plain Python data while recording the line of every mapping key and
sequence item under its *key path* (``("models", 0, "server")``). Validation errors from pydantic
use the same paths (``loc``), so a path is all it takes to find the line again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from .problems import Problem

KeyPath = tuple[str | int, ...]


class YamlSyntaxError(Exception):
    """The text is not YAML (or not the shape the caller asked for); carries the problem."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


@dataclass
class YamlDoc:
    """One parsed file: its data, where each key path sits, and how to name the file to people."""

    display: str
    """How messages name the file: a path (relative to the working directory when inside it) or URL."""
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)
    """1-based line of each mapping key / sequence item, by key path; ``()`` is the document."""
    problems: list[Problem] = field(default_factory=list)
    """Problems found while reading (duplicate keys); the data is still usable."""

    def line(self, path: KeyPath) -> int:
        """The line of ``path``, or of its nearest ancestor that exists in the file."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return 1

    def has(self, path: KeyPath) -> bool:
        return tuple(path) in self.lines

    def problem(self, path: KeyPath, message: str, *, line: int | None = None) -> Problem:
        return Problem(self.display, line if line is not None else self.line(path), path, message)


def display_name(path: Path) -> str:
    """A path as people would type it: relative to the working directory when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def parse_yaml(text: str, display: str) -> YamlDoc:
    """Parse one YAML document with positions. Raises :class:`YamlSyntaxError` on bad YAML."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 1
            what = " ".join(str(part) for part in (exc.context, exc.problem) if part)
            raise YamlSyntaxError(Problem(display, line, (), f"YAML syntax error: {what or exc}")) from None
        except yaml.YAMLError as exc:
            raise YamlSyntaxError(Problem(display, 1, (), f"YAML error: {exc}")) from None
        doc = YamlDoc(display=display, data=None)
        if node is None:
            return doc
        doc.lines[()] = node.start_mark.line + 1
        try:
            doc.data = _build(loader, node, (), doc, _Budget())
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            raise YamlSyntaxError(
                Problem(display, mark.line + 1 if mark else 1, (), f"YAML error: {exc.problem}")
            ) from None
        except ExpansionError as exc:
            raise YamlSyntaxError(Problem(display, exc.line, (), str(exc))) from None
        return doc
    finally:
        loader.dispose()


MAX_VALUES = 100_000
"""Values one document may expand to. Aliases are built anew at each use (so every key path has
its line), which lets a few lines of nested aliases (a "billion laughs") ask for billions."""
MAX_DEPTH = 100
"""Nesting depth; an alias inside its own anchor (``&a [*a]``) would otherwise never end."""


class ExpansionError(Exception):
    """The document expands beyond :data:`MAX_VALUES` or :data:`MAX_DEPTH`."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


@dataclass
class _Budget:
    values: int = 0


def _build(loader: yaml.SafeLoader, node: yaml.Node, path: KeyPath, doc: YamlDoc, budget: _Budget) -> Any:
    budget.values += 1
    if budget.values > MAX_VALUES or len(path) > MAX_DEPTH:
        what = f"more than {MAX_VALUES} values" if budget.values > MAX_VALUES else f"deeper than {MAX_DEPTH} levels"
        raise ExpansionError(
            f"the document expands to {what} (aliases nested in aliases, or an alias inside its own "
            "anchor?); an inventory file is far smaller: write the values out or reuse fewer aliases",
            node.start_mark.line + 1,
        )
    if isinstance(node, yaml.MappingNode):
        _check_duplicate_keys(loader, node, path, doc)
        loader.flatten_mapping(node)  # resolves `<<: *anchor` merges like safe_load does
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                doc.problems.append(
                    Problem(doc.display, key_node.start_mark.line + 1, path, "a key must be plain text")
                )
                continue
            # a float, bool or null key is kept as YAML gives it (the schema then rejects it)
            key_path = cast(KeyPath, (*path, key))
            doc.lines[key_path] = key_node.start_mark.line + 1
            result[key] = _build(loader, value_node, key_path, doc, budget)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            doc.lines[(*path, index)] = item.start_mark.line + 1
            items.append(_build(loader, item, (*path, index), doc, budget))
        return items
    return loader.construct_object(node, deep=True)


def _check_duplicate_keys(loader: yaml.SafeLoader, node: yaml.MappingNode, path: KeyPath, doc: YamlDoc) -> None:
    """YAML says keys are unique; PyYAML silently keeps the last. A duplicate is usually a
    mistake (two ``server:`` blocks), so it is reported. Keys merged in with ``<<`` may be
    overridden on purpose and are not checked."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        line = key_node.start_mark.line + 1
        if key in seen:
            doc.problems.append(
                Problem(
                    doc.display,
                    line,
                    path,
                    f"duplicate key {key!r} (first on line {seen[key]}); keep one of them",
                )
            )
        else:
            seen[key] = line
