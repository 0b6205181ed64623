"""doit tasks for the render stage (thin: the work lives in homelab.render).

``render:<host>`` writes ``HOMELAB_STATE/hosts/<host>/staging`` (what ``install:<host>`` picks
up). Rendering takes milliseconds, so the up-to-date check renders in memory and compares with
the staging directory: any input change (host file, recipe, lock, build, plan) is seen exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..errors import HomelabError
from ..inventory import ResolvedHost
from .graph import each_host, user_action


def _render(host: ResolvedHost) -> None:
    from ..render.assemble import assemble, write_secrets
    from ..render.generation import render_host, staging_dir, write_generation

    inputs = assemble(host)
    changed = write_generation(render_host(inputs), staging_dir(host.name))
    write_secrets(host, inputs.paths)
    print(f"{'rendered' if changed else 'unchanged'}: {staging_dir(host.name)}")


def _rendered(host: ResolvedHost) -> Any:
    def uptodate(task: Any, values: Any) -> bool:
        from ..render.assemble import assemble
        from ..render.generation import read_generation, render_host, staging_dir

        try:
            return read_generation(staging_dir(host.name)) == render_host(assemble(host))
        except HomelabError:
            return False  # the action runs and reports the problem

    return uptodate


def task_render() -> Iterator[dict[str, Any]]:
    """Render llama-swap config, router presets and systemd units."""
    from ..render.generation import MANIFEST_NAME, staging_dir

    yield {"basename": "render", "name": None, "doc": "Render llama-swap config, router presets and systemd units"}
    for host in each_host():
        yield {
            "name": host.name,
            "doc": f"Render llama-swap config, router presets and systemd units ({host.name})",
            "actions": [(user_action(_render), [host])],
            "targets": [str(staging_dir(host.name) / MANIFEST_NAME)],
            "uptodate": [_rendered(host)],
            "task_dep": [f"build:{host.name}", f"plan:{host.name}", f"fetch:{host.name}"],
            "verbosity": 2,
        }
