"""``hooks``: models to load at start-up (``on_startup.preload``)."""

from __future__ import annotations

from collections.abc import Mapping

from ..config import HooksConfig, ModelConfig
from .models import resolve_model_name
from .values import Value


def parse_hooks(section: Value | None, models: Mapping[str, ModelConfig], aliases: Mapping[str, str]) -> HooksConfig:
    if section is None:
        return HooksConfig()
    fields = section.mapping(("on_startup",))
    if "on_startup" not in fields:
        return HooksConfig()
    startup = fields["on_startup"].mapping(("preload",))
    preload: list[str] = []
    for item in startup["preload"].items() if "preload" in startup else []:
        name = item.string().strip()
        if not name:
            continue
        model = resolve_model_name(name, item, models, "preload", aliases)
        if model not in preload:
            preload.append(model)
    return HooksConfig(preload=tuple(preload))
