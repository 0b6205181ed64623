"""``homelab render`` end to end over real files: lock, fetched weights, a build's flags.json,
the plan contract; then ``--diff`` against an installed generation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from homelab.cli import main as homelab_main
from homelab.hub.resolve import request_of, resolve_path
from homelab.inventory import load_host
from homelab.llamacpp.flags import parse_help
from homelab.lock import Lock, PinnedModel, write_lock
from homelab.render.generation import read_generation, staging_dir
from homelab.settings import state_dir

HELP = """\
-m,    --model FNAME                    model path
--host HOST                             ip address to listen
--port PORT                             port to listen
-c,    --ctx-size N                     size of the prompt context
-fa,   --flash-attn [on|off|auto]       set Flash Attention use
-ctk,  --cache-type-k TYPE              KV cache data type for K
-ctv,  --cache-type-v TYPE              KV cache data type for V
-dev,  --device <dev1,dev2,..>          devices
-a,    --alias STRING                   aliases
"""


@pytest.fixture
def inventory(tmp_path: Path, tiny_models: dict[str, Path]) -> Path:
    inv = tmp_path / "inventory"
    (inv / "recipes").mkdir(parents=True)
    (inv / "hosts").mkdir()
    (inv / "recipes" / "tiny.yaml").write_text(
        f"name: tiny\nsource: {{path: {{path: {tiny_models['alpha']}}}}}\n"
        "server: {ctx-size: auto, cache-type-k: q4_0, cache-type-v: q4_0, flash-attn: 'on'}\n"
        "profiles: {chat: {temperature: 0.5}}\n"
    )
    (inv / "hosts" / "box.yaml").write_text(
        "name: box\nbackend: cpu\nruntime: {kind: supervisor, service: user, api_key_env: BOX_KEYS}\n"
        "models:\n  - {recipe: tiny, id: one}\n  - {recipe: tiny, id: two}\n"
    )
    host = load_host("box", inv)
    pins = {m.id: PinnedModel(files=resolve_path(m.source.path, inv), request=request_of(m.source)) for m in host.models}
    write_lock(host.lock_file, Lock(host="box", models=pins))
    return inv


@pytest.fixture
def fake_build(tmp_path: Path) -> Path:
    root = tmp_path / "build"
    (root / "bin").mkdir(parents=True)
    server = root / "bin" / "llama-server"
    server.write_text("#!/bin/sh\nexit 0\n")
    server.chmod(0o755)
    parse_help(HELP, build="b11434 (fake)").write(root / "flags.json")
    return server


def test_render_writes_staging_and_diffs_against_current(
    inventory: Path, fake_build: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = state_dir() / "plans" / "box.json"
    plan.parent.mkdir(parents=True)
    plan.write_text(json.dumps({"version": 1, "models": {"one": {"ctx_size": 1024, "vram_mib": {}}, "two": {"ctx_size": 512}}}))
    monkeypatch.setenv("BOX_KEYS", "sk-1")

    args = ["render", "box", "--inventory", str(inventory), "--server", str(fake_build)]
    assert homelab_main(args) == 0
    staged = read_generation(staging_dir("box"))
    assert staged is not None
    assert set(staged) == {"config.yaml", "presets.ini", "homelab.env", "plan.json", "manifest.json", "units/homelab-box.service"}
    assert "--ctx-size 1024" in staged["config.yaml"] and "--ctx-size 512" in staged["config.yaml"]
    manifest = json.loads(staged["manifest.json"])
    assert set(manifest["inputs"]) >= {"host", "recipes", "lock", "build", "homelab", "plan"}
    secrets = state_dir() / "hosts" / "box" / "secrets.env"
    assert secrets.read_text() == "BOX_KEYS=sk-1\n" and (secrets.stat().st_mode & 0o777) == 0o600
    assert "sk-1" not in "".join(staged.values())
    assert "rendered:" in capsys.readouterr().out

    # install it by hand as the deploy stage would, then change the host and diff
    current = state_dir() / "hosts" / "box" / "current"
    os.rename(staging_dir("box"), current)
    host_file = inventory / "hosts" / "box.yaml"
    host_file.write_text(host_file.read_text().replace("{recipe: tiny, id: two}", "{recipe: tiny, id: two, ttl: 300}"))
    assert homelab_main([*args, "--diff"]) == 0
    out = capsys.readouterr().out
    assert "+    ttl: 300" in out and f"{current}/config.yaml" in out
    assert not staging_dir("box").exists()  # --diff alone writes nothing

    # ports stay where the installed generation put them
    before = json.loads((current / "manifest.json").read_text())["ports"]
    assert homelab_main(args) == 0
    after = json.loads((staging_dir("box") / "manifest.json").read_text())["ports"]
    assert after == before


def test_render_without_a_lock_says_what_to_run(inventory: Path, fake_build: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (inventory / "hosts" / "box.lock.json").unlink()
    assert homelab_main(["render", "box", "--inventory", str(inventory), "--server", str(fake_build)]) == 2
    assert "doit lock host=box" in capsys.readouterr().err


def test_doit_task_renders_from_the_current_build_and_is_then_up_to_date(inventory: Path, fake_build: Path) -> None:
    """The task's action and up-to-date check, with the build stage's layout faked on disk."""
    from homelab.render.stage import RENDER
    from homelab.tasks import task_render

    builds = state_dir() / "builds"
    key = "k" * 64
    (builds / key / "bin").mkdir(parents=True)
    os.symlink(fake_build, builds / key / "bin" / "llama-server")
    (builds / key / "flags.json").write_text((fake_build.parent.parent / "flags.json").read_text())
    (builds / key / "build.json").write_text(json.dumps({"key": key, "label": "b11434", "build_number": 11434}))
    (builds / "current").mkdir()
    os.symlink(f"../{key}", builds / "current" / "box")

    host = load_host("box", inventory)
    assert RENDER.is_fresh(host) is False
    RENDER.run_and_record(host)
    staged = read_generation(staging_dir("box"))
    assert staged is not None and json.loads(staged["manifest.json"])["inputs"]["build"] == key
    assert "/bin/llama-server" in staged["config.yaml"]
    assert RENDER.is_fresh(host) is True
    (inventory / "hosts" / "box.yaml").write_text((inventory / "hosts" / "box.yaml").read_text() + "env: {A: b}\n")
    assert RENDER.is_fresh(load_host("box", inventory)) is False
    assert [t["name"] for t in task_render()] == [None]  # no host= given: only the group task
