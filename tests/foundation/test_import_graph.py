"""The layering as a checked contract: import-linter's contracts from pyproject.toml, and no
module-level import cycle anywhere in ``homelab``.

Both print what they saw (the layer-to-layer edges, any cycle, the linter's report) so a CI
log shows the import graph, not just a pass or a fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # Same view as the contracts: imports under TYPE_CHECKING never run, so they are left out.
    return grimp.build_graph("homelab", cache_dir=None, exclude_type_checking_imports=True)


def layer_of(module: str) -> str:
    """``homelab.plan.estimate`` -> ``homelab.plan``: the unit the layering speaks about."""
    return ".".join(module.split(".")[:2])


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative so a long
    import chain cannot hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def test_cycle_finder_sees_a_cycle() -> None:
    """The finder itself: a two-module loop and a three-module loop, beside an acyclic edge."""
    g = grimp.ImportGraph()
    for a, b in [("p.a", "p.b"), ("p.b", "p.a"), ("p.c", "p.d"), ("p.d", "p.e"), ("p.e", "p.c"), ("p.x", "p.a")]:
        g.add_import(importer=a, imported=b)
    assert cycles(g) == [["p.a", "p.b"], ["p.c", "p.d", "p.e"]]


def test_no_module_level_import_cycles(graph: grimp.ImportGraph, capsys: pytest.CaptureFixture[str]) -> None:
    edges: Counter[tuple[str, str]] = Counter()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if layer_of(module) != layer_of(imported):
                edges[layer_of(module), layer_of(imported)] += 1
    found = cycles(graph)
    lines = [f"import graph: {len(graph.modules)} modules, {sum(edges.values())} imports between layers"]
    lines += [f"  {importer} -> {imported}: {count}" for (importer, imported), count in sorted(edges.items())]
    lines += ["cycle: " + " <-> ".join(component) for component in found] or ["cycles: none"]
    with capsys.disabled():  # shown on success too: the CI log carries the graph
        print("\n" + "\n".join(lines))
    assert found == []


def test_layers_contract_holds(capsys: pytest.CaptureFixture[str]) -> None:
    config = REPO / "pyproject.toml"
    contracts = tomllib.loads(config.read_text())["tool"]["importlinter"]["contracts"]
    assert {c["type"] for c in contracts} == {"layers", "forbidden"}
    # In a child process: import-linter's CLI reconfigures logging (dictConfig), which would
    # disable the loggers of every module already imported into this test process.
    env = {**os.environ, "COLUMNS": "130", "PYTHONPATH": str(REPO)}  # the report wraps at 80 off a terminal
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint), "--config", str(config), "--no-cache"], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=300)
    report = run.stdout + run.stderr
    with capsys.disabled():
        print("\n" + report)  # shown on success too
    assert run.returncode == 0, report
