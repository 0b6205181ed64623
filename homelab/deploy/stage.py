"""The install stage: the render stage's staging directory becomes a new generation, the service
is activated (start, restart or reload) and verified.

Its fingerprint is the staged files; its product is in place while the current generation holds
exactly those files and the service is alive (a rollback or a stopped service installs again).
A remote host (``ssh://``) installs as part of its remote chain, never from here.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import HomelabError
from ..inventory import ResolvedHost
from ..render.generation import staging_dir
from ..stage import Stage, digest, tree_files
from .chain import is_remote
from .generations import read_tree
from .installer import Deployer, Options, Target
from .paths import HostPaths


def install_stage(*, service: str | None, root: str | None, verify: str | None, local: bool) -> Stage:
    """``service`` / ``root`` / ``verify`` override the host's runtime settings; ``local`` runs
    a remote host's install here (what the remote side of an ssh deploy does)."""

    def deployer(host: ResolvedHost, *, quiet: bool = False) -> Deployer:
        options = Options(root=Path(root) if root else None, verify=verify or None, quiet=quiet)
        return Deployer(Target.from_host(host, service=service), options)

    def here(host: ResolvedHost) -> bool:
        return local or not is_remote(host)

    def fingerprint(host: ResolvedHost) -> str | None:
        staged = staging_dir(host.name)
        return digest(tree_files(staged)) if here(host) and staged.is_dir() else None

    def in_place(host: ResolvedHost) -> bool:
        current = HostPaths.for_host(host.name).current
        staged = staging_dir(host.name)
        if not current.is_dir() or read_tree(staged) != read_tree(current):
            return False
        return deployer(host, quiet=True).service.alive()

    def run(host: ResolvedHost) -> None:
        if not here(host):
            raise HomelabError(
                f"host {host.name!r} is remote ({host.host.address}): run `doit deploy host={host.name}`, "
                "which installs on the remote as part of the chain"
            )
        print(deployer(host).install(staging_dir(host.name)).line())

    return Stage(
        name="install",
        doc="Install the rendered generation and activate the service",
        consumes=("the render stage's staging directory",),
        produces="a new generation under $HOMELAB_STATE/hosts/<host>, the service activated",
        after=("render",),
        fingerprint=fingerprint,
        run=run,
        in_place=in_place,
    )
