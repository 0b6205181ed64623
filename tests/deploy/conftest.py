"""Fixtures for deploy tests."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def write_rendered(tmp_path: Path) -> Callable[[dict[str, bytes]], Path]:
    """Write files into a fresh directory (a render stage staging dir)."""
    counter = iter(range(1000))

    def write(files: dict[str, bytes]) -> Path:
        out = tmp_path / f"rendered-{next(counter)}"
        for name, data in files.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(data)
        return out

    return write


@pytest.fixture
def events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "events.log"
    monkeypatch.setenv("FAKE_SERVICE_EVENTS", str(path))
    return path


RECORDER = """#!/bin/sh
echo "$@" >> {log}
case "$*" in
  *is-active*) echo active ;;
  *show-user*) echo Linger=no ;;
esac
exit 0
"""


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "calls.log"
    script = tmp_path / "record"
    script.write_text(RECORDER.format(log=log))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    for name in ("SYSTEMCTL", "LOGINCTL", "JOURNALCTL"):
        monkeypatch.setenv(name, f"{script} {name.lower()}")
    return log


SSHD = Path("/usr/sbin/sshd")


@pytest.fixture
def sshd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real sshd on 127.0.0.1 and a free port, with its own throwaway keys and config.

    Yields the ``ssh://user@127.0.0.1:PORT`` address; ``HOMELAB_SSH`` points ssh at a client
    config with the throwaway key. Skips when openssh-server is not installed."""
    import getpass
    import os
    import subprocess
    import time

    from deploy_helpers import free_port

    if not SSHD.exists():
        pytest.skip("openssh-server is not installed (/usr/sbin/sshd): apt-get install -y openssh-server")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    d = tmp_path / "ssh"
    d.mkdir()
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nLogLevel ERROR\n"
        "AcceptEnv NONE\nSubsystem sftp internal-sftp\n"
    )
    (d / "ssh_config").write_text(
        f"Host *\n  IdentityFile {d / 'client_key'}\n  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
    )
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    user = getpass.getuser()
    monkeypatch.setenv("HOMELAB_SSH", f"ssh -F {d / 'ssh_config'}")
    deadline = time.monotonic() + 10
    while True:
        probe = subprocess.run(
            ["ssh", "-F", str(d / "ssh_config"), "-p", str(port), "-o", "BatchMode=yes", f"{user}@127.0.0.1", "true"],
            capture_output=True,
        )
        if probe.returncode == 0:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"sshd did not come up: {probe.stderr.decode()} {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.1)
    yield f"ssh://{user}@127.0.0.1:{port}"
    proc.terminate()
    proc.wait(5)
