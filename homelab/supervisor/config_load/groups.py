"""``groups`` (llama-swap's swap groups) and ``matrix`` (sets of models that may run together)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from ...matrix import (
    DEFAULT_GROUP,
    GroupConfig,
    MatrixConfig,
    MatrixError,
    MatrixExpressionError,
    compile_matrix,
    expression_names,
    expression_refs,
    is_name_char,
)
from ...suggest import closest
from ..config import ModelConfig
from .models import resolve_model_name
from .values import Value

GROUP_KEYS = ("swap", "exclusive", "persistent", "members")
MATRIX_KEYS = ("vars", "evict_costs", "sets")

VAR_NAME = re.compile(r"^[a-zA-Z0-9.-]{1,32}$")
"""llama-swap's var keys (its config-schema.json still says 1-8 letters or digits; the code allows this)."""


def parse_groups(
    section: Value | None, models: Mapping[str, ModelConfig], warnings: list[str] | None = None
) -> dict[str, GroupConfig]:
    """The groups. A member that is no model and resembles none is left out with a warning
    (llama-swap accepts and ignores it; its own config.example.yaml has such illustrative
    members); one that looks like a typo of a model ID stays an error with the suggestion."""
    groups: dict[str, GroupConfig] = {}
    member_of: dict[str, str] = {}
    if section is not None:
        for group_name, (key, value) in section.entries("a mapping of group names to groups").items():
            if group_name == DEFAULT_GROUP:
                raise key.error(
                    f"{DEFAULT_GROUP} is the name of the implicit group of ungrouped models", "rename the group"
                )
            fields = value.mapping(GROUP_KEYS)
            members: list[str] = []
            for item in fields["members"].items() if "members" in fields else []:
                name = item.string()
                if name not in models and warnings is not None and closest(name, models) is None:
                    warnings.append(
                        f"{item.source}:{item.line}: {item.path}: group member {name!r} is not a model, so it is "
                        "ignored (as llama-swap does)"
                    )
                    continue
                member = resolve_model_name(name, item, models, "group member")
                if member in members:
                    raise item.error(f"{member!r} is listed twice in group {group_name!r}", "list it once")
                if member in member_of:
                    raise item.error(
                        f"model {member!r} is already in group {member_of[member]!r}",
                        "a model can be in only one group",
                    )
                member_of[member] = group_name
                members.append(member)
            groups[group_name] = GroupConfig(
                name=group_name,
                members=tuple(members),
                swap=fields["swap"].boolean() if "swap" in fields else True,
                exclusive=fields["exclusive"].boolean() if "exclusive" in fields else True,
                persistent=fields["persistent"].boolean() if "persistent" in fields else False,
            )
    # Ungrouped models are in llama-swap's implicit default group (swap and exclusive); that group
    # is not materialised here: group_evictions() applies it, and an empty ``groups`` tells the
    # runtime the config uses no groups at all.
    return groups


def parse_matrix(section: Value, models: Mapping[str, ModelConfig]) -> MatrixConfig:
    fields = section.mapping(MATRIX_KEYS)
    variables: dict[str, str] = {}
    for var, (key, value) in (fields["vars"].entries() if "vars" in fields else {}).items():
        if not VAR_NAME.match(var):
            raise key.error(f"var {var!r} must be 1-32 letters, digits, '-' or '.'")
        variables[var] = resolve_model_name(value.string(), value, models, f"var {var!r} names")

    def resolve(name: str, at: Value, what: str) -> str:
        if name in variables:
            return variables[name]
        if name in models:
            return name
        near = closest(name, [*variables, *models])
        fix = f"did you mean {near!r}?" if near else "use a model ID or a name from matrix.vars"
        if any(not all(is_name_char(c) for c in model_id) for model_id in models):
            fix += " (model IDs with '/' or ':' need a short name in matrix.vars)"
        raise at.error(f"{what} {name!r} is neither a matrix var nor a model", fix)

    costs: dict[str, int] = {}
    cost_source: dict[str, str] = {}
    for name, (key, value) in (fields["evict_costs"].entries() if "evict_costs" in fields else {}).items():
        model = resolve(name, key, "evict_costs key")
        if model in cost_source:
            raise key.error(f"{cost_source[model]!r} and {name!r} both name model {model!r}", "keep one")
        cost_source[model] = name
        costs[model] = value.integer(minimum=1)

    set_entries = fields["sets"].entries() if "sets" in fields else {}
    if not set_entries:
        raise (fields.get("sets") or section).error("matrix needs at least one set under sets:")
    expressions: dict[str, str] = {}
    for set_name, (_, value) in set_entries.items():
        text = value.string(allow_empty=False)
        try:
            names = expression_names(text)
        except MatrixExpressionError as exc:
            raise value.error(str(exc)) from None
        for name in sorted(names):
            resolve(name, value, f"set {set_name!r}:")
        for ref in sorted(expression_refs(text)):
            if ref not in set_entries:
                raise value.error(
                    f"set {set_name!r} references +{ref}, which is not a set",
                    f"defined sets: {', '.join(set_entries)}",
                )
        expressions[set_name] = text
    try:
        # Compiled, never expanded: llama-swap puts no cap on the alternatives a matrix describes.
        return compile_matrix(expressions, variables, costs)
    except (MatrixError, MatrixExpressionError) as exc:
        raise fields["sets"].error(str(exc)) from None
