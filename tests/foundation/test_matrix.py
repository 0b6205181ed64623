"""Set expressions, the matrix solver and group rules, as pure functions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homelab.matrix import (
    DEFAULT_GROUP,
    MAX_ALTERNATIVES,
    GroupConfig,
    MatrixConfig,
    MatrixError,
    MatrixExpressionError,
    can_contain_all,
    compile_matrix,
    expand_sets,
    expression_names,
    expression_refs,
    group_evictions,
    parse_expression,
    solve,
)


def fs(*names: str) -> frozenset[str]:
    return frozenset(names)


# --------------------------------------------------------------------------- expressions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a", [fs("a")]),
        ("a & b", [fs("a", "b")]),
        ("a | b", [fs("a"), fs("b")]),
        # & binds tighter than | (llama-swap's grammar)
        ("a | b & c", [fs("a"), fs("b", "c")]),
        ("(a | b) & c", [fs("a", "c"), fs("b", "c")]),
        ("a & (b | c) & (d | e)", [fs("a", "b", "d"), fs("a", "b", "e"), fs("a", "c", "d"), fs("a", "c", "e")]),
        ("((a))", [fs("a")]),
        ("a & a", [fs("a")]),
        ("a | a | b", [fs("a"), fs("b")]),  # duplicate alternatives dropped, first kept
        ("qwen3.6-35b & embed_v2", [fs("qwen3.6-35b", "embed_v2")]),
        ("  a\t&\nb ", [fs("a", "b")]),
    ],
)
def test_parse_expression(text: str, expected: list[frozenset[str]]) -> None:
    assert parse_expression(text) == expected


def test_ref_inlines_the_alternatives_of_another_set() -> None:
    refs = {"small": [fs("a"), fs("b", "c")]}
    assert parse_expression("+small & big", refs) == [fs("a", "big"), fs("b", "c", "big")]
    assert parse_expression("x | +small", refs) == [fs("x"), fs("a"), fs("b", "c")]


@pytest.mark.parametrize(
    ("text", "position", "words"),
    [
        ("", 0, "empty"),
        ("a &", 3, "expected a model name"),
        ("a & (b", 6, "missing ')'"),
        ("a)", 1, "unmatched ')'"),
        ("a b", 2, "found 'b'"),
        ("()", 1, "empty parentheses"),
        ("+", 1, "set name after '+'"),
        ("org/model", 3, "matrix.vars"),
        ("a:q4", 1, "matrix.vars"),
        ("a & +nope", 4, "unknown set +nope"),
        ("| a", 0, "expected a model name"),
    ],
)
def test_expression_errors_name_the_position(text: str, position: int, words: str) -> None:
    with pytest.raises(MatrixExpressionError) as caught:
        parse_expression(text)
    assert caught.value.position == position
    assert words in str(caught.value)
    assert f"position {position}" in str(caught.value)


def test_expansion_is_capped() -> None:
    wide = "(" + " | ".join(f"m{i}" for i in range(40)) + ")"
    with pytest.raises(MatrixExpressionError, match=str(MAX_ALTERNATIVES)):
        parse_expression(f"{wide} & {wide}")


def test_expression_names_and_refs() -> None:
    text = "a & (b | +other) & c.d"
    assert expression_names(text) == {"a", "b", "c.d"}
    assert expression_refs(text) == {"other"}
    with pytest.raises(MatrixExpressionError):
        expression_names("a & & b")


def test_expand_sets_allows_forward_refs_and_resolves_vars() -> None:
    sets = expand_sets(
        {"combo": "+base & e", "base": "q | g"},
        {"q": "Qwen/Qwen3:Q4", "g": "google/gemma", "e": "embed"},
    )
    assert list(sets) == ["combo", "base"]
    assert sets["combo"] == (fs("Qwen/Qwen3:Q4", "embed"), fs("google/gemma", "embed"))
    assert sets["base"] == (fs("Qwen/Qwen3:Q4"), fs("google/gemma"))


def test_expand_sets_rejects_cycles_and_unknown_refs() -> None:
    with pytest.raises(MatrixError, match="cycle: a -> b -> a"):
        expand_sets({"a": "x & +b", "b": "+a | y"})
    with pytest.raises(MatrixError, match=r"\+missing"):
        expand_sets({"a": "x & +missing"})


# --------------------------------------------------------------------------- solver


def matrix(sets: dict[str, str], costs: dict[str, int] | None = None) -> MatrixConfig:
    return compile_matrix(sets, evict_costs=costs)


def test_solver_keeps_what_fits_and_evicts_the_rest() -> None:
    m = matrix({"coding": "coder & embed", "chat": "chat & embed"})
    decision = solve(m, fs("coder", "embed"), "chat")
    assert decision.set_name == "chat"
    assert decision.evict == fs("coder")
    assert decision.alternative == fs("chat", "embed")
    assert decision.cost == 1


def test_solver_prefers_the_cheaper_eviction() -> None:
    m = matrix({"a": "small & x", "b": "big & x"}, {"big": 10})
    assert solve(m, fs("small", "big"), "x").evict == fs("small")
    assert solve(m, fs("small", "big"), "x").set_name == "b"


def test_solver_ties_go_to_the_first_defined_set() -> None:
    m = matrix({"first": "t & a", "second": "t & b"})
    assert solve(m, fs("a", "b"), "t").set_name == "first"
    assert solve(m, fs(), "t").set_name == "first"


def test_model_in_no_set_runs_alone() -> None:
    m = matrix({"s": "a & b"})
    decision = solve(m, fs("a", "b"), "loner")
    assert decision.evict == fs("a", "b")
    assert decision.set_name is None
    assert decision.alternative == fs("loner")


def test_running_target_that_fits_evicts_nothing() -> None:
    m = matrix({"s": "a & b"})
    assert solve(m, fs("a", "b"), "a").evict == fs()


MODELS = ["m0", "m1", "m2", "m3", "m4", "m5"]
names = st.sampled_from(MODELS)
alternative_st = st.frozensets(names, min_size=1, max_size=4)


def as_expression(alternatives: list[frozenset[str]]) -> str:
    return " | ".join("(" + " & ".join(sorted(alt)) + ")" for alt in alternatives)


@st.composite
def matrices(draw: st.DrawFn) -> MatrixConfig:
    n_sets = draw(st.integers(1, 4))
    sets = {f"s{i}": as_expression(draw(st.lists(alternative_st, min_size=1, max_size=4))) for i in range(n_sets)}
    if n_sets > 1 and draw(st.booleans()):  # a reference, inlined by the solver
        sets["s0"] = f"({sets['s0']}) & +s1" if draw(st.booleans()) else f"{sets['s0']} | +s1"
    costs = draw(st.dictionaries(names, st.integers(1, 5)))
    return compile_matrix(sets, evict_costs=costs)


def cost_of(m: MatrixConfig, running: frozenset[str], target: str, alternative: frozenset[str]) -> int:
    return sum(m.evict_costs.get(x, 1) for x in running - {target} - alternative)


@settings(max_examples=200, deadline=None)
@given(m=matrices(), running=st.frozensets(names), target=names)
def test_solver_properties(m: MatrixConfig, running: frozenset[str], target: str) -> None:
    """The solver works on projected bit masks, never expanding; checked against brute force
    over the expanded alternatives."""
    decision = solve(m, running, target)
    expanded = expand_sets(m.sets)
    candidates = [(name, alt) for name, alts in expanded.items() for alt in alts if target in alt]
    assert target not in decision.evict
    assert decision.evict <= running
    if target in running:
        assert decision.evict == frozenset() and decision.cost == 0
        return
    if not candidates:
        # a model in no set runs alone
        assert decision.set_name is None
        assert decision.evict == running - {target}
        return
    # the chosen alternative contains the target and is one of the named set's alternatives
    assert target in decision.alternative
    assert decision.set_name is not None
    assert decision.alternative in expanded[decision.set_name]
    # evicted = exactly the running models outside the chosen alternative
    assert decision.evict == running - {target} - decision.alternative
    # minimal cost over every alternative
    assert decision.cost == min(cost_of(m, running, target, alt) for _, alt in candidates)
    assert decision.cost == sum(m.evict_costs.get(x, 1) for x in decision.evict)
    # can_contain_all agrees with brute force on what stays
    kept = (running - decision.evict) | {target}
    assert can_contain_all(m, kept)
    assert can_contain_all(m, running) == any(running <= alt for alts in expanded.values() for alt in alts)


def test_no_cap_on_alternatives_when_solving() -> None:
    """Ten groups of ten models describe 10^10 alternatives; the solver never expands them."""
    groups = [" | ".join(f"g{i}m{j}" for j in range(10)) for i in range(10)]
    m = matrix({"huge": " & ".join(f"({g})" for g in groups), "alone": "x"})
    running = frozenset({"g0m3", "g5m7", "x"})
    decision = solve(m, running, "g9m9")
    assert decision.set_name == "huge"
    assert decision.evict == frozenset({"x"})
    assert {"g0m3", "g5m7", "g9m9"} <= decision.alternative and len(decision.alternative) == 10
    assert not can_contain_all(m, {"g0m1", "g0m2"})  # two of one | group never run together
    with pytest.raises(MatrixExpressionError, match=str(MAX_ALTERNATIVES)):
        m.alternatives("huge")  # expanding (the planner's view) stays capped


def test_referenced_sets_come_first_as_upstream_orders_them() -> None:
    """llama-swap orders sets depth first by reference: a set after the sets it references, so a
    tie goes to the referenced set."""
    m = matrix({"combo": "+base | t & b", "base": "t & a"})
    assert solve(m, fs("a", "b"), "t").set_name == "base"


# --------------------------------------------------------------------------- groups


GROUPS = {
    "chat": GroupConfig("chat", ("llama", "qwen"), swap=True, exclusive=True),
    "tools": GroupConfig("tools", ("coder", "sql"), swap=False, exclusive=False),
    "always": GroupConfig("always", ("embed",), swap=False, exclusive=False, persistent=True),
    DEFAULT_GROUP: GroupConfig(DEFAULT_GROUP, ("x", "y")),
}


@pytest.mark.parametrize(
    ("running", "target", "evicted"),
    [
        # swap: one member of the group at a time; exclusive: other non-persistent groups go
        ({"llama", "coder", "embed"}, "qwen", {"llama", "coder"}),
        # starting an already-running member evicts only other groups (exclusive)
        ({"llama", "sql"}, "llama", {"sql"}),
        # swap: false, exclusive: false: members side by side, nothing else touched
        ({"coder", "llama", "x"}, "sql", set()),
        # persistent groups are never evicted by others
        ({"embed", "coder"}, "llama", {"coder"}),
        # the default group is swap + exclusive
        ({"x", "embed", "sql"}, "y", {"x", "sql"}),
        ({"llama"}, "x", {"llama"}),
    ],
)
def test_group_evictions(running: set[str], target: str, evicted: set[str]) -> None:
    assert group_evictions(GROUPS, frozenset(running), target) == frozenset(evicted)


def test_ungrouped_model_without_default_group_behaves_like_llama_swap_default() -> None:
    groups = {"g": GroupConfig("g", ("a",), swap=True, exclusive=False)}
    assert group_evictions(groups, fs("a", "lonely1"), "lonely2") == fs("a", "lonely1")


@settings(max_examples=200, deadline=None)
@given(running=st.frozensets(st.sampled_from(["llama", "qwen", "coder", "sql", "embed", "x", "y"])),
       target=st.sampled_from(["llama", "qwen", "coder", "sql", "embed", "x", "y"]))
def test_group_properties(running: frozenset[str], target: str) -> None:
    evicted = group_evictions(GROUPS, running, target)
    assert evicted <= running
    assert target not in evicted
    assert "embed" not in evicted  # the persistent group is never evicted by others
    remaining = (running - evicted) | {target}
    group = next(g for g in GROUPS.values() if target in g.members)
    if group.swap:  # one member of a swap group at a time
        assert remaining & set(group.members) == {target}
    if group.exclusive:  # nothing of another non-persistent group survives
        assert remaining <= set(group.members) | {"embed"}
