"""llama-swap's swap matrix: the set-expression language and the eviction solver (pure).

A leaf module (it imports only :mod:`homelab.errors`): the inventory and the planner check and
expand a host's ``sets`` with it, and the supervisor solves evictions with it at run time (as
llama-swap's ``internal/matrix``), so neither side imports the other.

A matrix ``set`` is an expression over model names (or ``vars`` short names)::

    a & b          a and b together (one alternative: {a, b})
    a | b          a or b (two alternatives: {a}, {b})
    (a | b) & c    parentheses group; & is a cartesian product: {a, c}, {b, c}
    +other         every alternative of the set named ``other``

``&`` binds tighter than ``|`` (llama-swap's grammar: ``a | b & c`` is ``a | (b & c)``).
Names are letters, digits, ``_``, ``-`` and ``.``; IDs with ``/`` or ``:`` must go through
``vars``. An expression expands to a list of alternatives; any subset of one alternative may
be resident together.

The solver (:func:`solve`) picks, among all alternatives that contain the requested model, the
one whose eviction of currently running models costs least (sum of ``evict_costs``, default 1);
ties go to the alternative defined first. A model that appears in no set runs alone. Only the
requested model is started; the rest of the chosen alternative is merely allowed to stay.

Group semantics (llama-swap's ``groups``) are here too, as :func:`group_evictions`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from homelab.errors import HomelabError

MAX_ALTERNATIVES = 1000
"""llama-swap caps an expansion at 1000 combinations; so do we (a typo like ``a&b&c&...``
over large ``|`` groups would otherwise explode)."""


@dataclass(frozen=True)
class GroupConfig:
    name: str
    members: tuple[str, ...]
    swap: bool = True
    exclusive: bool = True
    persistent: bool = False


@dataclass(frozen=True)
class MatrixConfig:
    vars: dict[str, str]
    """Short name -> model ID."""
    evict_costs: dict[str, int]
    """Model ID -> cost of evicting it (default 1)."""
    sets: dict[str, tuple[frozenset[str], ...]]
    """Set name -> the alternatives it allows, each a frozenset of model IDs, in definition order.
    Any subset of an alternative may run together."""


class MatrixExpressionError(HomelabError):
    """A set expression that does not parse or expand. ``position`` is a 0-based offset."""

    def __init__(self, text: str, position: int, problem: str) -> None:
        self.text = text
        self.position = position
        self.problem = problem
        marked = f"{text[:position]}<here>{text[position:]}"
        super().__init__(f"set expression {text!r}: {problem} at position {position} ({marked})")


# --------------------------------------------------------------------------- lexer


def is_name_char(ch: str) -> bool:
    """Characters allowed in a model name or set name inside an expression (llama-swap's)."""
    return ch.isalnum() or ch in "_-."


@dataclass(frozen=True)
class Token:
    kind: str
    """One of ``name``, ``ref``, ``&``, ``|``, ``(``, ``)``, ``end``."""
    value: str
    position: int


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "&|()":
            tokens.append(Token(ch, ch, i))
            i += 1
        elif ch == "+":
            start = i + 1
            end = scan_name(text, start)
            if end == start:
                raise MatrixExpressionError(text, start, "expected a set name after '+'")
            tokens.append(Token("ref", text[start:end], i))
            i = end
        elif is_name_char(ch):
            end = scan_name(text, i)
            tokens.append(Token("name", text[i:end], i))
            i = end
        else:
            hint = " (model IDs with '/' or ':' need a short name in matrix.vars)" if ch in "/:" else ""
            raise MatrixExpressionError(text, i, f"unexpected character {ch!r}{hint}")
    tokens.append(Token("end", "", len(text)))
    return tokens


def scan_name(text: str, start: int) -> int:
    end = start
    while end < len(text) and is_name_char(text[end]):
        end += 1
    return end


# --------------------------------------------------------------------------- parser + expansion


Alternatives = list[frozenset[str]]


class Parser:
    """Recursive descent that expands while it parses (the expansion is the only result we need).

    Grammar::

        expr = and_expr ('|' and_expr)*
        and_expr = atom ('&' atom)*
        atom = name | '+' name | '(' expr ')'
    """

    def __init__(self, text: str, refs: Mapping[str, Alternatives]) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0
        self.refs = refs

    def peek(self) -> Token:
        return self.tokens[self.index]

    def take(self) -> Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def fail(self, token: Token, problem: str) -> MatrixExpressionError:
        return MatrixExpressionError(self.text, token.position, problem)

    def parse(self) -> Alternatives:
        if self.peek().kind == "end":
            raise self.fail(self.peek(), "empty expression (write model names joined by & and |)")
        result = self.expr()
        trailing = self.peek()
        if trailing.kind != "end":
            if trailing.kind == ")":
                raise self.fail(trailing, "unmatched ')'")
            raise self.fail(trailing, f"expected '&', '|' or the end, found {describe(trailing)}")
        return result

    def expr(self) -> Alternatives:
        result = self.and_expr()
        while self.peek().kind == "|":
            operator = self.take()
            result = result + self.and_expr()
            if len(result) > MAX_ALTERNATIVES:
                raise self.fail(operator, f"expands to more than {MAX_ALTERNATIVES} alternatives")
        return result

    def and_expr(self) -> Alternatives:
        result = self.atom()
        while self.peek().kind == "&":
            operator = self.take()
            right = self.atom()
            if len(result) * len(right) > MAX_ALTERNATIVES:
                raise self.fail(operator, f"expands to more than {MAX_ALTERNATIVES} alternatives")
            result = [left | other for left in result for other in right]
        return result

    def atom(self) -> Alternatives:
        token = self.take()
        if token.kind == "name":
            return [frozenset((token.value,))]
        if token.kind == "ref":
            if token.value not in self.refs:
                known = ", ".join(sorted(self.refs)) or "none"
                raise self.fail(token, f"unknown set +{token.value} (known sets: {known})")
            return list(self.refs[token.value])
        if token.kind == "(":
            if self.peek().kind == ")":
                raise self.fail(self.peek(), "empty parentheses")
            inner = self.expr()
            closing = self.take()
            if closing.kind != ")":
                raise self.fail(closing, "missing ')'")
            return inner
        raise self.fail(token, f"expected a model name, '+set' or '(', found {describe(token)}")


def describe(token: Token) -> str:
    if token.kind == "end":
        return "the end"
    if token.kind == "ref":
        return f"'+{token.value}'"
    return repr(token.value)


def unique_in_order(alternatives: Iterable[frozenset[str]]) -> Alternatives:
    seen: set[frozenset[str]] = set()
    result: Alternatives = []
    for alternative in alternatives:
        if alternative not in seen:
            seen.add(alternative)
            result.append(alternative)
    return result


def parse_expression(text: str, refs: Mapping[str, Alternatives] | None = None) -> Alternatives:
    """Expand a set expression into its alternatives (each a frozenset of names), in order.

    ``refs`` maps set names to their already-expanded alternatives, for ``+name``. Names are
    returned as written (``vars`` short names are not resolved here). Duplicate alternatives are
    dropped (first one kept). Raises :class:`MatrixExpressionError` naming the position.
    """
    return unique_in_order(Parser(text, refs or {}).parse())


def expression_names(text: str) -> set[str]:
    """The model names (or var names) an expression mentions, without ``+refs``; syntax is checked."""
    tokens = tokenize(text)
    Parser(text, _AnyRef()).parse()
    return {token.value for token in tokens if token.kind == "name"}


def expression_refs(text: str) -> set[str]:
    """The set names an expression references with ``+name``."""
    return {token.value for token in tokenize(text) if token.kind == "ref"}


class _AnyRef(Mapping[str, Alternatives]):
    """Stands in for every set during a syntax-only check."""

    def __getitem__(self, key: str) -> Alternatives:
        return [frozenset()]

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0


def expand_sets(
    expressions: Mapping[str, str], resolve_name: Mapping[str, str] | None = None
) -> dict[str, tuple[frozenset[str], ...]]:
    """Expand every named set, allowing ``+ref`` to any other set (forward references too).

    ``resolve_name`` maps var short names to model IDs (names not in it are kept). Returns the sets
    in definition order. Raises :class:`MatrixError` for cycles and unknown references.
    """
    resolve_name = resolve_name or {}
    expanded: dict[str, Alternatives] = {}
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in expanded:
            return
        if name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(name) :], name])
            raise MatrixError(f"sets reference each other in a cycle: {cycle}")
        visiting.append(name)
        for ref in sorted(expression_refs(expressions[name])):
            if ref not in expressions:
                raise MatrixError(
                    f"set {name!r} references +{ref}, which is not defined (defined sets: {', '.join(expressions)})"
                )
            visit(ref)
        visiting.pop()
        expanded[name] = parse_expression(expressions[name], expanded)

    for name in expressions:
        visit(name)
    total = sum(len(alternatives) for alternatives in expanded.values())
    if total > MAX_ALTERNATIVES:
        raise MatrixError(f"the sets expand to {total} alternatives, over the limit {MAX_ALTERNATIVES}")
    return {
        name: tuple(unique_in_order(frozenset(resolve_name.get(n, n) for n in alt) for alt in expanded[name]))
        for name in expressions
    }


