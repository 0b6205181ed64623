"""Each stage's fingerprint changes when one of its inputs changes, and only then.

Table-driven: one inventory on disk (a host ``box`` with two models, its lock, a build laid out
as the build stage leaves it, a staging directory and a current generation, and an unrelated
host ``other``); each row edits one input and says which stages' fingerprints must move.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from homelab.deploy.paths import HostPaths
from homelab.deploy.stage import install_stage
from homelab.hub.resolve import resolve_model
from homelab.hub.stage import FETCH, lock_fingerprint
from homelab.inventory import ResolvedHost, load_host
from homelab.llamacpp.flags import parse_help
from homelab.llamacpp.stage import build_fingerprint
from homelab.lock import Lock, read_lock, write_lock
from homelab.plan.stage import plan_fingerprint
from homelab.render.generation import staging_dir
from homelab.render.stage import render_fingerprint
from homelab.settings import state_dir
from homelab.stage import code_files

HELP = """\
-m,    --model FNAME                    model path
--host HOST                             ip address to listen
--port PORT                             port to listen
-c,    --ctx-size N                     size of the prompt context
-a,    --alias STRING                   aliases
--spec-draft-model, -md, --model-draft FNAME
                                        draft model for speculative decoding (default: unused)
--spec-type none,draft-simple,ngram-mod comma-separated list of types of speculative decoding to use
"""

INSTALL = install_stage(service=None, root=None, verify=None, local=False)

#: each stage's fingerprint of host ``box`` (fetch: of model ``one``)
FINGERPRINTS: dict[str, Callable[[ResolvedHost], str | None]] = {
    "lock": lock_fingerprint,
    "fetch": lambda host: FETCH.fingerprint(host, "one"),
    "plan": plan_fingerprint,
    "render": render_fingerprint,
    "install": INSTALL.fingerprint,
}


def _append(rel: str, text: str) -> Callable[[Path], None]:
    def edit(inv: Path) -> None:
        path = inv / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(text)

    return edit


def _recipe_temperature(inv: Path) -> None:
    path = inv / "recipes" / "tiny.yaml"
    data = yaml.safe_load(path.read_text())
    data["profiles"]["chat"]["temperature"] = 0.9
    path.write_text(yaml.safe_dump(data))


def _repin(model: str) -> Callable[[Path], None]:
    def edit(inv: Path) -> None:
        path = inv / "hosts" / "box.lock.json"
        lock = read_lock(path)
        assert lock is not None
        pinned = lock.models[model]
        lock.models[model] = pinned.model_copy(update={"request": pinned.request + "#moved"})
        write_lock(path, lock)

    return edit


def _recipe_draft_locked(inv: Path) -> None:
    """The recipe gains a draft (model one keeps its own), and the lock pins it for model two."""
    path = inv / "recipes" / "tiny.yaml"
    data = yaml.safe_load(path.read_text())
    draft = yaml.safe_load((inv / "hosts" / "box.yaml").read_text())["models"][0]["draft"]
    data["draft"] = {"path": {"path": draft["path"]["path"].replace("gamma", "beta")}}
    path.write_text(yaml.safe_dump(data))
    host = load_host("box", inv)
    lock = read_lock(host.lock_file)
    assert lock is not None
    two = host.model("two")
    lock.models["two"] = resolve_model(two.source, inv, lambda: None, two.draft)  # type: ignore[arg-type,return-value]  # path sources ask no Hub
    write_lock(host.lock_file, lock)


def _repin_draft(model: str) -> Callable[[Path], None]:
    """The draft file of ``model`` pinned to other bytes (a re-lock that moved only the draft)."""

    def edit(inv: Path) -> None:
        path = inv / "hosts" / "box.lock.json"
        lock = read_lock(path)
        assert lock is not None
        files = lock.models[model].files
        assert files[-1].role == "draft"
        files[-1] = files[-1].model_copy(update={"sha256": "e" * 64})
        write_lock(path, lock)

    return edit


def _restage(inv: Path) -> None:
    (staging_dir("box") / "config.yaml").write_text("edited: true\n")


def _current_generation(inv: Path) -> None:
    (HostPaths.for_host("box").current / "config.yaml").write_text("rolled back: true\n")


def _other_build(inv: Path) -> None:
    (state_dir() / "builds" / "current" / "other").symlink_to("../" + "k" * 64)


ROWS: list[tuple[str, Callable[[Path], None], set[str]]] = [
    ("host file", _append("hosts/box.yaml", "env: {A: b}\n"), {"lock", "plan", "render"}),
    ("recipe", _recipe_temperature, {"lock", "plan", "render"}),
    ("model one's pin", _repin("one"), {"lock", "fetch", "plan", "render"}),
    ("model two's pin", _repin("two"), {"lock", "plan", "render"}),
    # a draft is one of the model's inputs: declared (here in the recipe) and pinned
    ("a draft in the recipe, locked", _recipe_draft_locked, {"lock", "plan", "render"}),
    ("model one's draft pin", _repin_draft("one"), {"lock", "fetch", "plan", "render"}),
    ("patch file", _append("patches/fix.patch", "--- a\n+++ b\n"), {"lock"}),
    ("staged files", _restage, {"render", "install"}),
    # the generation's manifest records each input file's digest: only render sees a comment
    ("a comment in the recipe", _append("recipes/tiny.yaml", "# tuned later\n"), {"render"}),
    # inputs of nothing here
    ("another host's file", _append("hosts/other.yaml", "env: {B: c}\n"), set()),
    ("another host's recipe", _append("recipes/else.yaml", "# a comment\n"), set()),
    ("the current generation", _current_generation, set()),
    ("another host's build", _other_build, set()),
]


@pytest.fixture
def inventory(tmp_path: Path, tiny_models: dict[str, Path]) -> Path:
    inv = tmp_path / "inventory"
    (inv / "recipes").mkdir(parents=True)
    (inv / "hosts").mkdir()
    (inv / "recipes" / "tiny.yaml").write_text(
        f"name: tiny\nsource: {{path: {{path: {tiny_models['alpha']}}}}}\n"
        "server: {ctx-size: 512}\nprofiles: {chat: {temperature: 0.5}}\n"
    )
    (inv / "recipes" / "else.yaml").write_text(f"name: else\nsource: {{path: {{path: {tiny_models['beta']}}}}}\n")
    (inv / "hosts" / "box.yaml").write_text(
        "name: box\nbackend: cpu\nruntime: {kind: supervisor, service: none}\n"
        "models:\n"
        f"  - {{recipe: tiny, id: one, draft: {{path: {{path: {tiny_models['gamma']}}}}}}}\n"
        "  - {recipe: tiny, id: two}\n"
    )
    (inv / "hosts" / "other.yaml").write_text("name: other\nbackend: cpu\nmodels:\n  - {recipe: else}\n")
    host = load_host("box", inv)
    pins = {m.id: resolve_model(m.source, inv, lambda: None, m.draft) for m in host.models}  # type: ignore[arg-type,return-value]  # path sources ask no Hub
    assert [f.role for f in pins["one"].files] == ["model", "draft"]
    write_lock(host.lock_file, Lock(host="box", models=pins))
    # a build as the build stage lays it out, and the host pointed at it
    builds = state_dir() / "builds"
    key = "k" * 64
    (builds / key / "bin").mkdir(parents=True)
    server = builds / key / "bin" / "llama-server"
    server.write_text("#!/bin/sh\nexit 0\n")
    server.chmod(0o755)
    parse_help(HELP, build="b11434 (fake)").write(builds / key / "flags.json")
    (builds / key / "build.json").write_text(json.dumps({"key": key, "label": "b11434", "build_number": 11434}))
    (builds / "current").mkdir()
    (builds / "current" / "box").symlink_to(f"../{key}")
    # something staged and installed
    for directory in (staging_dir("box"), HostPaths.for_host("box").current):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.yaml").write_text("models: {}\n")
    return inv


def _all(inv: Path) -> dict[str, str | None]:
    host = load_host("box", inv)
    return {name: fingerprint(host) for name, fingerprint in FINGERPRINTS.items()}


@pytest.mark.parametrize(("what", "edit", "moves"), ROWS, ids=[row[0] for row in ROWS])
def test_a_stage_fingerprint_moves_with_its_inputs_only(
    inventory: Path, what: str, edit: Callable[[Path], None], moves: set[str]
) -> None:
    before = _all(inventory)
    assert None not in before.values()
    assert _all(inventory) == before  # nothing edited: nothing moves
    edit(inventory)
    after = _all(inventory)
    moved = {name for name in FINGERPRINTS if after[name] != before[name]}
    assert moved == moves, f"{what}: moved {sorted(moved)}, expected {sorted(moves)}"


def test_what_cannot_be_told_from_files_has_no_fingerprint(inventory: Path) -> None:
    """No fingerprint means the stage always runs: a lock from a llama.cpp directory (its files
    are snapshotted, not read here), a model not pinned yet, an install with nothing staged or
    of a remote host."""
    host_file = inventory / "hosts" / "box.yaml"
    host_file.write_text(host_file.read_text() + f"llama_cpp: {{path: {inventory}, build_number: 1}}\n")
    host = load_host("box", inventory)
    assert lock_fingerprint(host) is None
    assert FETCH.fingerprint(host, "three") is None
    shutil.rmtree(staging_dir("box"))
    assert INSTALL.fingerprint(host) is None
    host_file.write_text(host_file.read_text() + "address: ssh://box.example\n")
    os.makedirs(staging_dir("box"))
    assert INSTALL.fingerprint(load_host("box", inventory)) is None


def test_the_planner_fingerprint_covers_its_package_and_what_it_imports() -> None:
    """No hand-kept list: every module of homelab.plan, and the modules it imports from
    elsewhere (the GGUF facts it estimates from, the set expansion it shares with the
    supervisor, the header reader), are part of the plan stage's fingerprint."""
    files = code_files("homelab.plan")
    package = Path(__import__("homelab.plan").plan.__file__).parent
    assert {f"homelab.plan.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"} <= set(files)
    assert {"homelab.gguf.facts", "homelab.matrix", "homelab.hub.gguf_header"} <= set(files)
    assert "homelab.render.generation" not in files and "homelab.supervisor.driver" not in files


