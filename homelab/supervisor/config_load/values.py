"""YAML with locations for the supervisor config: every value knows its file, line and key path.

:class:`Value` wraps a :func:`yaml.compose` node so each check can raise a :class:`ConfigError`
of the form ``file:line: key.path: problem; fix``. Unknown keys are refused with the nearest valid
key (``x-*`` keys are free for extensions), duplicate keys are refused, ``<<`` merges work.

``${env.NAME}`` is substituted here too, in the YAML text before parsing, as llama-swap does
(so ``ttl: ${env.TTL}`` is a number), but only inside YAML scalars (never comments) and escaped
for the scalar's quoting style.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from ...errors import HomelabError
from ...suggest import closest


class ConfigError(HomelabError):
    """A supervisor config that cannot be used; the message has file:line, key path and fix."""


ENV_MACRO = re.compile(r"\$\{env\.([A-Za-z_][A-Za-z0-9_]*)\}")

YAML_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's loader where PyYAML was built with it: composing is ~3x faster, marks are the same."""


@dataclass(frozen=True)
class Value:
    """A YAML node with where it came from: every check can say file:line and key path."""

    node: yaml.Node
    path: str
    source: str

    @property
    def line(self) -> int:
        return self.node.start_mark.line + 1

    def error(self, problem: str, fix: str | None = None) -> ConfigError:
        where = f"{self.source}:{self.line}: {self.path}" if self.path else f"{self.source}:{self.line}"
        return ConfigError(f"{where}: {problem}" + (f"; {fix}" if fix else ""))

    def child(self, node: yaml.Node, key: str | int) -> Value:
        part = f"[{key}]" if isinstance(key, int) else (f".{key}" if self.path else key)
        return Value(node, f"{self.path}{part}", self.source)

    # -- shapes

    @property
    def is_null(self) -> bool:
        return isinstance(self.node, yaml.ScalarNode) and self.node.tag == "tag:yaml.org,2002:null"

    def python(self) -> Any:
        loader = yaml.SafeLoader("")
        try:
            return plain_data(loader.construct_document(self.node))
        finally:
            loader.dispose()

    def entries(self, what: str = "a mapping") -> dict[str, tuple[Value, Value]]:
        """Key -> (key value, value) in order; duplicate keys are errors, ``<<`` merges work."""
        if self.is_null:
            return {}
        if not isinstance(self.node, yaml.MappingNode):
            raise self.error(f"expected {what}, found {kind_of(self.node)}")
        seen: dict[str, int] = {}
        for key_node, _ in self.node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is None:
                raise self.error("keys must be plain strings")
            if key in seen:
                raise self.child(key_node, key).error(f"duplicate key (first at line {seen[key]})", "keep only one")
            seen[key] = key_node.start_mark.line + 1
        loader = yaml.SafeLoader("")
        try:
            loader.flatten_mapping(self.node)  # resolves ``<<: *anchor`` merges in place
        except yaml.YAMLError as exc:
            raise self.error(f"bad merge key: {exc}") from None
        finally:
            loader.dispose()
        result: dict[str, tuple[Value, Value]] = {}
        for key_node, value_node in self.node.value:
            key = str(key_node.value)
            result[key] = (self.child(key_node, key), self.child(value_node, key))
        return result

    def mapping(self, allowed: Iterable[str], unsupported: Mapping[str, str] | None = None) -> dict[str, Value]:
        """Entries whose keys are all in ``allowed`` (``x-*`` keys are skipped)."""
        allowed = tuple(allowed)
        result: dict[str, Value] = {}
        for key, (key_value, value) in self.entries().items():
            if key.startswith("x-"):
                continue
            if key not in allowed:
                if unsupported and key in unsupported:
                    raise key_value.error(unsupported[key])
                raise key_value.error("unknown key", suggest(key, allowed))
            result[key] = value
        return result

    def extensions(self) -> dict[str, Value]:
        return {key: value for key, (_, value) in self.entries().items() if key.startswith("x-")}

    def items(self) -> list[Value]:
        if self.is_null:
            return []
        if not isinstance(self.node, yaml.SequenceNode):
            raise self.error(f"expected a list, found {kind_of(self.node)}", "write it as [a, b] or a '- item' list")
        return [self.child(node, i) for i, node in enumerate(self.node.value)]

    # -- scalars

    def string(self, *, allow_empty: bool = True) -> str:
        value = self.python() if isinstance(self.node, yaml.ScalarNode) else None
        if not isinstance(value, str):
            if isinstance(self.node, yaml.ScalarNode) and not self.is_null:
                value = self.node.value  # numbers and booleans as written: ``name: 7b`` is fine
            else:
                raise self.error(f"expected a string, found {kind_of(self.node)}")
        if not allow_empty and not value.strip():
            raise self.error("must not be empty")
        return value

    def boolean(self) -> bool:
        value = self.python() if isinstance(self.node, yaml.ScalarNode) else None
        if not isinstance(value, bool):
            raise self.error(f"expected true or false, found {kind_of(self.node)}")
        return value

    def integer(self, minimum: int | None = None) -> int:
        value = self.python() if isinstance(self.node, yaml.ScalarNode) else None
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(f"expected a whole number, found {kind_of(self.node)}")
        if minimum is not None and value < minimum:
            raise self.error(f"must be at least {minimum}, found {value}")
        return value

    def number(self, minimum: float | None = None) -> float:
        value = self.python() if isinstance(self.node, yaml.ScalarNode) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise self.error(f"expected a number, found {kind_of(self.node)}")
        if minimum is not None and value < minimum:
            raise self.error(f"must be at least {minimum:g}, found {value:g}")
        return float(value)

    def string_list(self) -> list[str]:
        if isinstance(self.node, yaml.ScalarNode) and not self.is_null:
            raise self.error("expected a list of strings", f"write it as a list: [{self.node.value}]")
        return [item.string(allow_empty=False) for item in self.items()]


