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
``vars``. Any subset of one alternative may be resident together.

Two uses, two forms:

* The supervisor compiles the sets into a :class:`MatrixProgram` (an expression graph, never
  expanded) and :func:`solve` works as llama-swap's solver does: it projects every choice onto
  the few models that matter for one decision (the target and the running models) as bit masks,
  keeps only masks no other mask contains, and picks the cheapest. So there is no cap on how
  many alternatives the sets describe: ten ``|`` groups of ten models stay a small graph.
* The planner needs every alternative (each must fit the GPUs): :func:`expand_sets` expands,
  capped at :data:`MAX_ALTERNATIVES`.

The solver picks, among the choices that contain the requested model, the one whose eviction of
running models costs least (sum of ``evict_costs``, default 1); ties go to the set that comes
first in llama-swap's order (definition order, a set after the sets it references) and, within
a set, to the first choice. A model that appears in no set runs alone. Only the requested model
is started; the rest of the chosen alternative is merely allowed to stay.

Group semantics (llama-swap's ``groups``) are here too, as :func:`group_evictions`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from homelab.errors import HomelabError

MAX_ALTERNATIVES = 1000
"""Cap on :func:`expand_sets` (the planner checks each alternative against the GPUs). The
supervisor's solver never expands, so a config it loads has no such cap."""


@dataclass(frozen=True)
class GroupConfig:
    name: str
    members: tuple[str, ...]
    swap: bool = True
    exclusive: bool = True
    persistent: bool = False


class MatrixExpressionError(HomelabError):
    """A set expression that does not parse or expand. ``position`` is a 0-based offset."""

    def __init__(self, text: str, position: int, problem: str) -> None:
        self.text = text
        self.position = position
        self.problem = problem
        marked = f"{text[:position]}<here>{text[position:]}"
        super().__init__(f"set expression {text!r}: {problem} at position {position} ({marked})")


class MatrixError(HomelabError):
    """A matrix that is inconsistent as a whole (cycles, unknown references)."""


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


# --------------------------------------------------------------------------- syntax tree


@dataclass(frozen=True, eq=False)
class Leaf:
    name: str
    position: int


@dataclass(frozen=True, eq=False)
class Ref:
    name: str
    position: int


@dataclass(frozen=True, eq=False)
class And:
    children: tuple[Node, ...]
    position: int
    """Where the first ``&`` is (for expansion errors)."""


@dataclass(frozen=True, eq=False)
class Or:
    children: tuple[Node, ...]
    position: int


Node = Leaf | Ref | And | Or


class Parser:
    """Recursive descent into a syntax tree.

    Grammar::

        expr = and_expr ('|' and_expr)*
        and_expr = atom ('&' atom)*
        atom = name | '+' name | '(' expr ')'
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0

    def peek(self) -> Token:
        return self.tokens[self.index]

    def take(self) -> Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def fail(self, token: Token, problem: str) -> MatrixExpressionError:
        return MatrixExpressionError(self.text, token.position, problem)

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise self.fail(self.peek(), "empty expression (write model names joined by & and |)")
        result = self.expr()
        trailing = self.peek()
        if trailing.kind != "end":
            if trailing.kind == ")":
                raise self.fail(trailing, "unmatched ')'")
            raise self.fail(trailing, f"expected '&', '|' or the end, found {describe(trailing)}")
        return result

    def expr(self) -> Node:
        children = [self.and_expr()]
        position = self.peek().position
        while self.peek().kind == "|":
            self.take()
            children.append(self.and_expr())
        return children[0] if len(children) == 1 else Or(tuple(children), position)

    def and_expr(self) -> Node:
        children = [self.atom()]
        position = self.peek().position
        while self.peek().kind == "&":
            self.take()
            children.append(self.atom())
        return children[0] if len(children) == 1 else And(tuple(children), position)

    def atom(self) -> Node:
        token = self.take()
        if token.kind == "name":
            return Leaf(token.value, token.position)
        if token.kind == "ref":
            return Ref(token.value, token.position)
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


def parse_tree(text: str) -> Node:
    """The syntax tree of one expression; raises :class:`MatrixExpressionError`."""
    return Parser(text).parse()


def walk(node: Node) -> Iterable[Node]:
    yield node
    if isinstance(node, (And, Or)):
        for child in node.children:
            yield from walk(child)


def expression_names(text: str) -> set[str]:
    """The model names (or var names) an expression mentions, without ``+refs``; syntax is checked."""
    return {node.name for node in walk(parse_tree(text)) if isinstance(node, Leaf)}


def rename_expression(text: str, names: Mapping[str, str]) -> str:
    """The expression with each model name in ``names`` replaced (``+refs``, operators and
    spacing kept as written)."""
    out: list[str] = []
    last = 0
    for token in tokenize(text):
        if token.kind == "name" and token.value in names:
            out += [text[last : token.position], names[token.value]]
            last = token.position + len(token.value)
    return "".join(out) + text[last:]


def expression_refs(text: str) -> set[str]:
    """The set names an expression references with ``+name``."""
    return {token.value for token in tokenize(text) if token.kind == "ref"}


# --------------------------------------------------------------------------- expansion (planner)


Alternatives = list[frozenset[str]]


def unique_in_order(alternatives: Iterable[frozenset[str]]) -> Alternatives:
    seen: set[frozenset[str]] = set()
    result: Alternatives = []
    for alternative in alternatives:
        if alternative not in seen:
            seen.add(alternative)
            result.append(alternative)
    return result


def expand(node: Node, text: str, refs: Mapping[str, Alternatives]) -> Alternatives:
    """Every alternative a tree describes, in order; capped at :data:`MAX_ALTERNATIVES`."""
    if isinstance(node, Leaf):
        return [frozenset((node.name,))]
    if isinstance(node, Ref):
        if node.name not in refs:
            known = ", ".join(sorted(refs)) or "none"
            raise MatrixExpressionError(text, node.position, f"unknown set +{node.name} (known sets: {known})")
        return list(refs[node.name])
    if isinstance(node, Or):
        result: Alternatives = []
        for child in node.children:
            result = result + expand(child, text, refs)
            if len(result) > MAX_ALTERNATIVES:
                raise MatrixExpressionError(
                    text, node.position, f"expands to more than {MAX_ALTERNATIVES} alternatives"
                )
        return result
    product: Alternatives = [frozenset()]
    for child in node.children:
        right = expand(child, text, refs)
        if len(product) * len(right) > MAX_ALTERNATIVES:
            raise MatrixExpressionError(text, node.position, f"expands to more than {MAX_ALTERNATIVES} alternatives")
        product = [left | other for left in product for other in right]
    return product


def parse_expression(text: str, refs: Mapping[str, Alternatives] | None = None) -> Alternatives:
    """Expand a set expression into its alternatives (each a frozenset of names), in order.

    ``refs`` maps set names to their already-expanded alternatives, for ``+name``. Names are
    returned as written (``vars`` short names are not resolved here). Duplicate alternatives are
    dropped (first one kept). Raises :class:`MatrixExpressionError` naming the position.
    """
    return unique_in_order(expand(parse_tree(text), text, refs or {}))


def set_order(expressions: Mapping[str, str]) -> list[str]:
    """llama-swap's set order: definition order, each set after the sets it references (depth
    first). Raises :class:`MatrixError` for cycles and unknown references."""
    order: list[str] = []
    done: set[str] = set()
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(name) :], name])
            raise MatrixError(f"sets reference each other in a cycle: {cycle}")
        visiting.append(name)
        for ref in sorted(expression_refs(expressions[name]), key=expressions[name].index):
            if ref not in expressions:
                raise MatrixError(
                    f"set {name!r} references +{ref}, which is not defined (defined sets: {', '.join(expressions)})"
                )
            visit(ref)
        visiting.pop()
        done.add(name)
        order.append(name)

    for name in expressions:
        visit(name)
    return order


def expand_sets(
    expressions: Mapping[str, str], resolve_name: Mapping[str, str] | None = None
) -> dict[str, tuple[frozenset[str], ...]]:
    """Expand every named set, allowing ``+ref`` to any other set (forward references too).

    ``resolve_name`` maps var short names to model IDs (names not in it are kept). Returns the sets
    in definition order. Raises :class:`MatrixError` for cycles and unknown references, and
    :class:`MatrixExpressionError` past :data:`MAX_ALTERNATIVES`.
    """
    resolve_name = resolve_name or {}
    expanded: dict[str, Alternatives] = {}
    for name in set_order(expressions):
        expanded[name] = parse_expression(expressions[name], expanded)
    total = sum(len(alternatives) for alternatives in expanded.values())
    if total > MAX_ALTERNATIVES:
        raise MatrixError(f"the sets expand to {total} alternatives, over the limit {MAX_ALTERNATIVES}")
    return {
        name: tuple(unique_in_order(frozenset(resolve_name.get(n, n) for n in alt) for alt in expanded[name]))
        for name in expressions
    }


# --------------------------------------------------------------------------- compiled program (supervisor)


@dataclass(frozen=True, eq=False)
class CompiledSet:
    name: str
    text: str
    root: Node
    """Leaves hold model IDs (vars resolved); refs are looked up in the program."""
    support: frozenset[str]
    """Every model the expression can mention: a query for others skips the set."""


@dataclass(frozen=True, eq=False)
class MatrixProgram:
    sets: tuple[CompiledSet, ...]
    """In llama-swap's order (see :func:`set_order`)."""

    def root(self, name: str) -> Node:
        return next(s.root for s in self.sets if s.name == name)


