"""The commands as users run them: dry run changes nothing, host=all summary, generations list."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from deploy_helpers import free_port, render_files, write_inventory

from homelab.deploy.generations import GenerationStore
from homelab.deploy.installer import Deployer, Options, Target
from homelab.deploy.paths import HostPaths
from homelab.render import staging_dir

REPO = Path(__file__).resolve().parents[2]


def run(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env={**os.environ, **env}, timeout=120)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "doit-deps.json"
    }


def test_dry_run_shows_the_diff_and_the_reload_and_changes_nothing(tmp_path: Path, events: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    inventory = write_inventory(tmp_path / "inv", "box", "local", listen)
    deployer = Deployer(Target(name="box", listen=listen, service="none", health_timeout=15), Options(quiet=True))
    staged = staging_dir("box")
    staged.mkdir(parents=True)
    try:
        for name, data in render_files("box", listen, {"tiny": "-c 512"}).items():
            (staged / name).write_bytes(data)
        deployer.install(staged)
        # the next render changed a flag: what would a deploy do?
        for name, data in render_files("box", listen, {"tiny": "-c 1024"}, recipes="r2").items():
            (staged / name).write_bytes(data)
        state = Path(os.environ["HOMELAB_STATE"])
        before = snapshot(state)
        env = {"HOMELAB_INVENTORY": str(inventory)}
        for argv in (
            [sys.executable, "-m", "homelab.cli", "deploy", "box", "--dry-run"],
            [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), "deploy", "host=box", "dry=1"],
        ):
            out = run(*argv, env=env)
            assert out.returncode == 0, out.stdout + out.stderr
            assert "nothing will be changed" in out.stdout
            assert "-    cmd: llama-server --port ${PORT} -c 512" in out.stdout
            assert "+    cmd: llama-server --port ${PORT} -c 1024" in out.stdout
            assert "service: reload homelab-box.service" in out.stdout
            assert "would create: a new generation 2" in out.stdout
            assert "no lockfile yet" in out.stdout  # downloads: explained, not guessed
        assert snapshot(state) == before
        assert GenerationStore(HostPaths.for_host("box")).numbers() == [1]
        assert len(events.read_text().splitlines()) == 1  # started once, never reloaded
    finally:
        deployer.stop()


def test_generations_command_marks_current(tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path / "inv", "box", "local", "127.0.0.1:1")
    store = GenerationStore(HostPaths.for_host("box"))
    for n in (1, 2):
        store.switch(store.create({"config.yaml": f"models: {{m{n}: {{}}}}".encode()}, [f"~ config.yaml ({n})"], "reload").number)
    out = run(sys.executable, "-m", "homelab.cli", "generations", "box", env={"HOMELAB_INVENTORY": str(inventory)})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].startswith("     1 ") and lines[2].startswith("*    2 ")
    missing = run(sys.executable, "-m", "homelab.cli", "rollback", "box", "9", env={"HOMELAB_INVENTORY": str(inventory)})
    assert missing.returncode == 2
    assert "no generation 9 (generations: 1, 2)" in missing.stderr and "Traceback" not in missing.stderr


def test_deploy_all_runs_hosts_in_parallel_with_a_summary(tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path / "inv", "one", "local", "127.0.0.1:1")
    (inventory / "hosts" / "two.yaml").write_text(
        (inventory / "hosts" / "one.yaml").read_text().replace("name: one", "name: two")
    )
    out = run(sys.executable, "-m", "homelab.cli", "deploy", "all", "--dry-run", env={"HOMELAB_INVENTORY": str(inventory)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[one] dry run for one" in out.stdout and "[two] dry run for two" in out.stdout
    table = out.stdout[out.stdout.index("host  result"):]
    assert "one   ok" in table and "two   ok" in table


def test_deploy_while_another_holds_the_host_names_the_holder(tmp_path: Path, write_rendered) -> None:
    inventory = write_inventory(tmp_path / "inv", "box", "local", "127.0.0.1:1")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from homelab.deploy.hostlock import HostLock; "
         "from homelab.deploy.paths import HostPaths; HostLock(HostPaths.for_host('box')).acquire(); "
         "print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        rendered = write_rendered(render_files("box", "127.0.0.1:1", {"m": ""}))
        env = {"HOMELAB_INVENTORY": str(inventory)}
        out = run(sys.executable, "-m", "homelab.cli", "deploy", "box", "--rendered", str(rendered), env=env)
        assert out.returncode == 2
        assert f"another deploy of host 'box' is running (pid {holder.pid}" in out.stderr
        chain = run(sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), "deploy", "host=box", env=env)
        assert chain.returncode != 0
        assert f"another deploy of host 'box' is running (pid {holder.pid}" in chain.stdout + chain.stderr
        assert GenerationStore(HostPaths.for_host("box")).numbers() == []
    finally:
        holder.kill()
        holder.wait()