def plain_data(value: Any) -> Any:
    """JSON-safe data: YAML timestamps become their ISO text (metadata and parameters end up in
    JSON responses and request bodies)."""
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: plain_data(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain_data(item) for item in value]
    return value


def kind_of(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == "tag:yaml.org,2002:null":
        return "nothing (null)"
    return f"{node.value!r}"


def suggest(key: str, valid: Iterable[str]) -> str:
    valid = list(valid)
    near = closest(key, valid)
    if near:
        return f"did you mean {near!r}? (keys starting with 'x-' are free for extensions)"
    return f"valid keys here: {', '.join(valid)} (or an 'x-' extension key)"


def compose(text: str, source: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=YAML_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = exc.problem or str(exc)
        raise ConfigError(f"{source}{line}: not valid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None


# --------------------------------------------------------------------------- ${env.NAME}


def scalar_nodes(root: yaml.Node) -> Iterator[yaml.ScalarNode]:
    """Every scalar (keys included), each node once even when reached through an alias."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            yield node
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.extend((key, value))


def substitute_env(text: str, source: str, env: Mapping[str, str]) -> str:
    """Replace ``${env.NAME}`` inside YAML scalars (not comments), escaping for the scalar's style.

    Lines stay where they were (values with newlines are refused, as llama-swap does), so later
    errors still point at the right line.
    """
    if "${env." not in text:
        return text
    try:
        root = yaml.compose(text, Loader=YAML_LOADER)
    except yaml.YAMLError:
        # Only valid once substituted (e.g. ``{ttl: ${env.TTL}}`` in flow style): substitute
        # everywhere, as llama-swap's fallback does; parsing afterwards reports what is left.
        return ENV_MACRO.sub(lambda m: env_value(m.group(1), text.count("\n", 0, m.start()) + 1, source, env), text)
    if root is None:
        return text
    spans: list[tuple[int, int, str | None, int]] = []
    for node in scalar_nodes(root):
        # node.value is the parsed text; the raw span in the file is what gets rewritten.
        if ENV_MACRO.search(text[node.start_mark.index : node.end_mark.index]):
            spans.append((node.start_mark.index, node.end_mark.index, node.style, node.start_mark.line + 1))
    spans.sort()
    for start, end, _, line in spans:  # check first, so the first unset variable is the one named
        for match in ENV_MACRO.finditer(text, start, end):
            env_value(match.group(1), line, source, env)
    for start, end, style, _ in reversed(spans):
        text = text[:start] + substitute_env_in_scalar(text[start:end], style, env) + text[end:]
    return text


def substitute_env_in_scalar(raw: str, style: str | None, env: Mapping[str, str]) -> str:
    return ENV_MACRO.sub(lambda match: escape_for_style(env[match.group(1)], style), raw)


def env_value(name: str, line: int, source: str, env: Mapping[str, str]) -> str:
    if name not in env:
        raise ConfigError(
            f"{source}:{line}: environment variable {name!r} is not set (used as ${{env.{name}}}); "
            f"export {name}=... before starting, or remove the reference"
        )
    value = env[name]
    if any(ch in value for ch in "\n\r\0"):
        raise ConfigError(
            f"{source}:{line}: environment variable {name!r} contains a newline or NUL, "
            f"which cannot be substituted into the config"
        )
    return value


def escape_for_style(value: str, style: str | None) -> str:
    if style == '"':
        return value.replace("\\", "\\\\").replace('"', '\\"')
    if style == "'":
        return value.replace("'", "''")
    return value
