"""Which service runs a host: ``auto`` resolved to ``user`` or ``none``, and the service object for a mode."""

from __future__ import annotations

from pathlib import Path

from .detached import DetachedService
from .paths import HostPaths
from .service import Service, ServiceError, say
from .systemd import Runner, SystemdService, systemd_user_manager_running


def resolve_mode(configured: str, runner: Runner | None = None, quiet: bool = False) -> str:
    """``auto`` becomes ``user`` where a systemd user manager runs, else ``none`` (said once)."""
    if configured != "auto":
        return configured
    running, why = systemd_user_manager_running(runner)
    mode = "user" if running else "none"
    if not quiet:
        say(f"service: auto -> {mode} ({why})")
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
