"""``lock:HOST`` is skipped exactly when nothing it is made from changed (doit as users run it,
against the fake Hub on loopback and the cached llama.cpp test repository)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def hub_inventory(tmp_path: Path):
    from fakehub import FakeHub

    from homelab.testing import llama_server as testing

    repo = testing.cache_dir() / "src" / f"llama.cpp-{testing.TAG}.git"
    if not (repo / "HEAD").exists():
        pytest.skip(f"{repo} is not there yet (the llama_server_bin fixture creates it)")
    inv = tmp_path / "inv"
    (inv / "hosts").mkdir(parents=True)
    (inv / "recipes").mkdir()
    recipe = {"name": "tiny", "source": {"hf": {"repo": "test/tiny-GGUF", "file": "a.gguf"}}, "server": {"ctx-size": 256}}
    (inv / "recipes" / "tiny.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    host = {"name": "box", "backend": "cpu", "llama_cpp": {"repo": str(repo), "ref": testing.TAG},
            "runtime": {"service": "none"}, "models": [{"recipe": "tiny"}]}
    (inv / "hosts" / "box.yaml").write_text(yaml.safe_dump(host, sort_keys=False))
    with FakeHub() as hub:
        hub.add_repo("test/tiny-GGUF", {"a.gguf": b"GGUF-a" * 100, "b.gguf": b"GGUF-b" * 100})
        env = {k: v for k, v in os.environ.items() if k != "CI"}
        env.update(HOMELAB_INVENTORY=str(inv), HF_ENDPOINT=hub.endpoint)
        yield inv, hub, env


def lock(env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), "lock", "host=box", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


def test_lock_runs_when_an_input_changed_and_is_skipped_otherwise(hub_inventory) -> None:
    inv, hub, env = hub_inventory
    lock_file, recipe_file = inv / "hosts" / "box.lock.json", inv / "recipes" / "tiny.yaml"

    first = lock(env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert ".  lock:box" in first.stdout and "+ tiny: test/tiny-GGUF/a.gguf@" in first.stdout
    pinned = lock_file.read_bytes()

    hub.clear_requests()
    again = lock(env)
    assert again.returncode == 0 and "-- lock:box" in again.stdout
    assert hub.requests == [] and lock_file.read_bytes() == pinned
    assert lock(env, "frozen=1").stdout.count("-- lock:box") == 1  # frozen: the lock is what it checked

    # a profile edit reaches the merged host: the task runs, asks nothing, changes nothing
    recipe = yaml.safe_load(recipe_file.read_text())
    recipe["profiles"] = {"chat": {"temperature": 0.3}}
    recipe_file.write_text(yaml.safe_dump(recipe, sort_keys=False))
    edited = lock(env)
    assert ".  lock:box" in edited.stdout and hub.requests == [] and lock_file.read_bytes() == pinned

    # a new source file: the pin moves; with frozen=1 first, that is refused and nothing written
    recipe["source"]["hf"]["file"] = "b.gguf"
    recipe_file.write_text(yaml.safe_dump(recipe, sort_keys=False))
    frozen = lock(env, "frozen=1")
    assert frozen.returncode != 0 and "is frozen" in frozen.stdout + frozen.stderr
    assert lock_file.read_bytes() == pinned
    moved = lock(env)
    assert moved.returncode == 0 and ".  lock:box" in moved.stdout
    assert json.loads(lock_file.read_text())["models"]["tiny"]["files"][0]["path"] == "b.gguf"
    assert "-- lock:box" in lock(env).stdout

    # the lockfile edited by hand (or by `homelab lock --update`): checked again
    lock_file.write_text(lock_file.read_text().replace('"b.gguf"', '"a.gguf"'))
    assert ".  lock:box" in lock(env).stdout

    # no lockfile (a fresh checkout): the target is missing, the task runs
    lock_file.unlink()
    assert ".  lock:box" in lock(env).stdout and lock_file.is_file()