def test_the_build_key_moves_with_patches_and_cmake_options_not_with_sampling(tmp_path: Path) -> None:
    """source and build share one fingerprint, the build key."""
    from llamacpp.conftest import write_inventory
    from llamacpp.fakeproject import make_upstream

    upstream = make_upstream(tmp_path / "upstream")
    inv = write_inventory(tmp_path / "inv", upstream, patches=["p.patch"])
    (inv / "patches" / "p.patch").write_text("")
    (inv / "hosts" / "else.yaml").write_text("name: else\nbackend: cpu\nmodels: []\n")

    def key() -> str:
        return build_fingerprint(load_host("box", inv))

    first = key()
    assert key() == first
    write_inventory(inv, upstream, patches=["p.patch"], recipe_server={"ctx-size": 512, "temp": 0.1})
    assert key() == first  # sampling and context size do not reach the build
    _append("hosts/else.yaml", "env: {A: b}\n")(inv)
    assert key() == first  # another host
    diff = "--- a/fit.c\n+++ b/fit.c\n@@ -1 +1 @@\n-x\n+y\n"
    (inv / "patches" / "p.patch").write_text(diff)
    patched = key()
    assert patched != first
    host_file = inv / "hosts" / "box.yaml"
    data = yaml.safe_load(host_file.read_text())
    data["llama_cpp"]["cmake"] = {"GGML_NATIVE": "OFF"}
    host_file.write_text(yaml.safe_dump(data))
    assert key() not in {first, patched}