def resolve_tree(node: Node, resolve: Callable[[str], str]) -> Node:
    if isinstance(node, Leaf):
        return Leaf(resolve(node.name), node.position)
    if isinstance(node, Ref):
        return node
    children = tuple(resolve_tree(child, resolve) for child in node.children)
    return And(children, node.position) if isinstance(node, And) else Or(children, node.position)


def compile_sets(expressions: Mapping[str, str], resolve: Callable[[str], str] | None = None) -> MatrixProgram:
    """Parse, resolve (``resolve`` maps a name to a model ID, raising for unknown names) and link
    the sets without expanding them. Raises :class:`MatrixExpressionError` / :class:`MatrixError`."""
    if not expressions:
        raise MatrixError("matrix must define at least one set")
    trees = {name: resolve_tree(parse_tree(text), resolve or (lambda n: n)) for name, text in expressions.items()}
    order = set_order(expressions)
    support: dict[str, frozenset[str]] = {}
    for name in order:  # references come first, so their support is known
        names: set[str] = set()
        for node in walk(trees[name]):
            if isinstance(node, Leaf):
                names.add(node.name)
            elif isinstance(node, Ref):
                names |= support[node.name]
        support[name] = frozenset(names)
    return MatrixProgram(tuple(CompiledSet(name, expressions[name], trees[name], support[name]) for name in order))


