"""Install a rendered directory as a generation, activate it, verify it, roll back on failure.

This is the deploy stage's core: data in (a :class:`Target` and the rendered files), a
:class:`InstallReport` out, with the service (systemd or detached) made by
:mod:`homelab.deploy.service_mode`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..address import base_url
from ..errors import HomelabError
from ..inventory import ResolvedHost
from .changes import Changes, action_for, compare
from .generations import Files, Generation, GenerationStore, content_hash, read_tree
from .hostlock import deploy_lock
from .paths import HostPaths, root_prefix
from .service import Service, ServiceError
from .service_mode import make_service, resolve_mode
from .systemd import RecordingRunner, Runner
from .units import main_unit, rpc_unit_name, side_unit_files, units_of
from .verify import (
    LEVELS,
    VerifyResult,
    api_key_from_env,
    config_models,
    verify,
    wait_for_port,
)


class DeployFailed(HomelabError):
    """Verification failed; the message carries what failed, the rollback and the service log."""

    exit_code = 1


@dataclass(frozen=True)
class Target:
    """What the deploy core needs to know about a host (built from a ResolvedHost)."""

    name: str
    listen: str = "127.0.0.1:12434"
    service: str = "auto"
    kind: str = "supervisor"
    keep_generations: int = 5
    preload: tuple[str, ...] = ()
    api_key_env: str | None = None
    health_timeout: float = 120.0
    verify: str = "completion"
    """``runtime.verify``: the check after activation (``--verify`` / ``verify=`` override it)."""
    rpc_listen: str | None = None
    """``rpc_server.listen``: verification checks that the rpc-server unit accepts connections."""

    @classmethod
    def from_host(cls, resolved: ResolvedHost, service: str | None = None) -> Target:
        host = resolved.host
        rt = host.runtime
        preload = tuple(rt.preload) + tuple(m.id for m in resolved.models if m.preload)
        return cls(
            name=host.name,
            listen=rt.listen,
            service=service or rt.service,
            kind=rt.kind,
            keep_generations=rt.keep_generations,
            preload=tuple(dict.fromkeys(preload)),
            api_key_env=rt.api_key_env,
            health_timeout=float(rt.health_check_timeout or 120),
            verify=rt.verify,
            rpc_listen=host.rpc_server.listen if host.rpc_server is not None else None,
        )


@dataclass
class Options:
    root: Path | None = None
    verify: str | None = None
    """Verification level for this run; None = the host's ``runtime.verify``."""
    runner: Runner | None = None
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.verify is not None and self.verify not in LEVELS:
            raise HomelabError(f"verify={self.verify!r}: use one of {', '.join(LEVELS)}")


@dataclass
class InstallReport:
    host: str
    changed: bool
    generation: int | None
    action: str
    mode: str
    changes: list[str] = field(default_factory=list)
    verify_steps: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        if not self.changed:
            return f"{self.host}: up to date (generation {self.generation}, {self.action})"
        return (
            f"{self.host}: generation {self.generation} active ({self.action}, service: {self.mode}, "
            f"{len(self.changes)} change(s), {self.seconds:.1f} s)"
        )


def changed_models(old: Files | None, new: Files) -> list[str]:
    """Model IDs whose definition in config.yaml is new or different."""

    def models(files: Files | None) -> dict:
        try:
            data = yaml.safe_load((files or {}).get("config.yaml", b"")) or {}
        except yaml.YAMLError:
            return {}
        return data.get("models") or {} if isinstance(data, dict) else {}

    before, after = models(old), models(new)
    return [mid for mid, spec in after.items() if before.get(mid) != spec]


