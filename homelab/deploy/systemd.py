"""``service: user`` and ``service: system``: the generation's unit files installed below the
root prefix and driven with ``systemctl``. The binaries are ``$SYSTEMCTL``, ``$LOGINCTL`` and
``$JOURNALCTL`` when set (tests point them at a script that records its arguments)."""

from __future__ import annotations

import getpass
import grp
import os
import pwd
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..files import atomic_write_text
from .generations import Generation
from .paths import HostPaths, under_root
from .service import Service, ServiceError, generation_units, say
from .units import Unit, unit_changed, units_of


@dataclass
class Runner:
    """Runs external tools; a tool's path can be overridden by an environment variable."""

    overrides: dict[str, str] = field(
        default_factory=lambda: {"systemctl": "SYSTEMCTL", "loginctl": "LOGINCTL", "journalctl": "JOURNALCTL"}
    )

    def argv(self, tool: str, args: list[str]) -> list[str]:
        env_name = self.overrides.get(tool)
        binary = os.environ.get(env_name, tool) if env_name else tool
        return [*shlex.split(binary), *args]

    def run(self, tool: str, args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = self.argv(tool, args)
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        except FileNotFoundError:
            raise ServiceError(f"{tool} not found ({argv[0]}): is systemd installed? Use service: none") from None
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise ServiceError(
                f"`{shlex.join(argv)}` failed (exit {result.returncode})" + (f": {detail[-1]}" if detail else "")
            )
        return result


class RecordingRunner(Runner):
    """For ``--root DIR`` without a ``$SYSTEMCTL`` override: systemd calls are appended to
    ``DIR/systemctl.log`` instead of touching this machine's service manager (image builds)."""

    def __init__(self, log: Path) -> None:
        super().__init__()
        self.log = log

    def run(self, tool: str, args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        env_name = self.overrides.get(tool)
        if env_name and os.environ.get(env_name):
            return super().run(tool, args, check)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as f:
            f.write(shlex.join([tool, *args]) + "\n")
        return subprocess.CompletedProcess([tool, *args], 0, "", "")


class SystemdService(Service):
    """``service: user`` or ``service: system``."""

    def __init__(self, paths: HostPaths, mode: str, root: Path, runner: Runner | None = None) -> None:
        super().__init__(paths)
        self.mode = mode
        self.root = root
        self.runner = runner or Runner()
        self.scope = ["--user"] if mode == "user" else []
        self.unit_name = self.main_name

    @property
    def unit_dir(self) -> Path:
        if self.mode == "user":
            return under_root(self.root, Path.home() / ".config" / "systemd" / "user")
        return under_root(self.root, Path("/etc/systemd/system"))

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.runner.run("systemctl", [*self.scope, *args], check=check)

    def _preflight(self, units: list[Unit], host_user: str | None) -> None:
        if self.mode != "system":
            return
        if self.root == Path("/") and os.geteuid() != 0:
            raise ServiceError(
                f"service: system installs into /etc/systemd/system and needs root: run the deploy "
                f"with sudo, or set runtime.service: user in hosts/{self.paths.host}.yaml"
            )
        users = {v for u in units for v in u.values("User")} | ({host_user} if host_user else set())
        for user in sorted(users):
            try:
                pwd.getpwnam(user)
            except KeyError:
                raise ServiceError(
                    f"service user {user!r} (runtime.user in hosts/{self.paths.host}.yaml) does not "
                    f"exist: create it with `useradd --system --create-home {user}`"
                ) from None
        groups = {g for u in units for v in u.values("SupplementaryGroups") for g in v.split()}
        missing = []
        for group in sorted(groups):
            try:
                grp.getgrnam(group)
            except KeyError:
                missing.append(group)
        if missing:
            raise ServiceError(
                f"groups {', '.join(missing)} (SupplementaryGroups of {self.unit_name}) do not exist "
                "on this machine: install the GPU driver packages that create them, or `groupadd` them"
            )

    def _check_linger(self) -> None:
        if self.mode != "user":
            return
        stamp = self.paths.notices / "linger"
        if stamp.exists():
            return
        user = getpass.getuser()
        try:
            out = self.runner.run("loginctl", ["show-user", user, "-p", "Linger"], check=False).stdout
        except ServiceError:
            return
        if "Linger=no" in out:
            say(
                f"note: lingering is off for {user}: the service stops when you log out. "
                f"Enable it once with `loginctl enable-linger {user}`"
            )
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.write_text("warned\n")

    def apply(self, generation: Generation, previous: Generation | None, action: str) -> list[str]:
        files, main, sides = generation_units(generation, self.paths.host, self.mode)
        units = units_of(files)
        if main is not None:
            self.unit_name = main.name
        self._preflight(units, None)
        self.unit_dir.mkdir(parents=True, exist_ok=True)
        changed = False
        for u in units:
            target = self.unit_dir / u.name
            if not target.is_file() or target.read_text() != u.text:
                atomic_write_text(target, u.text)
                changed = True
        old_files = previous.files() if previous else None
        stale = [u.name for u in units_of(old_files)] if old_files else []
        for name in stale:
            if name not in {u.name for u in units} and (self.unit_dir / name).exists():
                self.systemctl("disable", "--now", name, check=False)
                (self.unit_dir / name).unlink()
                changed = True
        if changed:
            self.systemctl("daemon-reload")
        if main is not None:
            self.systemctl("enable", main.name)
            if action == "reload":
                self.systemctl("reload", main.name)
            elif action in ("restart", "start"):
                self.systemctl("restart", main.name)
            elif not self._active(main.name):
                self.systemctl("start", main.name)
        notes = []
        for side in sides:
            self.systemctl("enable", side.name)
            if action != "ensure" and unit_changed(side, old_files, files):
                self.systemctl("restart", side.name)
                notes.append(f"{side.name}: restarted (its unit or environment changed)")
            elif not self._active(side.name):
                self.systemctl("start", side.name)
                notes.append(f"{side.name}: started (it was not running)")
        self._check_linger()
        return notes

    def _active(self, name: str) -> bool:
        out = self.systemctl("is-active", name, check=False)
        return out.stdout.strip() in ("active", "reloading", "activating")

    def stop(self) -> None:
        main, sides = self.current_units()
        for side in sides:
            self.systemctl("stop", side, check=False)  # absent or already stopped: nothing to do
        if main:
            self.systemctl("stop", main)

    def alive(self) -> bool:
        return all(self._active(name) for name in self.unit_names())

    def unit_alive(self, unit: str) -> bool:
        return self._active(unit)

    def status(self) -> str:
        lines = []
        for name in self.unit_names():
            out = self.systemctl("is-active", name, check=False)
            lines.append(f"{name} ({self.mode} unit): {out.stdout.strip() or 'unknown'}")
        return "\n".join(lines)

    def logs(self, lines: int = 30) -> str:
        selectors = [word for name in self.unit_names() for word in ("-u", name)]
        try:
            out = self.runner.run("journalctl", [*self.scope, *selectors, "-n", str(lines), "--no-pager"], check=False)
        except ServiceError as exc:
            return str(exc)
        return (out.stdout or out.stderr).rstrip()

    def describe(self) -> str:
        return f"{self.mode} unit(s) {', '.join(self.unit_names())} in {self.unit_dir}"


def systemd_user_manager_running(runner: Runner | None = None) -> tuple[bool, str]:
    """Whether a systemd user manager answers, and how we know (one short phrase)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and (Path(runtime) / "systemd" / "private").exists():
        return True, f"{runtime}/systemd/private exists"
    try:
        out = (runner or Runner()).run("systemctl", ["--user", "is-system-running"], check=False)
    except ServiceError:
        return False, "no systemctl"
    state = out.stdout.strip()
    if state in ("running", "degraded", "starting", "initializing", "maintenance"):
        return True, f"systemctl --user is-system-running: {state}"
    return False, f"systemctl --user is-system-running: {state or out.stderr.strip() or 'no answer'}"