@dataclass(frozen=True)
class MatrixConfig:
    vars: dict[str, str]
    """Short name -> model ID."""
    evict_costs: dict[str, int]
    """Model ID -> cost of evicting it (default 1)."""
    sets: dict[str, str]
    """Set name -> its expression as written, in definition order."""
    program: MatrixProgram = field(repr=False, compare=False)

    def alternatives(self, name: str) -> tuple[frozenset[str], ...]:
        """One set's alternatives as model IDs, expanded (for display and tests; capped)."""
        return expand_sets(self.sets, self.vars)[name]


def compile_matrix(
    sets: Mapping[str, str], variables: Mapping[str, str] | None = None, evict_costs: Mapping[str, int] | None = None
) -> MatrixConfig:
    """A :class:`MatrixConfig` from expressions whose names are model IDs or ``variables``."""
    variables = dict(variables or {})
    program = compile_sets(sets, lambda n: variables.get(n, n))
    return MatrixConfig(dict(variables), dict(evict_costs or {}), dict(sets), program)


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


Witness = str | tuple["Witness", "Witness"] | None
"""The models of one choice, as a tree (flattened only for the chosen one)."""


@dataclass(frozen=True)
class State:
    mask: int
    """Bit i set: the i-th relevant model is in this choice."""
    witness: Witness


