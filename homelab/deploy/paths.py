"""Where the deploy stage keeps a host's state, and where service files are installed.

``HOMELAB_STATE/hosts/<host>/`` holds ``generations/<N>/``, the ``current`` link, the deploy lock,
and for ``service: none`` the pid and log files. Installed unit files go under the root prefix
(``--root DIR`` or ``HOMELAB_ROOT``; default ``/``) so tests can install into a temporary tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..settings import state_dir


@dataclass(frozen=True)
class HostPaths:
    host: str
    base: Path

    @classmethod
    def for_host(cls, host: str, state: Path | None = None) -> HostPaths:
        return cls(host=host, base=(state or state_dir()) / "hosts" / host)

    @property
    def generations(self) -> Path:
        return self.base / "generations"

    @property
    def current(self) -> Path:
        """A symlink to ``generations/<N>``; units and the supervisor read through it."""
        return self.base / "current"

    @property
    def state_file(self) -> Path:
        return self.base / "generations.json"

    @property
    def lock_file(self) -> Path:
        return self.base / "deploy.lock"

    @property
    def pid_file(self) -> Path:
        return self.base / "service.pid"

    @property
    def log_file(self) -> Path:
        return self.base / "service.log"

    @property
    def notices(self) -> Path:
        """Stamp files for one-time warnings (lingering off)."""
        return self.base / "notices"


def root_prefix(override: str | os.PathLike[str] | None = None) -> Path:
    """The install root: ``--root``, else ``HOMELAB_ROOT``, else ``/``."""
    value = override or os.environ.get("HOMELAB_ROOT") or "/"
    return Path(value).expanduser().resolve()


def under_root(root: Path, path: Path) -> Path:
    """``path`` (absolute) re-rooted below ``root``."""
    return root / path.relative_to(path.anchor) if root != Path("/") else path