class MatrixError(HomelabError):
    """A matrix that is inconsistent as a whole (cycles, unknown references)."""


# --------------------------------------------------------------------------- solver


@dataclass(frozen=True)
class Decision:
    """What to do before starting ``target``: stop ``evict``; ``alternative`` may then run."""

    target: str
    evict: frozenset[str]
    alternative: frozenset[str]
    """The chosen alternative (every model allowed to stay resident with the target)."""
    set_name: str | None
    """The set the alternative came from; None when the target is in no set and runs alone."""
    cost: int
    """Sum of the evict costs of ``evict``."""


def evict_cost(matrix: MatrixConfig, model: str) -> int:
    return matrix.evict_costs.get(model, 1)


def alternatives_in_order(matrix: MatrixConfig) -> list[tuple[str, frozenset[str]]]:
    """Every (set name, alternative) pair, sets in definition order, alternatives in order."""
    return [(name, alt) for name, alts in matrix.sets.items() for alt in alts]


def solve(matrix: MatrixConfig, running: frozenset[str], target: str) -> Decision:
    """Pick the alternative containing ``target`` that evicts the cheapest running models.

    Cost of an alternative = sum of ``evict_costs`` (default 1) of the running models outside it.
    Ties go to the alternative defined first. A target in no set runs alone: every other running
    model is evicted. When the running models already fit one alternative with the target, the cost
    is 0 and nothing is evicted (llama-swap's "already running" fast path falls out of this).
    Only the target is to be started; the rest of the alternative is merely allowed to stay.
    """
    others = running - {target}
    best: tuple[int, str, frozenset[str]] | None = None
    for name, alternative in alternatives_in_order(matrix):
        if target not in alternative:
            continue
        cost = sum(evict_cost(matrix, model) for model in others - alternative)
        if best is None or cost < best[0]:
            best = (cost, name, alternative)
    if best is None:
        cost = sum(evict_cost(matrix, model) for model in others)
        return Decision(target, frozenset(others), frozenset((target,)), None, cost)
    cost, name, alternative = best
    return Decision(target, frozenset(others - alternative), alternative, name, cost)


