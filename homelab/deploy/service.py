"""Run the host's service: systemd user or system units, or a detached process (``service: none``).

Every mode offers the same verbs: ``apply(generation, action)`` (install what the generation
needs and start/restart/reload), ``stop()``, ``status()``, ``alive()`` and ``logs(n)``.

The systemd modes install the generation's unit files below the root prefix and drive
``systemctl``; the binary is ``$SYSTEMCTL`` when set (tests point it at a script that records its
arguments), likewise ``$LOGINCTL`` and ``$JOURNALCTL``. ``service: none`` runs the unit's
``ExecStart`` itself (its ``Environment``/``EnvironmentFile`` applied), detached in a new session,
with a pid file and a log file under ``HOMELAB_STATE/hosts/<host>/``.
"""

from __future__ import annotations

import getpass
import grp
import os
import pwd
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HomelabError
from .generations import Generation
from .paths import HostPaths, under_root

UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".target")


class ServiceError(HomelabError):
    pass


def _say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------
# unit files


@dataclass(frozen=True)
class Unit:
    name: str
    text: str

    def values(self, key: str) -> list[str]:
        """Every value of ``key=`` in the unit (any section), continuation lines joined."""
        found = []
        logical = self.text.replace("\\\n", " ")
        for line in logical.splitlines():
            line = line.strip()
            if line.startswith((";", "#")) or "=" not in line:
                continue
            name, _, value = line.partition("=")
            if name.strip() == key:
                found.append(value.strip())
        return found


def units_of(files: dict[str, bytes]) -> list[Unit]:
    """Unit files of a generation (anywhere in it; installed flat by file name)."""
    return [
        Unit(Path(name).name, data.decode())
        for name, data in sorted(files.items())
        if name.endswith(UNIT_SUFFIXES)
    ]


def main_unit(units: list[Unit], host: str) -> Unit | None:
    services = [u for u in units if u.name.endswith(".service")]
    for unit in services:
        if unit.name == f"homelab-{host}.service":
            return unit
    return services[0] if services else None


def _expand_specifiers(value: str) -> str:
    home = str(Path.home())
    return value.replace("%%", "\0").replace("%h", home).replace("%u", getpass.getuser()).replace(
        "\0", "%"
    )


def _read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        parts = shlex.split(value) if value.strip() else [""]
        env[key.strip()] = parts[0] if len(parts) == 1 else " ".join(parts)
    return env


def command_from_unit(unit: Unit) -> tuple[list[str], dict[str, str]]:
    """The ``ExecStart`` argv and the environment it sets, for running it without systemd."""
    starts = unit.values("ExecStart")
    if not starts:
        raise ServiceError(f"unit {unit.name} has no ExecStart=: cannot run it with service: none")
    words = shlex.split(_expand_specifiers(starts[-1]))
    while words and words[0][:1] in "-@:+!":  # systemd's ExecStart prefixes
        words[0] = words[0][1:] or words.pop(0)
    env: dict[str, str] = {}
    for value in unit.values("EnvironmentFile"):
        optional = value.startswith("-")
        path = Path(_expand_specifiers(value.lstrip("-")))
        if path.is_file():
            env.update(_read_env_file(path))
        elif not optional:
            raise ServiceError(f"unit {unit.name}: EnvironmentFile={path} does not exist")
    for value in unit.values("Environment"):
        for item in shlex.split(_expand_specifiers(value)):
            key, _, val = item.partition("=")
            env[key] = val
    # systemd's variable syntax: ${NAME} from the unit's environment, $$ for a literal $
    lookup = {**os.environ, **env}
    argv = [
        re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: lookup.get(m.group(1), ""), w.replace("$$", "\0"))
        .replace("\0", "$")
        for w in words
    ]
    return argv, env


# ---------------------------------------------------------------------------------------------
# command runner (systemctl and friends)


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
                f"`{shlex.join(argv)}` failed (exit {result.returncode})"
                + (f": {detail[-1]}" if detail else "")
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


# ---------------------------------------------------------------------------------------------
# the modes


class Service:
    mode = "?"

    def __init__(self, paths: HostPaths) -> None:
        self.paths = paths

    def apply(self, generation: Generation, previous: Generation | None, action: str) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def status(self) -> str:
        raise NotImplementedError

    def logs(self, lines: int = 30) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        return self.mode