class Deployer:
    """Install, activate, verify and roll back generations of one host."""

    def __init__(self, target: Target, options: Options | None = None) -> None:
        self.target = target
        self.options = options or Options()
        self.paths = HostPaths.for_host(target.name)
        self.store = GenerationStore(self.paths)
        self._service: Service | None = None
        self.mode = ""
        root = root_prefix(self.options.root)
        # a root prefix with no systemctl of its own: record the calls and install only
        self.install_only = root != Path("/") and not os.environ.get("SYSTEMCTL") and self.options.runner is None
        if self.install_only:
            self.options.runner = RecordingRunner(root / "systemctl.log")

    def say(self, message: str) -> None:
        if not self.options.quiet:
            print(message, flush=True)

    @property
    def service(self) -> Service:
        if self._service is None:
            self.mode = resolve_mode(self.target.service, self.options.runner, quiet=self.options.quiet)
            self._service = make_service(
                self.paths,
                self.mode,
                root_prefix(self.options.root),
                self.options.runner,
                reload_url=f"{base_url(self.target.listen)}/x-reload" if self.target.kind == "supervisor" else None,
                api_key=api_key_from_env(self.target.api_key_env),
            )
        return self._service

    # ---- verification

    def _verify(self, generation: Generation, old: Files | None, level: str) -> VerifyResult:
        if self.install_only and self.mode in ("user", "system"):
            log = root_prefix(self.options.root) / "systemctl.log"
            return VerifyResult(
                ok=True, steps=[f"installed under a root prefix: systemctl calls in {log}, not verified"]
            )
        files = generation.files()
        units = units_of(files)
        steps: list[str] = []
        rpc_unit = rpc_unit_name(self.target.name)
        if self.target.rpc_listen and any(u.name == rpc_unit for u in units):
            alive = lambda: self.service.unit_alive(rpc_unit)  # noqa: E731
            rpc = wait_for_port(self.target.rpc_listen, self.target.health_timeout, alive, "rpc-server")
            if not rpc.ok:
                return rpc
            steps += rpc.steps
        if units and main_unit(units, self.target.name) is None:
            steps.append("no endpoint unit (an RPC worker only): HTTP checks skipped")
            return VerifyResult(ok=True, steps=steps)
        expected = config_models(files.get("config.yaml"))
        wanted = [m for m in self.target.preload if m in expected]
        wanted += [m for m in changed_models(old, files) if m in expected and m not in wanted]
        result = verify(
            self.target.listen,
            expected,
            wanted,
            level=level,
            timeout=self.target.health_timeout,
            alive=self.service.alive,
            api_key=api_key_from_env(self.target.api_key_env),
        )
        result.steps[:0] = steps
        return result

    def _action(self, changes: Changes, old: Files | None, new: Files, has_current: bool) -> str:
        return action_for(changes, has_current, self.target.kind, side_unit_files(self.target.name, old, new))

    def _apply(self, generation: Generation, previous: Generation | None, action: str) -> None:
        for note in self.service.apply(generation, previous, action):
            self.say(f"  {note}")

    # ---- install

    def install(self, staged: Path | Files) -> InstallReport:
        files = read_tree(staged) if isinstance(staged, Path) else dict(staged)
        if not files:
            raise HomelabError(f"{staged}: the rendered directory is empty; run `doit render host={self.target.name}`")
        with deploy_lock(self.paths):
            return self._install(files)

    def _install(self, files: Files) -> InstallReport:
        started = time.monotonic()
        current = self.store.current()
        old = current.files() if current else None
        if current is not None and current.content_hash == content_hash(files):
            action = "already running"
            if not self.service.alive():
                self.say(f"{self.target.name}: service not running; starting generation {current.number}")
                self._apply(current, None, "ensure")
                result = self._verify(current, None, "models")
                if not result.ok:
                    raise DeployFailed(self._failure_text(current, result.error, None))
                action = "started"
            return InstallReport(self.target.name, False, current.number, action, self.mode)
        changes = compare(old, files)
        action = self._action(changes, old, files, current is not None)
        generation = self.store.create(files, changes.summary(), action)
        self.store.switch(generation.number)
        self.say(
            f"{self.target.name}: generation {generation.number} "
            f"({', '.join(changes.summary()[:4]) or 'first'}{' ...' if len(changes.summary()) > 4 else ''})"
            f" -> {action}"
        )
        try:
            self._apply(generation, current, action)
            result = self._verify(generation, old, self.options.verify or self.target.verify)
        except ServiceError as exc:
            result = VerifyResult(ok=False, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - whatever broke the apply, `current` goes back
            result = VerifyResult(ok=False, error=f"{type(exc).__name__}: {exc}")
        except BaseException:
            # interrupted (Ctrl-C) between switch and verify: put the previous generation back first
            self._abandon(generation, current)
            raise
        if not result.ok:
            generation.status = "failed"
            generation.save()
            raise DeployFailed(self._failure_text(generation, result.error, current))
        generation.status = "ok"
        generation.save()
        for step in result.steps:
            self.say(f"  {step}")
        removed = self.store.prune(self.target.keep_generations)
        if removed:
            self.say(f"  pruned generation(s) {', '.join(map(str, removed))}")
        return InstallReport(
            self.target.name,
            True,
            generation.number,
            action,
            self.mode,
            changes.summary(),
            result.steps,
            time.monotonic() - started,
        )

    def _failure_text(self, failed: Generation, error: str, previous: Generation | None) -> str:
        logs = self.service.logs(30)
        lines = [f"deploy of {self.target.name} failed: generation {failed.number}: {error}"]
        lines.append(self._roll_back(failed, previous))
        lines.append(f"last service log lines ({self.service.describe()}):")
        lines.extend(f"  | {line}" for line in (logs or "(empty)").splitlines())
        return "\n".join(lines)

    def _abandon(self, failed: Generation, previous: Generation | None) -> None:
        """Mark ``failed`` and make ``previous`` current again (quietly: an interrupt is on its way)."""
        failed.status = "failed"
        failed.save()
        self._roll_back(failed, previous)

    def _roll_back(self, failed: Generation, previous: Generation | None) -> str:
        if previous is None:
            try:
                self.service.stop()
            except ServiceError:
                pass
            self.store.unset_current()
            return "no previous generation to roll back to: the service is stopped"
        self.store.switch(previous.number)
        failed_files, previous_files = failed.files(), previous.files()
        action = self._action(compare(failed_files, previous_files), failed_files, previous_files, True)
        try:
            self._apply(previous, failed, action)
            result = self._verify(previous, None, "models")
        except ServiceError as exc:
            result = VerifyResult(ok=False, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - the rollback is reported, never left half-done
            result = VerifyResult(ok=False, error=f"{type(exc).__name__}: {exc}")
        if result.ok:
            return f"rolled back to generation {previous.number} ({action}): the endpoint answers"
        return f"rolled back to generation {previous.number} ({action}), but it does not answer either: {result.error}"

    # ---- rollback, status

    def rollback(self, number: int | None = None) -> InstallReport:
        with deploy_lock(self.paths):
            current = self.store.current()
            if number is None:
                number = self.store.rollback_target()
                if number is None:
                    raise HomelabError(
                        f"host {self.target.name!r} has no older good generation to roll back to; "
                        f"see `homelab generations {self.target.name}`"
                    )
            target = self.store.get(number)
            if current is not None and current.number == number:
                return InstallReport(self.target.name, False, number, "already current", self.mode)
            old, new = (current.files() if current else None), target.files()
            changes: Changes = compare(old, new)
            action = self._action(changes, old, new, current is not None)
            self.store.switch(number)
            self.say(f"{self.target.name}: switching to generation {number} -> {action}")
            try:
                self._apply(target, current, action)
                result = self._verify(target, old, "models")
            except ServiceError as exc:
                result = VerifyResult(ok=False, error=str(exc))
            except Exception as exc:  # noqa: BLE001 - whatever broke the apply, `current` goes back
                result = VerifyResult(ok=False, error=f"{type(exc).__name__}: {exc}")
            if not result.ok:
                raise DeployFailed(self._failure_text(target, result.error, current))
            return InstallReport(self.target.name, True, number, action, self.mode, changes.summary(), result.steps)

    def stop(self) -> None:
        self.service.stop()

    def status(self) -> str:
        current = self.store.current_number()
        return f"{self.service.status()}; current generation: {current if current is not None else 'none'}"


def format_generations(store: GenerationStore) -> str:
    current = store.current_number()
    rows = []
    for gen in store.all():
        mark = "*" if gen.number == current else " "
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(gen.created))
        what = ", ".join(gen.changes[:5]) + (f" (+{len(gen.changes) - 5})" if len(gen.changes) > 5 else "")
        rows.append(f"{mark} {gen.number:>4}  {when}  {gen.status:<6}  {gen.action:<7}  {what or '-'}")
    if not rows:
        return f"host {store.paths.host!r} has no generations yet (nothing deployed)"
    header = "  gen   date                 status  action   changes"
    return "\n".join([header, *rows])
