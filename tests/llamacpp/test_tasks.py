"""The doit tasks source:<host> and build:<host>, run by doit itself on a fake llama.cpp."""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest
from doit.cmd_base import ModuleTaskLoader
from doit.doit_cmd import DoitMain, reset_vars

from homelab.tasks import graph, task_build, task_source

from .conftest import write_inventory
from .test_patches import diff_of, replace


def task_lock():
    """Stand-in for the hub stage's lock task (not this stage's to test)."""
    yield {"basename": "lock", "name": None}
    for host in graph.selected_hosts():
        yield {"name": host.name, "actions": [], "uptodate": [True]}


def run_doit(capsys: pytest.CaptureFixture[str], inventory: Path, *argv: str) -> tuple[int, str]:
    graph._load.cache_clear()  # a new doit process would load the inventory afresh
    module = types.SimpleNamespace(
        task_lock=task_lock,
        task_source=task_source,
        task_build=task_build,
        DOIT_CONFIG={
            "dep_file": str(Path(os.environ["HOMELAB_STATE"]) / "doit-deps.json"),
            "backend": "json",
            "verbosity": 2,
        },
    )
    try:
        report = inventory / "doit-report.txt"
        code = DoitMain(ModuleTaskLoader(vars(module))).run(
            ["--output-file", str(report), *argv, "host=box", f"inventory={inventory}"]
        )
    finally:
        reset_vars()
    return code, report.read_text() + capsys.readouterr().out


def test_build_runs_once_then_is_up_to_date_and_follows_patches(
    upstream: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(tmp_path / "inv", upstream, patches=["p.patch"])
    (inv / "patches" / "p.patch").write_text(diff_of(upstream, replace("fit.c", "return 0", "return 1")))
    builds = Path(os.environ["HOMELAB_STATE"]) / "builds"

    code, out = run_doit(capsys, inv, "build")
    assert code == 0, out
    assert ".  build:box" in out and "built" in out
    first = {p.name for p in builds.iterdir() if len(p.name) == 64}
    assert len(first) == 1

    code, out = run_doit(capsys, inv, "build")
    assert code == 0 and "-- source:box" in out and "-- build:box" in out, out

    # a recipe change that does not reach the build: still up to date
    write_inventory(inv, upstream, patches=["p.patch"], recipe_server={"ctx-size": 512, "temp": 0.1})
    code, out = run_doit(capsys, inv, "build")
    assert code == 0 and "-- build:box" in out, out

    # a patch change: checked out, patched and built again
    (inv / "patches" / "p.patch").write_text(diff_of(upstream, replace("fit.c", "return 0", "return 2")))
    code, out = run_doit(capsys, inv, "build")
    assert code == 0 and ".  source:box" in out and ".  build:box" in out, out
    assert len({p.name for p in builds.iterdir() if len(p.name) == 64} - first) == 1


def test_a_conflicting_patch_fails_the_source_task_with_its_name(
    upstream: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(tmp_path / "inv", upstream, patches=["bad.patch"])
    text = diff_of(upstream, replace("fit.c", "return 0", "return 1")).replace("return 0", "return 5")
    (inv / "patches" / "bad.patch").write_text(text)
    code, out = run_doit(capsys, inv, "build")
    assert code != 0
    assert "patch patches/bad.patch does not apply to b100" in out and "fit.c hunk #1" in out
    assert "Traceback" not in out