def test_a_stage_is_fresh_once_it_ran_until_an_input_or_its_product_changes(inventory: Path) -> None:
    """The one freshness rule, on the install stage: recorded fingerprint == the one now, and the
    product in place (here: the current generation holds the staged files)."""
    host = load_host("box", inventory)
    runs: list[str] = []
    stage = dataclasses.replace(INSTALL, run=lambda h: runs.append(h.name), in_place=lambda h: (
        (HostPaths.for_host("box").current / "config.yaml").read_text() == (staging_dir("box") / "config.yaml").read_text()
    ))
    assert not stage.is_fresh(host)  # never ran
    stage.run_and_record(host)
    assert runs == ["box"] and stage.is_fresh(host)
    assert json.loads(stage.record_file(host).read_text()) == {"fingerprint": stage.fingerprint(host)}
    _current_generation(inventory)
    assert not stage.is_fresh(host)  # the product changed
    (HostPaths.for_host("box").current / "config.yaml").write_text("models: {}\n")
    assert stage.is_fresh(host)
    _restage(inventory)
    assert not stage.is_fresh(host)  # an input changed


def test_the_build_key_is_remembered_while_its_inputs_stay(tmp_path: Path) -> None:
    """A locked host's build key is read from its record on the next run (no git: here the
    source repository and its cache are gone), and worked out again when an input moves."""
    from llamacpp.conftest import write_inventory
    from llamacpp.fakeproject import make_upstream

    from homelab.llamacpp.pin import resolve_llama_cpp

    upstream = make_upstream(tmp_path / "upstream")
    inv = write_inventory(tmp_path / "inv", upstream, patches=["p.patch"])
    (inv / "patches" / "p.patch").write_text("")
    host = load_host("box", inv)
    write_lock(host.lock_file, Lock(host="box", models={}, llama_cpp=resolve_llama_cpp(host, None, update=False)))

    def key() -> str:
        return build_fingerprint(load_host("box", inv))

    first = key()
    assert json.loads((state_dir() / "hosts" / "box" / "build-key.json").read_text())["key"] == first
    upstream.rename(tmp_path / "away")
    shutil.rmtree(state_dir() / "sources")
    assert key() == first  # from the record: nothing to run git on
    (tmp_path / "away").rename(upstream)
    (inv / "patches" / "p.patch").write_text("--- a/fit.c\n+++ b/fit.c\n@@ -1 +1 @@\n-x\n+y\n")
    assert key() != first
