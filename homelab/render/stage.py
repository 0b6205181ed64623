"""The render stage: ``HOMELAB_STATE/hosts/<host>/staging``, what the install stage picks up.

Render is a pure function of its :class:`~homelab.render.inputs.RenderInputs` (host file,
recipes, lock, build and its flags, plan, related hosts, the ports of the installed generation,
and the hash of homelab's own code and templates). The fingerprint is what those inputs render
to, plus what the staging directory holds now (a staging directory written by something else,
``homelab render``, is rendered again). An input change that renders the same files (the first
install fixing the ports the render chose) leaves the stage fresh.

Rendering compiles the templates, too slow for every no-op deploy, so the stage keeps a memo,
``hosts/<host>/render-check.json``: the digest of the last inputs it saw and what they render
to. Assembling the inputs reads a few small files; only new inputs are rendered, in memory.
"""

from __future__ import annotations

from pathlib import Path

from ..inventory import ResolvedHost
from ..stage import Stage, digest, read_record, tree_files, write_record
from .assemble import assemble, write_secrets
from .generation import MANIFEST_NAME, render_host, staging_dir, write_generation
from .inputs import RenderInputs


def _memo_file(host: str) -> Path:
    return staging_dir(host).parent / "render-check.json"


def _remember(host: str, inputs_digest: str, rendered: str) -> None:
    """Record that these inputs render to ``rendered``."""
    write_record(_memo_file(host), {"inputs": inputs_digest, "rendered": rendered})


def _rendered_digest(host: ResolvedHost, inputs: RenderInputs) -> str:
    """The digest of the files ``inputs`` render to, from the memo when it has these inputs."""
    inputs_digest = digest(inputs)
    memo = read_record(_memo_file(host.name)) or {}
    if memo.get("inputs") == inputs_digest and isinstance(memo.get("rendered"), str):
        return memo["rendered"]
    rendered = digest(render_host(inputs))
    _remember(host.name, inputs_digest, rendered)
    return rendered


def render_fingerprint(host: ResolvedHost) -> str:
    return digest(_rendered_digest(host, assemble(host)), tree_files(staging_dir(host.name)))


def _render(host: ResolvedHost) -> None:
    inputs = assemble(host)
    staging = staging_dir(host.name)
    files = render_host(inputs)
    changed = write_generation(files, staging)
    write_secrets(host, inputs.paths, peers=inputs.peers)
    _remember(host.name, digest(inputs), digest(files))
    print(f"{'rendered' if changed else 'unchanged'}: {staging}")


RENDER = Stage(
    name="render",
    doc="Render llama-swap config, router presets and systemd units",
    consumes=(
        "host file and recipes",
        "<host>.lock.json",
        "the build and its flags",
        "the plan",
        "related hosts",
        "the installed generation's ports",
        "homelab's code and templates",
    ),
    produces="$HOMELAB_STATE/hosts/<host>/staging",
    after=("build", "plan", "fetch"),
    fingerprint=render_fingerprint,
    run=_render,
    target=lambda host: staging_dir(host.name) / MANIFEST_NAME,
)
