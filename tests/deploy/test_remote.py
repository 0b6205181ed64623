"""Remote hosts over a real sshd started by the test (127.0.0.1, throwaway keys and config)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from deploy_helpers import free_port, render_files, write_inventory

REPO = Path(__file__).resolve().parents[2]


def homelab(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "homelab.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=180,
    )


@pytest.fixture
def remote_env(sshd: str, tmp_path: Path) -> dict[str, str]:
    """Environment for a deploy to the sshd host; the remote side lives under tmp_path/remote."""
    listen = f"127.0.0.1:{free_port()}"
    inventory = write_inventory(tmp_path / "inventory", "far", sshd, listen)
    return {
        "HOMELAB_INVENTORY": str(inventory),
        "HOMELAB_REMOTE_DIR": str(tmp_path / "remote"),
        "HOMELAB_REMOTE_STATE": str(tmp_path / "remote-state"),
        "HOMELAB_REMOTE_PYTHON": sys.executable,  # the remote is this machine: reuse this venv
        "LISTEN": listen,
    }


def test_remote_deploy_syncs_runs_there_and_streams_output(remote_env: dict[str, str], tmp_path: Path) -> None:
    listen = remote_env["LISTEN"]
    remote_current = Path(remote_env["HOMELAB_REMOTE_STATE"]) / "hosts" / "far" / "current"
    rendered = tmp_path / "rendered"
    rendered.mkdir()
    for name, data in render_files("far", listen, {"tiny": "-c 512"}, current=remote_current).items():
        (rendered / name).write_bytes(data)
    try:
        out = homelab("deploy", "far", "--rendered", str(rendered), "--verify", "models", env=remote_env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "synced homelab source and inventory" in out.stdout
        assert "far: generation 1 active (start, service: none" in out.stdout  # streamed from remote
        remote = Path(remote_env["HOMELAB_REMOTE_DIR"])
        assert (remote / "src" / "homelab" / "deploy" / "remote.py").is_file()
        assert (remote / "inventory" / "hosts" / "far.yaml").is_file()
        assert not list((remote / "src").rglob("__pycache__/*.pyc"))[:0]
        with urllib.request.urlopen(f"http://{listen}/v1/models", timeout=5) as resp:
            assert [m["id"] for m in json.load(resp)["data"]] == ["tiny"]
        # a recipe removed locally disappears remotely on the next sync
        (Path(remote_env["HOMELAB_INVENTORY"]) / "recipes" / "extra.yaml").write_text("name: extra\n")
        listing = homelab("generations", "far", env=remote_env)
        assert listing.returncode == 0, listing.stderr
        assert "*    1" in listing.stdout and "ok" in listing.stdout
        assert not (Path(remote_env["HOMELAB_STATE"] if "HOMELAB_STATE" in remote_env else os.environ["HOMELAB_STATE"]) / "hosts" / "far").exists()
        dry = homelab("deploy", "far", "--dry-run", env=remote_env)
        assert "dry run for far" in dry.stdout, dry.stdout + dry.stderr
        assert (remote / "inventory" / "recipes" / "extra.yaml").is_file()
        (Path(remote_env["HOMELAB_INVENTORY"]) / "recipes" / "extra.yaml").unlink()
        homelab("generations", "far", env=remote_env)
        status = homelab("status", "far", env=remote_env)
        assert "running, pid" in status.stdout
    finally:
        stop = homelab("stop", "far", env=remote_env)
        assert "not running" in stop.stdout, stop.stdout + stop.stderr


def test_bootstrap_makes_a_venv_with_homelab_and_lists_build_tools(remote_env: dict[str, str]) -> None:
    env = {
        **remote_env,
        "HOMELAB_BOOTSTRAP_PYTHON": sys.executable,
    }
    del env["HOMELAB_REMOTE_PYTHON"]
    out = homelab("bootstrap", "far", "--no-deps", env=env)  # offline: no package index here
    assert out.returncode in (0, 3), out.stdout + out.stderr
    assert "created venv" in out.stdout
    assert "homelab 0.1.0 installed in" in out.stdout
    assert ("build tools present" in out.stdout) or ("missing build tools" in out.stdout)
    # the venv runs homelab from the synced source
    venv_python = Path(remote_env["HOMELAB_REMOTE_DIR"]) / "venv" / "bin" / "python"
    where = subprocess.run([str(venv_python), "-c", "import homelab; print(homelab.__file__)"],
                           capture_output=True, text=True, env={"PATH": os.environ["PATH"]}, cwd="/")
    assert where.stdout.strip() == str(Path(remote_env["HOMELAB_REMOTE_DIR"]) / "src" / "homelab" / "__init__.py")
    assert (Path(remote_env["HOMELAB_REMOTE_DIR"]) / "venv" / "bin" / "python").exists()


@pytest.mark.parametrize("tool", ["rsync", "tar"])
def test_sync_mirrors_files_and_deletions(sshd: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tool: str) -> None:
    from homelab.deploy import remote

    if tool == "rsync" and not remote.shutil.which("rsync"):
        pytest.skip("rsync is not installed")
    if tool == "tar":
        monkeypatch.setattr(remote.shutil, "which", lambda name: None)  # as on a box without rsync
    monkeypatch.setenv("HOMELAB_REMOTE_DIR", str(tmp_path / "remote"))
    local = tmp_path / "local"
    (local / "hosts").mkdir(parents=True)
    (local / "hosts" / "a.yaml").write_text("a\n")
    (local / "hosts" / "b.yaml").write_text("b\n")
    (local / "hosts" / "__pycache__").mkdir()
    (local / "hosts" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    address = remote.SSHAddress.parse(sshd)
    assert remote.sync_tree(address, local, ["hosts", "recipes"], "inventory") == tool
    target = tmp_path / "remote" / "inventory" / "hosts"
    assert sorted(p.name for p in target.iterdir()) == ["a.yaml", "b.yaml"]
    (local / "hosts" / "b.yaml").unlink()
    (local / "hosts" / "a.yaml").write_text("a2\n")
    remote.sync_tree(address, local, ["hosts", "recipes"], "inventory")
    assert sorted(p.name for p in target.iterdir()) == ["a.yaml"]
    assert (target / "a.yaml").read_text() == "a2\n"


@pytest.mark.parametrize("address", ["ssh://-oProxyCommand=touch", "ssh://-oProxyCommand=x@host:22"])
def test_an_address_ssh_would_read_as_an_option_is_refused(address: str) -> None:
    from homelab.deploy.remote import RemoteError, SSHAddress

    with pytest.raises(RemoteError, match="cannot start with '-'"):
        SSHAddress.parse(address)


def test_ssh_argv_ends_its_options_before_the_destination(monkeypatch: pytest.MonkeyPatch) -> None:
    from homelab.deploy.remote import SSHAddress, ssh_base

    monkeypatch.setenv("HOMELAB_SSH", "ssh -F /dev/null")
    argv = ssh_base(SSHAddress.parse("ssh://me@box:2222"))
    assert argv == ["ssh", "-F", "/dev/null", "-p", "2222", "-o", "BatchMode=yes", "--", "me@box"]
