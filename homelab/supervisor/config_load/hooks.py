"""``hooks``: models to load at start-up (``on_startup.preload``)."""

from __future__ import annotations

from collections.abc import Mapping

from ..config import HooksConfig, ModelConfig, SelectorConfig
from .models import resolve_model_name
from .values import Value


def parse_hooks(
    section: Value | None,
    models: Mapping[str, ModelConfig],
    aliases: Mapping[str, str],
    selectors: Mapping[str, SelectorConfig] | None = None,
) -> tuple[HooksConfig, list[str]]:
    """The hooks and warnings. A preload naming a selector is skipped with a warning: llama-swap
    preloads only models and aliases and drops other names (an unknown name stays an error here)."""
    warnings: list[str] = []
    if section is None:
        return HooksConfig(), warnings
    fields = section.mapping(("on_startup",))
    if "on_startup" not in fields:
        return HooksConfig(), warnings
    startup = fields["on_startup"].mapping(("preload",))
    preload: list[str] = []
    for item in startup["preload"].items() if "preload" in startup else []:
        name = item.string().strip()
        if not name:
            continue
        if selectors and name in selectors and name not in models and name not in aliases:
            warnings.append(
                f"{item.source}:{item.line}: {item.path}: {name!r} is a selector; preload takes models "
                "(llama-swap skips it too), so nothing is preloaded for it"
            )
            continue
        model = resolve_model_name(name, item, models, "preload", aliases)
        if model not in preload:
            preload.append(model)
    return HooksConfig(preload=tuple(preload)), warnings
