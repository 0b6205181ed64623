"""Run the host's service: systemd user or system units, or a detached process (``service: none``).

Every mode offers the same verbs: ``apply(generation, action)`` (install what the generation
needs and start/restart/reload), ``stop()``, ``status()``, ``alive()`` and ``logs(n)``.

A generation has a main unit (``homelab-<host>.service``: the endpoint; ``action`` is for it) and
may have side units beside it, such as ``homelab-rpc-<host>.service`` (llama.cpp's rpc-server on
an RPC worker host; a worker with no models has only that one). A side unit is enabled and
started with the generation, restarted only when its own unit file or an ``EnvironmentFile`` of
the generation it reads changed (rpc-server cannot reload, and a restart drops the head's
connection), and started again when it is found dead. ``alive()`` means every unit runs.

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
from collections.abc import Mapping
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


def rpc_unit_name(host: str) -> str:
    """The rpc-server unit of a host with ``rpc_server:`` (the render stage's contract)."""
    return f"homelab-rpc-{host}.service"


def main_unit(units: list[Unit], host: str) -> Unit | None:
    """The unit serving the endpoint: ``homelab-<host>.service`` (else the one service that is not
    the rpc-server unit); None for an RPC worker that renders only its rpc-server unit."""
    services = [u for u in units if u.name.endswith(".service") and u.name != rpc_unit_name(host)]
    for unit in services:
        if unit.name == f"homelab-{host}.service":
            return unit
    return services[0] if services else None


def side_units(units: list[Unit], host: str) -> list[Unit]:
    """Every ``.service`` unit of a generation besides the main one (the rpc-server unit)."""
    main = main_unit(units, host)
    return [u for u in units if u.name.endswith(".service") and (main is None or u.name != main.name)]


def side_unit_files(host: str, *generations: Mapping[str, bytes] | None) -> set[str]:
    """Paths (inside the generations) of side unit files: the main unit's action ignores them."""
    found: set[str] = set()
    for files in generations:
        if not files:
            continue
        sides = {u.name for u in side_units(units_of(dict(files)), host)}
        found |= {name for name in files if Path(name).name in sides}
    return found


def unit_changed(unit: Unit, old: Mapping[str, bytes] | None, new: Mapping[str, bytes]) -> bool:
    """Whether a side unit must restart: it is new, its text changed, or a file of the generation
    it reads through ``EnvironmentFile=`` changed."""
    if old is None:
        return True
    before = {u.name: u for u in units_of(dict(old))}.get(unit.name)
    if before is None or before.text != unit.text:
        return True
    read = {Path(_expand_specifiers(v.lstrip("-"))).name for v in unit.values("EnvironmentFile")}
    return any(old.get(name) != new.get(name) for name in set(old) | set(new) if Path(name).name in read)


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
        self._units_cache: tuple[Path | None, tuple[str | None, list[str]]] = (None, (None, []))

    @property
    def main_name(self) -> str:
        return f"homelab-{self.paths.host}.service"

    def current_units(self) -> tuple[str | None, list[str]]:
        """Main and side unit names of the current generation (main: None for an RPC worker with
        only its rpc-server unit); with no current generation (or no unit in it), the main unit
        by its usual name."""
        try:
            target = self.paths.current.resolve(strict=True)
        except OSError:
            return self.main_name, []
        if self._units_cache[0] != target:  # read once per generation: alive() is polled
            units = [Unit(p.name, p.read_text()) for p in sorted(target.rglob("*")) if p.name.endswith(UNIT_SUFFIXES)]
            main = main_unit(units, self.paths.host)
            sides = [u.name for u in side_units(units, self.paths.host)]
            self._units_cache = (target, (main.name if main else None, sides))
        main, sides = self._units_cache[1]
        if main is None and not sides:
            return self.main_name, []
        return main, list(sides)

    def unit_names(self) -> list[str]:
        """Every unit of the current generation, the main one first: what stop/status/logs cover."""
        main, sides = self.current_units()
        return ([main] if main else []) + sides

    def apply(self, generation: Generation, previous: Generation | None, action: str) -> list[str]:
        """Install and (re)start what ``generation`` needs; returns one line per side unit that
        was (re)started. ``action`` is for the main unit (``ensure``: start what is not running)."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def unit_alive(self, unit: str) -> bool:
        """Whether one unit (by file name) runs."""
        raise NotImplementedError

    def status(self) -> str:
        raise NotImplementedError

    def logs(self, lines: int = 30) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        return self.mode


def _generation_units(generation: Generation, host: str, mode: str) -> tuple[dict[str, bytes], Unit | None, list[Unit]]:
    files = generation.files()
    units = units_of(files)
    main, sides = main_unit(units, host), side_units(units, host)
    if main is None and not sides:
        raise ServiceError(
            f"generation {generation.number} of {host} has no .service unit: the render stage must "
            f"produce one for service: {mode}"
        )
    return files, main, sides


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
            _say(
                f"note: lingering is off for {user}: the service stops when you log out. "
                f"Enable it once with `loginctl enable-linger {user}`"
            )
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.write_text("warned\n")

    def apply(self, generation: Generation, previous: Generation | None, action: str) -> list[str]:
        files, main, sides = _generation_units(generation, self.paths.host, self.mode)
        units = units_of(files)
        if main is not None:
            self.unit_name = main.name
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
            out = self.runner.run(
                "journalctl", [*self.scope, *selectors, "-n", str(lines), "--no-pager"], check=False
            )
        except ServiceError as exc:
            return str(exc)
        return (out.stdout or out.stderr).rstrip()

    def describe(self) -> str:
        return f"{self.mode} unit(s) {', '.join(self.unit_names())} in {self.unit_dir}"


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
    """``service: none``: each unit's ExecStart run as a detached process with a pid file and a
    log file: ``service.pid`` / ``service.log`` for the main unit, ``<unit>.pid`` / ``<unit>.log``
    (``homelab-rpc-<host>.pid``) for a side unit."""

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
        self._children: dict[Path, subprocess.Popen[bytes]] = {}
        """Processes this object started, by pid file: polled so they are reaped if they die while we watch."""

    # ---- pid and log files

    def pid_file(self, unit: str | None) -> Path:
        if unit is None or unit == self.main_name:
            return self.paths.pid_file
        return self.paths.base / f"{unit.removesuffix('.service')}.pid"

    def log_file(self, unit: str | None) -> Path:
        if unit is None or unit == self.main_name:
            return self.paths.log_file
        return self.paths.base / f"{unit.removesuffix('.service')}.log"

    def _side_pid_files(self) -> list[Path]:
        """Side units' pid files present now (also those of units a newer generation dropped)."""
        return sorted(p for p in self.paths.base.glob("*.pid") if p != self.paths.pid_file)

    def _pid(self, pid_file: Path | None = None) -> int | None:
        try:
            pid_text, _, start = (pid_file or self.paths.pid_file).read_text().strip().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        now = _proc_start_time(pid)
        if now is None or (start and now != start):
            return None  # gone, a zombie, or a recycled pid
        return pid

    def alive(self) -> bool:
        self._reap()
        return all(self._pid(self.pid_file(name)) is not None for name in self.unit_names())

    def unit_alive(self, unit: str) -> bool:
        self._reap()
        return self._pid(self.pid_file(unit)) is not None

    # ---- start and stop one process

    def _command(self, generation: Generation, unit: Unit | None) -> tuple[list[str], dict[str, str]]:
        # the unit's paths go through the current link, so a reload after a switch reads the new files
        if unit is not None:
            return command_from_unit(unit)
        if self.fallback_argv:
            return list(self.fallback_argv), {}
        raise ServiceError(
            f"generation {generation.number} of {self.paths.host} has no .service unit to take the "
            "command from"
        )

    def start(self, generation: Generation, unit: Unit | None = None) -> int:
        """Start ``unit`` (default: the generation's main unit) detached; returns its pid."""
        if unit is None:
            unit = main_unit(units_of(generation.files()), self.paths.host)
        name = unit.name if unit is not None else None
        argv, env = self._command(generation, unit)
        pid_file, log_file = self.pid_file(name), self.log_file(name)
        self.paths.base.mkdir(parents=True, exist_ok=True)
        log = open(log_file, "ab")
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
            raise ServiceError(f"cannot start {argv[0]} ({name or 'service'}): {exc}") from None
        finally:
            log.close()
        start = _proc_start_time(proc.pid) or ""
        tmp = pid_file.with_name(f".{pid_file.name}.tmp")
        tmp.write_text(f"{proc.pid} {start}\n")
        os.replace(tmp, pid_file)
        self._children[pid_file] = proc
        return proc.pid

    def _stop_one(self, pid_file: Path, timeout: float = 20.0) -> None:
        pid = self._pid(pid_file)
        if pid is None:
            pid_file.unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._pid(pid_file) is not None:
            self._reap()
            time.sleep(0.05)
        if self._pid(pid_file) is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._reap()
        pid_file.unlink(missing_ok=True)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop every process of the host: the side units first, then the endpoint."""
        for pid_file in self._side_pid_files():
            self._stop_one(pid_file, timeout)
        self._stop_one(self.paths.pid_file, timeout)

    def _reap(self) -> None:
        for proc in self._children.values():
            proc.poll()

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

    def apply(self, generation: Generation, previous: Generation | None, action: str) -> list[str]:
        files = generation.files()
        units = units_of(files)
        main, sides = main_unit(units, self.paths.host), side_units(units, self.paths.host)
        if main is not None or not sides:  # no unit at all: the fallback command, or a clear error
            running = self._pid() is not None
            if action == "reload" and running:
                self.reload()
            elif action in ("restart", "start") or not running:
                self._stop_one(self.paths.pid_file)
                self.start(generation, main)
        else:
            self._stop_one(self.paths.pid_file)  # a worker that no longer serves models
        notes = []
        keep = {self.pid_file(s.name) for s in sides}
        for pid_file in self._side_pid_files():
            if pid_file not in keep:  # a side unit the new generation dropped
                self._stop_one(pid_file)
        old_files = previous.files() if previous else None
        for side in sides:
            pid_file = self.pid_file(side.name)
            if action != "ensure" and unit_changed(side, old_files, files):
                self._stop_one(pid_file)
                self.start(generation, side)
                notes.append(f"{side.name}: restarted (its unit or environment changed)")
            elif self._pid(pid_file) is None:
                self.start(generation, side)
                notes.append(f"{side.name}: started (it was not running)")
        return notes

    def status(self) -> str:
        lines = []
        for name in self.unit_names():
            pid = self._pid(self.pid_file(name))
            state = f"running, pid {pid}" if pid is not None else "not running"
            label = self.paths.host if name == self.main_name else name
            lines.append(f"{label}: {state} (service: none; log {self.log_file(name)})")
        return "\n".join(lines)

    def logs(self, lines: int = 30) -> str:
        main, sides = self.current_units()
        parts = []
        for name in ([main] if main else []) + sides:
            try:
                text = self.log_file(name).read_text(errors="replace")
            except OSError:
                text = "(no log file)"
            tail = "\n".join(text.rstrip().splitlines()[-lines:])
            parts.append(tail if not sides else f"[{name}]\n{tail}")
        return "\n".join(parts)

    def describe(self) -> str:
        files = ", ".join(f"{self.pid_file(n).name}/{self.log_file(n).name}" for n in self.unit_names())
        return f"detached process(es) (pid/log files in {self.paths.base}: {files})"


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
