"""Install + activate + verify + rollback, against a real detached process (service: none) and
into a temporary root with systemctl recorded (service: user / system)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from deploy_helpers import free_port, render_files

from homelab.deploy.generations import GenerationStore
from homelab.deploy.hostlock import HostBusy, HostLock
from homelab.deploy.installer import Deployer, DeployFailed, Options, Target
from homelab.deploy.paths import HostPaths
from homelab.deploy.systemd import Runner


def read_events(path: Path) -> list[str]:
    # the fake service appends one line per start/reload; give a reload a moment to be logged
    return path.read_text().split("\n")[:-1] if path.exists() else []


@pytest.fixture
def none_host(events: Path):
    listen = f"127.0.0.1:{free_port()}"
    target = Target(name="box", listen=listen, service="none", preload=("alpha",), health_timeout=15)
    deployer = Deployer(target, Options(quiet=True))
    yield target, deployer
    deployer.stop()


def test_service_none_start_reload_restart_and_rollback(none_host, events: Path, write_rendered) -> None:
    target, deployer = none_host
    models = {"alpha": "-c 512", "beta": "-c 512"}

    first = deployer.install(write_rendered(render_files("box", target.listen, models)))
    assert (first.changed, first.generation, first.action) == (True, 1, "start")
    assert [e.split()[0] for e in read_events(events)] == ["start"]
    pid = int(HostPaths.for_host("box").pid_file.read_text().split()[0])

    # the same rendered files again: no generation, nothing restarted
    again = deployer.install(write_rendered(render_files("box", target.listen, models)))
    assert (again.changed, again.generation) == (False, 1)
    assert GenerationStore(deployer.paths).numbers() == [1]

    # a profile/flag change in config.yaml only: reload (SIGHUP), same process
    models2 = {"alpha": "-c 512", "beta": "-c 1024"}
    second = deployer.install(write_rendered(render_files("box", target.listen, models2, recipes="r2")))
    assert second.action == "reload"
    assert "completion with beta: ok" in second.verify_steps  # changed model checked
    assert read_events(events)[-1] == f"reload {pid}"

    # a unit change: restart, new process
    third = deployer.install(write_rendered(render_files("box", target.listen, models2, unit_extra="Nice=5")))
    assert third.action == "restart"
    new_pid = int(HostPaths.for_host("box").pid_file.read_text().split()[0])
    assert new_pid != pid

    # a broken flag: verification fails, generation 4 is marked failed, 3 serves again
    broken = {"alpha": "-c 512", "beta": "-c 1024 --no-such-flag"}
    with pytest.raises(DeployFailed) as failure:
        deployer.install(write_rendered(render_files("box", target.listen, broken, unit_extra="Nice=5")))
    message = str(failure.value)
    assert "generation 4" in message and "completion with 'beta'" in message
    assert "rolled back to generation 3 (reload): the endpoint answers" in message
    assert "invalid argument: --no-such-flag" in message  # the service log tail
    store = GenerationStore(deployer.paths)
    assert store.current_number() == 3 and store.get(4).status == "failed"
    with urllib.request.urlopen(f"http://{target.listen}/v1/models", timeout=5) as resp:
        ids = {m["id"] for m in json.load(resp)["data"]}
    assert ids == {"alpha", "beta"}

    # explicit rollback to 1, then status/stop
    back = deployer.rollback(1)
    assert (back.generation, back.action) == (1, "restart")
    assert "running" in deployer.status()
    deployer.stop()
    assert "not running" in deployer.status()
    # a deploy of unchanged files starts a stopped service again
    restarted = deployer.install(write_rendered(render_files("box", target.listen, models)))
    assert (restarted.changed, restarted.action) == (False, "started")


def test_first_deploy_that_fails_leaves_nothing_current(none_host, write_rendered) -> None:
    target, deployer = none_host
    broken = {"alpha": "--no-such-flag"}
    with pytest.raises(DeployFailed, match="no previous generation"):
        deployer.install(write_rendered(render_files("box", target.listen, broken)))
    assert GenerationStore(deployer.paths).current_number() is None
    assert not deployer.service.alive()


def serve_in_background(listen: str, config: Path) -> subprocess.Popen:
    """What systemd would have started: the fake service, so verification has an endpoint."""
    fake = Path(__file__).with_name("fake_service.py")
    return subprocess.Popen([sys.executable, str(fake), "--config", str(config), "--listen", listen])


@pytest.mark.parametrize("mode", ["user", "system"])
def test_systemd_modes_install_units_into_root_and_record_systemctl(
    mode: str, recorder: Path, tmp_path: Path, write_rendered
) -> None:
    root = tmp_path / "root"
    listen = f"127.0.0.1:{free_port()}"
    target = Target(name="box", listen=listen, service=mode, health_timeout=15)
    deployer = Deployer(target, Options(root=root, quiet=True, verify="models"))
    proc = serve_in_background(listen, HostPaths.for_host("box").current / "config.yaml")
    try:
        deployer.install(write_rendered(render_files("box", listen, {"alpha": "-c 1"})))
        unit_dir = (
            root / Path.home().relative_to("/") / ".config/systemd/user"
            if mode == "user"
            else root / "etc/systemd/system"
        )
        assert (unit_dir / "homelab-box.service").is_file()
        scope = "--user " if mode == "user" else ""
        calls = recorder.read_text().splitlines()
        assert calls[:3] == [
            f"systemctl {scope}daemon-reload",
            f"systemctl {scope}enable homelab-box.service",
            f"systemctl {scope}restart homelab-box.service",
        ]
        assert any(c.startswith("loginctl show-user") for c in calls) == (mode == "user")
        recorder.write_text("")
        deployer.install(write_rendered(render_files("box", listen, {"alpha": "-c 2"})))
        calls = recorder.read_text().splitlines()
        assert f"systemctl {scope}reload homelab-box.service" in calls
        assert f"systemctl {scope}daemon-reload" not in calls  # units unchanged
        assert not any(c.startswith("loginctl") for c in calls)  # lingering warned only once
    finally:
        proc.terminate()
        proc.wait(5)


def test_system_mode_checks_service_groups(recorder: Path, tmp_path: Path, write_rendered) -> None:
    target = Target(name="box", service="system", health_timeout=15)
    deployer = Deployer(target, Options(root=tmp_path / "root", quiet=True))
    files = render_files("box", "127.0.0.1:1", {"a": ""}, unit_extra="SupplementaryGroups=render no-such-grp-x")
    with pytest.raises(Exception) as failure:
        deployer.install(write_rendered(files))
    assert "no-such-grp-x" in str(failure.value) and "do not exist" in str(failure.value)


def test_second_deploy_of_a_host_is_refused_with_the_holder_pid(tmp_path: Path) -> None:
    paths = HostPaths.for_host("box")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; from homelab.deploy.hostlock import HostLock; "
            "from homelab.deploy.paths import HostPaths; "
            "l=HostLock(HostPaths.for_host('box')); l.acquire(); print('held', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(HostBusy, match=rf"another deploy of host 'box' is running \(pid {holder.pid}"):
            HostLock(paths).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = HostLock(paths)
    lock.acquire()  # released by the kernel when the holder died
    lock.release()


def test_root_prefix_without_systemctl_override_records_calls_and_installs_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_rendered
) -> None:
    monkeypatch.delenv("SYSTEMCTL", raising=False)
    monkeypatch.delenv("LOGINCTL", raising=False)
    root = tmp_path / "image"
    deployer = Deployer(Target(name="box", service="user"), Options(root=root, quiet=True))
    report = deployer.install(write_rendered(render_files("box", "127.0.0.1:1", {"a": ""})))
    assert report.generation == 1
    assert "not verified" in report.verify_steps[0]
    unit = root / Path.home().relative_to("/") / ".config/systemd/user/homelab-box.service"
    assert unit.is_file()
    calls = (root / "systemctl.log").read_text().splitlines()
    assert calls[:3] == [
        "systemctl --user daemon-reload",
        "systemctl --user enable homelab-box.service",
        "systemctl --user restart homelab-box.service",
    ]


def test_auto_picks_user_where_a_user_manager_runs_else_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from homelab.deploy.service_mode import resolve_mode

    runtime = tmp_path / "run"
    (runtime / "systemd").mkdir(parents=True)
    (runtime / "systemd" / "private").touch()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert resolve_mode("auto") == "user"
    assert capsys.readouterr().out == f"service: auto -> user ({runtime}/systemd/private exists)\n"
    (runtime / "systemd" / "private").unlink()
    fake = tmp_path / "systemctl"
    fake.write_text("#!/bin/sh\necho offline\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("SYSTEMCTL", str(fake))
    assert resolve_mode("auto") == "none"
    assert "service: auto -> none (systemctl --user is-system-running: offline)" in capsys.readouterr().out
    assert resolve_mode("system") == "system"


def test_system_mode_checks_the_service_user(recorder: Path, tmp_path: Path, write_rendered) -> None:
    deployer = Deployer(Target(name="box", service="system"), Options(root=tmp_path / "root", quiet=True))
    files = render_files("box", "127.0.0.1:1", {"a": ""}, unit_extra="User=no-such-user-x")
    with pytest.raises(Exception, match=r"service user 'no-such-user-x' .* does not exist: create it with `useradd"):
        deployer.install(write_rendered(files))


class FailingRestart(Runner):
    """The real runner ($SYSTEMCTL: the recorder), except that `restart` breaks while armed, as an
    unexpected error would (not a ServiceError): the unit dir on a full disk, a killed systemctl."""

    armed = False

    def run(self, tool: str, args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        if self.armed and "restart" in args:
            raise OSError(28, "No space left on device")
        return super().run(tool, args, check)


def test_any_failure_during_apply_puts_the_previous_generation_back(
    recorder: Path, tmp_path: Path, write_rendered
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    runner = FailingRestart()
    target = Target(name="box", listen=listen, service="user", health_timeout=15)
    deployer = Deployer(target, Options(root=tmp_path / "root", quiet=True, verify="models", runner=runner))
    proc = serve_in_background(listen, HostPaths.for_host("box").current / "config.yaml")
    try:
        deployer.install(write_rendered(render_files("box", listen, {"alpha": "-c 1"})))
        runner.armed = True
        with pytest.raises(DeployFailed) as failure:
            deployer.install(write_rendered(render_files("box", listen, {"alpha": "-c 1"}, unit_extra="Nice=5")))
        message = str(failure.value)
        assert "generation 2: OSError: [Errno 28] No space left on device" in message
        assert "rolled back to generation 1" in message
        store = GenerationStore(deployer.paths)
        assert store.current_number() == 1 and store.get(2).status == "failed"
        assert os.readlink(deployer.paths.current) == "generations/1"
    finally:
        proc.terminate()
        proc.wait(5)


def test_generation_files_are_written_whole(tmp_path: Path) -> None:
    """No temp file or staging folder is left beside a generation, and state files are complete."""
    store = GenerationStore(HostPaths("box", tmp_path / "box"))
    generation = store.create({"config.yaml": b"a: 1\n", "units/x.service": b"[Unit]\n"}, ["first"], "start")
    store.switch(generation.number)
    assert sorted(p.name for p in (tmp_path / "box" / "generations").iterdir()) == ["1"]
    assert not [p for p in (tmp_path / "box").rglob("*.tmp")]
    assert json.loads((tmp_path / "box" / "generations.json").read_text())["current"] == 1
