"""``deploy all`` order: RPC workers before the heads that use them (waves), a cycle refused by
name, a failed worker stopping its heads. The ordering is a pure function, tested by property;
the runner is tested with real ``homelab deploy`` processes over a small inventory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_helpers import free_port, write_inventory
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from homelab.deploy.waves import DependencyCycle, blocked_by, deploy_waves

REPO = Path(__file__).resolve().parents[2]
NAMES = [f"h{i}" for i in range(8)]


@st.composite
def acyclic(draw: st.DrawFn) -> dict[str, list[str]]:
    """Hosts with dependencies only on hosts earlier in a random order (so no cycle), plus
    names that are no host at all and self-references (both must be ignored)."""
    order = draw(st.permutations(NAMES))[: draw(st.integers(1, len(NAMES)))]
    graph: dict[str, list[str]] = {}
    for i, host in enumerate(order):
        earlier = draw(st.lists(st.sampled_from(order[:i]), max_size=3)) if i else []
        noise = draw(st.lists(st.sampled_from(["ghost", host]), max_size=2))
        graph[host] = earlier + noise
    shuffled = draw(st.permutations(list(graph)))
    return {h: graph[h] for h in shuffled}


@given(acyclic())
@settings(max_examples=300, deadline=None)
def test_every_host_comes_after_what_it_depends_on(graph: dict[str, list[str]]) -> None:
    waves = deploy_waves(graph)
    position = {h: i for i, wave in enumerate(waves) for h in wave}
    assert sorted(position) == sorted(graph)  # every host exactly once
    assert sum(len(w) for w in waves) == len(graph)
    for host, deps in graph.items():
        for dep in deps:
            if dep in graph and dep != host:
                assert position[dep] < position[host]
    # as early as possible: a host after wave 0 waits for something in the wave just before
    for i, wave in enumerate(waves[1:], 1):
        for host in wave:
            assert any(position.get(d) == i - 1 for d in graph[host] if d != host)
    # the order inside a wave is the input order
    for wave in waves:
        assert wave == [h for h in graph if h in wave]


@given(acyclic(), st.data())
@settings(max_examples=200, deadline=None)
def test_a_cycle_is_refused_naming_its_hosts(graph: dict[str, list[str]], data: st.DataObject) -> None:
    hosts = list(graph)
    assume(len(hosts) >= 2)
    loop = data.draw(st.lists(st.sampled_from(hosts), min_size=2, max_size=4, unique=True))
    cyclic = {h: list(d) for h, d in graph.items()}
    for a, b in zip(loop, loop[1:] + loop[:1]):
        cyclic[a].append(b)
    with pytest.raises(DependencyCycle) as failure:
        deploy_waves(cyclic)
    message = str(failure.value)
    named = message.split(": ", 1)[1].split(" (", 1)[0].split(" -> ")
    assert named[0] == named[-1] and len(named) >= 3
    for a, b in zip(named, named[1:]):  # each named host really depends on the next
        assert b in cyclic[a]


def test_waves_of_a_small_lab() -> None:
    graph = {"head": ["w1", "w2"], "w1": [], "other": [], "w2": ["w1"], "typo": ["nosuchhost"]}
    assert deploy_waves(graph) == [["w1", "other", "typo"], ["w2"], ["head"]]
    with pytest.raises(DependencyCycle, match=r"a -> b -> a \(each uses the next one's rpc_server"):
        deploy_waves({"a": ["b"], "b": ["a"], "c": []})
    assert blocked_by("head", graph, ["w2"]) == "w2"
    assert blocked_by("head", graph, ["other"]) is None


def test_deploy_all_stops_the_heads_of_a_failed_worker(tmp_path: Path) -> None:
    """The worker's chain fails (its lock cannot reach the Hub): the head using it is not even
    tried, the independent host is; the summary says which is which."""
    inv = write_inventory(tmp_path / "inv", "head", "local", f"127.0.0.1:{free_port()}")
    head = inv / "hosts" / "head.yaml"
    (inv / "hosts" / "solo.yaml").write_text(head.read_text().replace("name: head", "name: solo"))
    head.write_text(head.read_text().replace("  - recipe: tiny\n", "  - recipe: tiny\n    rpc: [w]\n"))
    (inv / "hosts" / "w.yaml").write_text(
        f"name: w\nbackend: cpu\nrpc_server:\n  listen: 127.0.0.1:{free_port()}\n"
        f"runtime:\n  listen: 127.0.0.1:{free_port()}\n  service: none\nmodels:\n  - recipe: tiny\n"
    )
    env = {**os.environ, "HOMELAB_INVENTORY": str(inv), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    env.pop("CI", None)
    out = subprocess.run(
        [sys.executable, "-m", "homelab.cli", "deploy", "all"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "deploy order: wave 1: solo, w; wave 2: head" in out.stdout
    assert "[head] not deployed: w, whose rpc-server it uses, failed" in out.stdout
    assert "[head] dry run" not in out.stdout and "[head] .  " not in out.stdout  # never started
    table = out.stdout[out.stdout.index("host  result"):].splitlines()
    rows = {line.split()[0]: line.split()[1] for line in table[2:]}
    assert rows["head"] == "skipped" and rows["w"] == "exit" and rows["solo"] == "exit"


def test_deploy_all_refuses_a_cycle_before_deploying_anything(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv", "a", "local", f"127.0.0.1:{free_port()}")
    a = inv / "hosts" / "a.yaml"
    a.write_text(
        a.read_text().replace("  - recipe: tiny\n", "  - recipe: tiny\n    rpc: [b]\n")
        + f"rpc_server:\n  listen: 127.0.0.1:{free_port()}\n"
    )
    (inv / "hosts" / "b.yaml").write_text(
        a.read_text().replace("name: a", "name: b").replace("rpc: [b]", "rpc: [a]")
        .replace("rpc_server:\n  listen: 127.0.0.1:", "rpc_server:\n  listen: 127.0.0.2:")
    )
    env = {**os.environ, "HOMELAB_INVENTORY": str(inv)}
    out = subprocess.run(
        [sys.executable, "-m", "homelab.cli", "deploy", "all"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert "cycle, so none of them can be deployed first: a -> b -> a" in out.stderr
    assert "Traceback" not in out.stderr and "[a]" not in out.stdout  # nothing started
    assert not (Path(os.environ["HOMELAB_STATE"]) / "hosts").exists()
