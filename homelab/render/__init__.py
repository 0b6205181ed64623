"""render stage: a host's llama-swap config, router presets, systemd unit and env file.

``render_host(RenderInputs) -> {relative path: text}`` is pure (same inputs, same bytes);
:mod:`homelab.render.assemble` gathers the inputs from the other stages' outputs and
``write_generation`` puts the files into ``staging_dir(host)`` for the deploy stage.
"""

from .errors import RenderError
from .generation import (
    diff_generations,
    installed_dir,
    read_generation,
    render_host,
    staging_dir,
    write_generation,
)
from .inputs import PlannedModel, RenderInputs, StatePaths

__all__ = [
    "PlannedModel",
    "RenderError",
    "RenderInputs",
    "StatePaths",
    "diff_generations",
    "installed_dir",
    "read_generation",
    "render_host",
    "staging_dir",
    "write_generation",
]