class SystemdService(Service):
    """``service: user`` or ``service: system``."""

    def __init__(self, paths: HostPaths, mode: str, root: Path, runner: Runner | None = None) -> None:
        super().__init__(paths)
        self.mode = mode
        self.root = root
        self.runner = runner or Runner()
        self.scope = ["--user"] if mode == "user" else []
        self.unit_name = f"homelab-{paths.host}.service"

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
            _say(
                f"note: lingering is off for {user}: the service stops when you log out. "
                f"Enable it once with `loginctl enable-linger {user}`"
            )
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.write_text("warned\n")

    def apply(self, generation: Generation, previous: Generation | None, action: str) -> None:
        files = generation.files()
        units = units_of(files)
        unit = main_unit(units, self.paths.host)
        if unit is None:
            raise ServiceError(
                f"generation {generation.number} of {self.paths.host} has no .service unit: the render "
                f"stage must produce one for service: {self.mode}"
            )
        self.unit_name = unit.name
        self._preflight(units, None)
        self.unit_dir.mkdir(parents=True, exist_ok=True)
        changed = False
        for u in units:
            target = self.unit_dir / u.name
            if not target.is_file() or target.read_text() != u.text:
                tmp = target.with_name(f".{u.name}.{os.getpid()}.tmp")
                tmp.write_text(u.text)
                os.replace(tmp, target)
                changed = True
        stale = [u.name for u in units_of(previous.files())] if previous else []
        for name in stale:
            if name not in {u.name for u in units} and (self.unit_dir / name).exists():
                self.systemctl("disable", "--now", name, check=False)
                (self.unit_dir / name).unlink()
                changed = True
        if changed:
            self.systemctl("daemon-reload")
        self.systemctl("enable", unit.name)
        if action == "reload":
            self.systemctl("reload", unit.name)
        elif action in ("restart", "start"):
            self.systemctl("restart", unit.name)
        elif not self.alive():
            self.systemctl("start", unit.name)
        self._check_linger()

    def stop(self) -> None:
        self.systemctl("stop", self.unit_name)

    def alive(self) -> bool:
        out = self.systemctl("is-active", self.unit_name, check=False)
        return out.stdout.strip() in ("active", "reloading", "activating")

    def status(self) -> str:
        out = self.systemctl("is-active", self.unit_name, check=False)
        return f"{self.unit_name} ({self.mode} unit): {out.stdout.strip() or 'unknown'}"

    def logs(self, lines: int = 30) -> str:
        try:
            out = self.runner.run(
                "journalctl", [*self.scope, "-u", self.unit_name, "-n", str(lines), "--no-pager"], check=False
            )
        except ServiceError as exc:
            return str(exc)
        return (out.stdout or out.stderr).rstrip()

    def describe(self) -> str:
        return f"{self.mode} unit {self.unit_name} in {self.unit_dir}"


def _proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


