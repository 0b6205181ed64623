"""The supervisor's swap settings in ``config.yaml`` (extension keys, checked strictly):

top level::

    x-promptCache:            # slots saved before a stop, restored at the next start
      dir: /var/lib/homelab/prompt-cache   # default: prompt-cache/ beside this file
      maxMiB: 16384           # all models together
      maxMiBPerModel: 4096
      saveTimeout: 5          # seconds an eviction may spend saving
      restoreTimeout: 10
      minCtx: 16384           # models without their own x-promptCache: on from this --ctx-size
    x-prefetch:               # or just true / false
      enabled: true
      keepWarm: [chat-small]  # read again after each swap
      reserveMiB: 1024

per model: ``x-promptCache: true | false`` (default: on from ``minCtx``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..config import PrefetchSettings, PromptCacheSettings
from .values import Value

PROMPT_CACHE_KEYS = ("dir", "maxMiB", "maxMiBPerModel", "saveTimeout", "restoreTimeout", "minCtx")
PREFETCH_KEYS = ("enabled", "keepWarm", "reserveMiB")


def parse_prompt_cache(value: Value | None, source: Path | None) -> PromptCacheSettings:
    if value is None or value.is_null:
        return PromptCacheSettings()
    f = value.mapping(PROMPT_CACHE_KEYS)
    defaults = PromptCacheSettings()
    folder = None
    if "dir" in f:
        folder = Path(f["dir"].string(allow_empty=False)).expanduser()
        if not folder.is_absolute():
            if source is None:
                raise f["dir"].error("a relative dir needs a config file to be relative to", "write an absolute path")
            folder = source.parent / folder
    return PromptCacheSettings(
        dir=folder,
        max_mib=f["maxMiB"].integer(minimum=1) if "maxMiB" in f else defaults.max_mib,
        max_mib_per_model=f["maxMiBPerModel"].integer(minimum=1)
        if "maxMiBPerModel" in f
        else defaults.max_mib_per_model,
        save_timeout=f["saveTimeout"].number(minimum=0) if "saveTimeout" in f else defaults.save_timeout,
        restore_timeout=f["restoreTimeout"].number(minimum=0) if "restoreTimeout" in f else defaults.restore_timeout,
        min_ctx=f["minCtx"].integer(minimum=0) if "minCtx" in f else defaults.min_ctx,
    )


def parse_prefetch(value: Value | None, models: Mapping[str, object], aliases: Mapping[str, str]) -> PrefetchSettings:
    if value is None or value.is_null:
        return PrefetchSettings()
    if not isinstance(value.python(), dict):
        return PrefetchSettings(enabled=value.boolean())
    f = value.mapping(PREFETCH_KEYS)
    keep_warm = []
    for item in f["keepWarm"].items() if "keepWarm" in f else []:
        name = item.string(allow_empty=False)
        model_id = name if name in models else aliases.get(name)
        if model_id is None:
            raise item.error(f"keepWarm names {name!r}, which is not a model or alias in this config")
        keep_warm.append(model_id)
    return PrefetchSettings(
        enabled=f["enabled"].boolean() if "enabled" in f else True,
        keep_warm=tuple(keep_warm),
        reserve_mib=f["reserveMiB"].integer(minimum=0) if "reserveMiB" in f else PrefetchSettings().reserve_mib,
    )


def parse_model_prompt_cache(model: Value) -> bool | None:
    """A model's ``x-promptCache``. Read from the node's pairs: the model's keys were already
    checked (and ``<<`` merges flattened), so listing its entries again would see duplicates."""
    for key_node, value_node in model.node.value:
        if key_node.value == "x-promptCache":
            value = model.child(value_node, "x-promptCache")
            return None if value.is_null else value.boolean()
    return None
