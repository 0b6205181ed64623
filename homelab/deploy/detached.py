"""``service: none``: the unit's ``ExecStart`` run by us (its ``Environment``/``EnvironmentFile``
applied), detached in a new session, with a pid file and a log file under
``HOMELAB_STATE/hosts/<host>/``."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..files import atomic_write_text
from .generations import Generation
from .paths import HostPaths
from .service import Service, ServiceError
from .units import (
    Unit,
    expand_specifiers,
    main_unit,
    side_units,
    unit_changed,
    units_of,
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
    words = shlex.split(expand_specifiers(starts[-1]))
    while words and words[0][:1] in "-@:+!":  # systemd's ExecStart prefixes
        words[0] = words[0][1:] or words.pop(0)
    env: dict[str, str] = {}
    for value in unit.values("EnvironmentFile"):
        optional = value.startswith("-")
        path = Path(expand_specifiers(value.lstrip("-")))
        if path.is_file():
            env.update(_read_env_file(path))
        elif not optional:
            raise ServiceError(f"unit {unit.name}: EnvironmentFile={path} does not exist")
    for value in unit.values("Environment"):
        for item in shlex.split(expand_specifiers(value)):
            key, _, val = item.partition("=")
            env[key] = val
    # systemd's variable syntax: ${NAME} from the unit's environment, $$ for a literal $
    lookup = {**os.environ, **env}
    argv = [
        re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: lookup.get(m.group(1), ""), w.replace("$$", "\0")).replace(
            "\0", "$"
        )
        for w in words
    ]
    return argv, env


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
            f"generation {generation.number} of {self.paths.host} has no .service unit to take the command from"
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
        log.write(
            f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} start generation {generation.number}: "
            f"{shlex.join(argv)}\n".encode()
        )
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
        atomic_write_text(pid_file, f"{proc.pid} {start}\n")
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
            # lazily: urllib.request brings http.client, ssl and email, which the alive check
            # of every no-op deploy never uses
            import urllib.error
            import urllib.request

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


def default_serve_argv(config: Path, listen: str) -> list[str]:
    """The supervisor command for a generation without a unit (``homelab serve``)."""
    return [sys.executable, "-m", "homelab.cli", "serve", "--config", str(config), "--listen", listen]