def add_to_frontier(states: list[State], candidate: State) -> list[State]:
    """Keep only maximal masks: eviction costs are positive, so a choice that keeps a superset
    of relevant models is never worse than one keeping a subset."""
    if any(candidate.mask & ~state.mask == 0 for state in states):
        return states
    kept = [state for state in states if state.mask & ~candidate.mask != 0]
    kept.append(candidate)
    return kept


class Evaluator:
    """Projects a program's choices onto the models relevant to one query (memoised per node)."""

    def __init__(self, program: MatrixProgram, relevant: Iterable[str]) -> None:
        self.program = program
        self.bits: dict[str, int] = {}
        for model in relevant:
            self.bits.setdefault(model, 1 << len(self.bits))
        self.memo: dict[int, list[State]] = {}
        self.roots = {s.name: s.root for s in program.sets}

    def evaluate(self, node: Node) -> list[State]:
        cached = self.memo.get(id(node))
        if cached is not None:
            return cached
        states: list[State]
        if isinstance(node, Leaf):
            states = [State(self.bits.get(node.name, 0), node.name)]
        elif isinstance(node, Ref):
            states = self.evaluate(self.roots[node.name])
        elif isinstance(node, Or):
            states = []
            for child in node.children:
                for state in self.evaluate(child):
                    states = add_to_frontier(states, state)
        else:
            states = [State(0, None)]
            for child in node.children:
                combined: list[State] = []
                for left in states:
                    for right in self.evaluate(child):
                        combined = add_to_frontier(
                            combined, State(left.mask | right.mask, (left.witness, right.witness))
                        )
                states = combined
        self.memo[id(node)] = states
        return states


def flatten(witness: Witness) -> frozenset[str]:
    models: set[str] = set()
    stack = [witness]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            models.add(item)
        elif item is not None:
            stack.extend(item)
    return frozenset(models)


def evict_cost(matrix: MatrixConfig, model: str) -> int:
    return matrix.evict_costs.get(model, 1)


def solve(matrix: MatrixConfig, running: frozenset[str], target: str) -> Decision:
    """Pick the choice containing ``target`` that evicts the cheapest running models.

    Cost of a choice = sum of ``evict_costs`` (default 1) of the running models outside it. Ties
    go to the first choice in llama-swap's order. A target in no set runs alone: every other
    running model is evicted. A target already running evicts nothing (llama-swap's fast path).
    Only the target is to be started; the rest of the alternative is merely allowed to stay.
    """
    others = sorted(running - {target})
    if target in running:
        return Decision(target, frozenset(), frozenset(running), containing_set(matrix, running), 0)
    evaluator = Evaluator(matrix.program, [target, *others])
    target_bit = evaluator.bits[target]
    best: tuple[int, str, State] | None = None
    for compiled in matrix.program.sets:
        if target not in compiled.support:
            continue
        for state in evaluator.evaluate(compiled.root):
            if not state.mask & target_bit:
                continue
            cost = sum(evict_cost(matrix, m) for m in others if not state.mask & evaluator.bits[m])
            if best is None or cost < best[0]:
                best = (cost, compiled.name, state)
    if best is None:
        cost = sum(evict_cost(matrix, model) for model in others)
        return Decision(target, frozenset(others), frozenset((target,)), None, cost)
    cost, name, state = best
    evict = frozenset(m for m in others if not state.mask & evaluator.bits[m])
    return Decision(target, evict, flatten(state.witness), name, cost)


def can_contain_all(matrix: MatrixConfig, models: Iterable[str]) -> bool:
    """Whether one choice of some set holds every one of ``models`` (they may run together)."""
    return containing_set(matrix, frozenset(models)) is not None or not frozenset(models)


def containing_set(matrix: MatrixConfig, models: frozenset[str]) -> str | None:
    """The first set with a choice that holds all ``models``, or None."""
    if not models:
        return None
    evaluator = Evaluator(matrix.program, sorted(models))
    required = (1 << len(evaluator.bits)) - 1
    for compiled in matrix.program.sets:
        if not models <= compiled.support:
            continue
        if any(state.mask & required == required for state in evaluator.evaluate(compiled.root)):
            return compiled.name
    return None


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
