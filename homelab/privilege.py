"""Compiling and downloading never run as root for a system service.

``service: system`` needs root for one step only: installing the unit into /etc/systemd/system.
Fetching weights and building llama.cpp run code and parse files from the network (build
scripts, patches, GGUF files); as root, one bad input would own the machine. Those stages refuse
to run as root for such a host and say how to split the deploy: the stages as your user, then
only the deploy with sudo (it finds them done and installs). A machine where root is the only
user (a container) sets ``HOMELAB_ALLOW_ROOT_BUILD=1``.
"""

from __future__ import annotations

import os

from .errors import HomelabError

ALLOW_ROOT_ENV = "HOMELAB_ALLOW_ROOT_BUILD"


class RootStageRefused(HomelabError):
    """A compiling or downloading stage was started as root for a system service."""


def refuse_root(stage: str, host: str, service: str) -> None:
    """Raise when ``stage`` (``fetch``, ``source``, ``build``) runs as root for a ``service: system`` host."""
    if service != "system" or os.geteuid() != 0 or os.environ.get(ALLOW_ROOT_ENV) == "1":
        return
    raise RootStageRefused(
        f"`{stage}` for host {host} (runtime.service: system) refuses to run as root: it downloads or "
        f"compiles code from the network. Run the stages as your user (`doit render host={host}`), then "
        f"only the install as root (`sudo --preserve-env=HOMELAB_STATE doit deploy host={host}`); where "
        f"root is the only user (a container), set {ALLOW_ROOT_ENV}=1"
    )