# --------------------------------------------------------------------------- groups


DEFAULT_GROUP = "(default)"
"""llama-swap's implicit group for models listed in no group (swap and exclusive)."""


def group_of(groups: Mapping[str, GroupConfig], model: str) -> GroupConfig | None:
    for group in groups.values():
        if model in group.members:
            return group
    return None


def group_evictions(groups: Mapping[str, GroupConfig], running: frozenset[str], target: str) -> frozenset[str]:
    """Running models to stop before ``target`` starts, under llama-swap's group rules.

    - ``swap: true``: only one member of a group runs at a time, so starting a member stops the
      other running members of its group (``swap: false``: members run side by side).
    - ``exclusive: true``: starting a member also stops every running model of every other group,
      except groups marked ``persistent``.
    - ``persistent: true``: the group's models are never stopped by another group's start.
    A model in no group is treated as a member of llama-swap's implicit default group
    (swap and exclusive) together with every other ungrouped model.
    """
    group = group_of(groups, target)
    if group is None:
        ungrouped = frozenset(m for m in running | {target} if group_of(groups, m) is None)
        group = GroupConfig(DEFAULT_GROUP, tuple(sorted(ungrouped)))
    members = frozenset(group.members)
    evict: set[str] = set()
    if group.swap:
        evict |= (running & members) - {target}
    if group.exclusive:
        for model in running - members:
            other = group_of(groups, model)
            if other is None or not other.persistent:
                evict.add(model)
    return frozenset(evict - {target})
