"""The API-key file llama-server reads with ``--api-key-file`` (one key per line).

Router mode (llama-server itself is the endpoint) and every backend under upstream llama-swap
check keys this way: a key on the command line would be readable by every local user
(``/proc/<pid>/cmdline``). The file is written beside ``secrets.env``, mode 0600, owned by the
user the service runs as, from ``runtime.api_key_env`` in the deploying environment, else from
that variable's line in an existing ``secrets.env`` (which people may keep by hand).
"""

from __future__ import annotations

import os
import pwd
import shlex
from collections.abc import Mapping
from pathlib import Path

from ..files import atomic_write_text
from ..inventory.resolved import ResolvedHost
from .inputs import StatePaths
from .units import DEFAULT_SERVICE_USER

KEY_FILE_KINDS = ("router", "llama-swap")
"""Runtimes whose llama-server processes check the keys themselves (``homelab serve`` does not
need the file: it checks keys itself and guards its backends with its own secret)."""


def _from_secrets_env(path: Path, name: str) -> str | None:
    """``name``'s value in an env file as systemd reads it (bare or single/double-quoted)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    value = None
    for line in lines:
        key, sep, rest = line.strip().partition("=")
        if sep and key.strip() == name:
            value = " ".join(shlex.split(rest)) if rest.strip() else ""
    return value


def api_keys(host: ResolvedHost, paths: StatePaths, environ: Mapping[str, str]) -> list[str] | None:
    """The keys (comma-separated in the variable), or None when neither source has the variable."""
    name = host.host.runtime.api_key_env
    if not name:
        return None
    value = environ.get(name)
    if value is None:
        value = _from_secrets_env(paths.secrets_env, name)
    if value is None:
        return None
    return [key.strip() for key in value.split(",") if key.strip()]


def write_api_key_file(host: ResolvedHost, paths: StatePaths, environ: Mapping[str, str]) -> Path | None:
    """Write :attr:`StatePaths.api_key_file` for a runtime that reads it; None when not needed or
    no key is known (an existing file is then left alone)."""
    if host.host.runtime.kind not in KEY_FILE_KINDS:
        return None
    keys = api_keys(host, paths, environ)
    if not keys:
        return None
    path = paths.api_key_file
    text = "".join(f"{key}\n" for key in keys)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not (path.is_file() and path.read_text() == text):
        atomic_write_text(path, text, mode=0o600)
    _give_to_service_user(host, path)
    return path


def _give_to_service_user(host: ResolvedHost, path: Path) -> None:
    """A system unit's processes run as the service user: a root-owned 0600 file is not theirs
    to read. (User units run as the deploying user, who owns the file already.)"""
    runtime = host.host.runtime
    if runtime.service != "system" or os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam(runtime.user or DEFAULT_SERVICE_USER)
    except KeyError:
        return  # the deploy stage's preflight names the missing user
    os.chown(path, user.pw_uid, user.pw_gid)