class DetachedService(Service):
    """``service: none``: the unit's ExecStart run as a detached process with a pid file."""

    mode = "none"

    def __init__(
        self,
        paths: HostPaths,
        fallback_argv: list[str] | None = None,
        reload_url: str | None = None,
        api_key: str | None = None,
    ) -> None:
        super().__init__(paths)
        self.fallback_argv = fallback_argv
        self.reload_url = reload_url
        self.api_key = api_key
        self._child: subprocess.Popen[bytes] | None = None
        """The process this object started: polled so it is reaped if it dies while we watch."""

    def _pid(self) -> int | None:
        try:
            pid_text, _, start = self.paths.pid_file.read_text().strip().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        now = _proc_start_time(pid)
        if now is None or (start and now != start):
            return None  # gone, a zombie, or a recycled pid
        return pid

    def alive(self) -> bool:
        return self._pid() is not None

    def _command(self, generation: Generation) -> tuple[list[str], dict[str, str]]:
        # run through the current link, so a reload after a switch reads the new files
        unit = main_unit(units_of(generation.files()), self.paths.host)
        if unit is not None:
            return command_from_unit(unit)
        if self.fallback_argv:
            return list(self.fallback_argv), {}
        raise ServiceError(
            f"generation {generation.number} of {self.paths.host} has no .service unit to take the "
            "command from"
        )

    def start(self, generation: Generation) -> int:
        argv, env = self._command(generation)
        self.paths.base.mkdir(parents=True, exist_ok=True)
        log = open(self.paths.log_file, "ab")
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} start generation {generation.number}: "
                  f"{shlex.join(argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                cwd=self.paths.base,
                start_new_session=True,  # setsid: survives this process and its terminal
            )
        except OSError as exc:
            raise ServiceError(f"cannot start {argv[0]}: {exc}") from None
        finally:
            log.close()
        start = _proc_start_time(proc.pid) or ""
        tmp = self.paths.pid_file.with_name(f".{self.paths.pid_file.name}.tmp")
        tmp.write_text(f"{proc.pid} {start}\n")
        os.replace(tmp, self.paths.pid_file)
        self._child = proc
        return proc.pid

    def stop(self, timeout: float = 20.0) -> None:
        pid = self._pid()
        if pid is None:
            self.paths.pid_file.unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._pid() is not None:
            self._reap()
            time.sleep(0.05)
        if self._pid() is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._reap()
        self.paths.pid_file.unlink(missing_ok=True)

    def _reap(self) -> None:
        if self._child is not None:
            self._child.poll()

    def reload(self) -> None:
        """Ask the supervisor to re-read its config and wait for the answer (``POST /x-reload``,
        which reports a rejected config); SIGHUP when the endpoint does not offer it."""
        pid = self._pid()
        if pid is None:
            raise ServiceError(f"{self.paths.host}: the service is not running, nothing to reload")
        if self.reload_url:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            request = urllib.request.Request(self.reload_url, data=b"", headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=120) as resp:
                    resp.read()
                    return
            except urllib.error.HTTPError as exc:
                if exc.code == 400:
                    body = exc.read().decode(errors="replace")
                    raise ServiceError(f"the supervisor rejected the new config: {body[:500]}") from None
                if exc.code != 404:
                    raise ServiceError(f"{self.reload_url}: HTTP {exc.code}") from None
            except OSError:
                pass  # not answering on HTTP: fall back to the signal
        os.kill(pid, signal.SIGHUP)

    def apply(self, generation: Generation, previous: Generation | None, action: str) -> None:
        running = self.alive()
        if action == "reload" and running:
            self.reload()
            return
        if action in ("restart", "start") or not running:
            self.stop()
            self.start(generation)

    def status(self) -> str:
        pid = self._pid()
        if pid is None:
            return f"{self.paths.host}: not running (service: none; log {self.paths.log_file})"
        return f"{self.paths.host}: running, pid {pid} (service: none; log {self.paths.log_file})"

    def logs(self, lines: int = 30) -> str:
        try:
            text = self.paths.log_file.read_text(errors="replace")
        except OSError:
            return "(no log file)"
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def describe(self) -> str:
        return f"detached process (pid file {self.paths.pid_file}, log {self.paths.log_file})"


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


def resolve_mode(configured: str, runner: Runner | None = None, quiet: bool = False) -> str:
    """``auto`` becomes ``user`` where a systemd user manager runs, else ``none`` (said once)."""
    if configured != "auto":
        return configured
    running, why = systemd_user_manager_running(runner)
    mode = "user" if running else "none"
    if not quiet:
        _say(f"service: auto -> {mode} ({why})")
    return mode


def make_service(
    paths: HostPaths,
    mode: str,
    root: Path,
    runner: Runner | None = None,
    reload_url: str | None = None,
    api_key: str | None = None,
) -> Service:
    if mode in ("user", "system"):
        return SystemdService(paths, mode, root, runner)
    if mode == "none":
        return DetachedService(paths, reload_url=reload_url, api_key=api_key)
    raise ServiceError(f"unknown service mode {mode!r}: use user, system, none or auto")


def default_serve_argv(config: Path, listen: str) -> list[str]:
    """The supervisor command for a generation without a unit (``homelab serve``)."""
    return [sys.executable, "-m", "homelab.cli", "serve", "--config", str(config), "--listen", listen]
