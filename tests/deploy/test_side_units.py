"""Side units beside the endpoint: ``homelab-rpc-<host>.service`` (llama.cpp's rpc-server on an
RPC worker), installed, started, restarted only on its own changes, stopped and verified (its
port accepts a TCP connection). Real processes: the fake supervisor and a real TCP listener."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from deploy_helpers import free_port, render_files, rpc_unit

from homelab.deploy.changes import action_for, compare
from homelab.deploy.installer import Deployer, DeployFailed, Options, Target
from homelab.deploy.paths import HostPaths
from homelab.deploy.units import side_unit_files


def pid_of(pid_file: Path) -> int:
    return int(pid_file.read_text().split()[0])


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.fixture
def worker(events: Path):
    target = Target(
        name="box",
        listen=f"127.0.0.1:{free_port()}",
        service="none",
        preload=("alpha",),
        health_timeout=15,
        rpc_listen=f"127.0.0.1:{free_port()}",
    )
    deployer = Deployer(target, Options(quiet=True))
    yield target, deployer
    deployer.stop()


def files_for(target: Target, models: dict[str, str], rpc_args: str = "", **kw) -> dict[str, bytes]:
    assert target.rpc_listen
    return render_files("box", target.listen, models, **kw) | rpc_unit("box", target.rpc_listen, rpc_args)


def test_the_rpc_unit_runs_beside_the_endpoint_and_restarts_only_on_its_own_changes(
    worker, write_rendered, capsys: pytest.CaptureFixture[str]
) -> None:
    target, deployer = worker
    paths = HostPaths.for_host("box")
    rpc_pid_file, rpc_log = paths.base / "homelab-rpc-box.pid", paths.base / "homelab-rpc-box.log"
    models = {"alpha": "-c 512"}

    first = deployer.install(write_rendered(files_for(target, models)))
    assert first.verify_steps[0] == f"rpc-server on {target.rpc_listen}: accepts connections"
    assert any("/health: ok" in s for s in first.verify_steps)
    main, rpc = pid_of(paths.pid_file), pid_of(rpc_pid_file)
    assert running(main) and running(rpc) and main != rpc
    assert "rpc stand-in listening" in rpc_log.read_text()
    status = deployer.status()
    assert f"box: running, pid {main}" in status
    assert f"homelab-rpc-box.service: running, pid {rpc} (service: none; log {rpc_log})" in status

    # config only: the endpoint reloads, the rpc-server keeps running (it cannot reload)
    second = deployer.install(write_rendered(files_for(target, {"alpha": "-c 1024"}, recipes="r2")))
    assert second.action == "reload"
    assert (pid_of(paths.pid_file), pid_of(rpc_pid_file)) == (main, rpc)

    # the main unit changes: the endpoint restarts, the rpc-server still keeps running
    third = deployer.install(write_rendered(files_for(target, {"alpha": "-c 1024"}, unit_extra="Nice=5")))
    assert third.action == "restart"
    main = pid_of(paths.pid_file)
    assert pid_of(rpc_pid_file) == rpc

    # only the rpc unit changes (a new -t): it restarts, the endpoint is left alone
    capsys.readouterr()
    deployer.options.quiet = False
    fourth = deployer.install(write_rendered(files_for(target, {"alpha": "-c 1024"}, "-t 2", unit_extra="Nice=5")))
    assert fourth.action == "none"
    assert "homelab-rpc-box.service: restarted (its unit or environment changed)" in capsys.readouterr().out
    assert pid_of(paths.pid_file) == main
    assert pid_of(rpc_pid_file) != rpc and not running(rpc)
    rpc = pid_of(rpc_pid_file)

    # the rpc-server died: the next deploy of the same files starts it again, and only it
    os.kill(rpc, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while deployer.service.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not deployer.service.alive()
    again = deployer.install(write_rendered(files_for(target, {"alpha": "-c 1024"}, "-t 2", unit_extra="Nice=5")))
    assert (again.changed, again.action) == (False, "started")
    assert pid_of(paths.pid_file) == main and running(pid_of(rpc_pid_file))

    # stop covers both; status says so
    deployer.stop()
    assert not running(main) and not rpc_pid_file.exists()
    assert deployer.status().count("not running") == 2


def test_an_env_file_change_restarts_the_rpc_unit_that_reads_it(worker, write_rendered) -> None:
    target, deployer = worker
    rpc_pid_file = HostPaths.for_host("box").base / "homelab-rpc-box.pid"
    files = files_for(target, {"alpha": "-c 512"})
    deployer.install(write_rendered(files))
    rpc = pid_of(rpc_pid_file)
    files["homelab-box.env"] = b"HOMELAB_TEST=2\n"
    report = deployer.install(write_rendered(files))
    assert report.action == "restart"  # the endpoint reads it too
    assert pid_of(rpc_pid_file) != rpc


def test_a_worker_with_only_the_rpc_unit_skips_the_http_checks(events: Path, write_rendered) -> None:
    target = Target(name="box", service="none", health_timeout=15, rpc_listen=f"127.0.0.1:{free_port()}")
    deployer = Deployer(target, Options(quiet=True))
    manifest = {"inputs": {"build": "b1", "host": "h1"}}
    files = {"homelab-box.env": b"X=1\n", "manifest.json": json.dumps(manifest).encode()}
    try:
        report = deployer.install(write_rendered(files | rpc_unit("box", target.rpc_listen)))
        assert report.verify_steps == [
            f"rpc-server on {target.rpc_listen}: accepts connections",
            "no endpoint unit (an RPC worker only): HTTP checks skipped",
        ]
        assert deployer.service.alive()
        assert not HostPaths.for_host("box").pid_file.exists()  # no endpoint process
        assert deployer.status().startswith("homelab-rpc-box.service: running, pid")
    finally:
        deployer.stop()
    assert not deployer.service.alive()


def test_an_rpc_server_that_exits_fails_verification_and_rolls_back(worker, write_rendered) -> None:
    target, deployer = worker
    good = files_for(target, {"alpha": "-c 512"})
    deployer.install(write_rendered(good))
    with pytest.raises(DeployFailed) as failure:
        deployer.install(write_rendered(files_for(target, {"alpha": "-c 512"}, "--fail")))
    message = str(failure.value)
    assert "the rpc-server exited before" in message
    assert "rolled back to generation 1" in message and "the endpoint answers" in message
    assert f"error: failed to bind {target.rpc_listen}" in message  # the rpc unit's log tail
    assert deployer.service.alive()


def test_side_unit_files_do_not_decide_the_endpoint_action(worker) -> None:
    target, _ = worker
    old = files_for(target, {"alpha": "-c 512"})
    new = files_for(target, {"alpha": "-c 512"}, "-t 4")
    sides = side_unit_files("box", old, new)
    assert sides == {"units/homelab-rpc-box.service"}
    assert action_for(compare(old, new), True) == "restart"  # without knowing the side units
    assert action_for(compare(old, new), True, "supervisor", sides) == "none"


def test_systemd_enables_the_rpc_unit_and_restarts_it_only_when_it_changed(
    recorder: Path, tmp_path: Path, write_rendered
) -> None:
    from test_install import serve_in_background

    listen = f"127.0.0.1:{free_port()}"
    target = Target(name="box", listen=listen, service="user", health_timeout=15)  # no port to probe
    deployer = Deployer(target, Options(root=tmp_path / "root", quiet=True, verify="models"))
    rpc = rpc_unit("box", "127.0.0.1:50052")
    proc = serve_in_background(listen, HostPaths.for_host("box").current / "config.yaml")
    try:
        deployer.install(write_rendered(render_files("box", listen, {"alpha": "-c 1"}) | rpc))
        calls = recorder.read_text().splitlines()
        assert "systemctl --user enable homelab-rpc-box.service" in calls
        assert "systemctl --user restart homelab-rpc-box.service" in calls
        unit_dir = tmp_path / "root" / Path.home().relative_to("/") / ".config/systemd/user"
        assert (unit_dir / "homelab-rpc-box.service").is_file()

        recorder.write_text("")
        deployer.install(write_rendered(render_files("box", listen, {"alpha": "-c 2"}) | rpc))
        calls = recorder.read_text().splitlines()
        assert "systemctl --user reload homelab-box.service" in calls
        assert not any("restart homelab-rpc" in c or "start homelab-rpc" in c for c in calls)

        recorder.write_text("")
        deployer.install(write_rendered(render_files("box", listen, {"alpha": "-c 2"}) | rpc_unit("box", "127.0.0.1:50052", "-c")))
        calls = recorder.read_text().splitlines()
        assert "systemctl --user daemon-reload" in calls
        assert "systemctl --user restart homelab-rpc-box.service" in calls
        assert not any(c.endswith(("reload homelab-box.service", "restart homelab-box.service")) for c in calls)

        recorder.write_text("")
        deployer.stop()
        assert recorder.read_text().splitlines() == [
            "systemctl --user stop homelab-rpc-box.service",
            "systemctl --user stop homelab-box.service",
        ]
    finally:
        proc.terminate()
        proc.wait(5)


def test_dry_run_names_the_side_unit_it_would_start_and_leaves_the_endpoint(worker, write_rendered, tmp_path: Path) -> None:
    from deploy_helpers import write_inventory

    from homelab.deploy.dryrun import preview
    from homelab.inventory import load_host
    from homelab.render import staging_dir

    target, deployer = worker
    assert target.rpc_listen
    inventory = write_inventory(tmp_path / "inv", "box", "local", target.listen)
    deployer.install(write_rendered(render_files("box", target.listen, {"tiny": "-c 512"})))
    staged = staging_dir("box")
    for name, data in (render_files("box", target.listen, {"tiny": "-c 512"}) | rpc_unit("box", target.rpc_listen)).items():
        (staged / name).parent.mkdir(parents=True, exist_ok=True)
        (staged / name).write_bytes(data)
    text = preview(load_host("box", inventory))
    assert "service: nothing restarted" in text
    assert "side unit: start homelab-rpc-box.service (new)" in text
    assert "would create: a new generation 2" in text
