"""What a reload restarts: the models whose running process no longer matches the config."""

from __future__ import annotations

from ..config import Config

RESTART_FIELDS = ("cmd", "cmd_stop", "proxy", "port", "check_endpoint", "env", "prompt_cache")
"""ModelConfig fields whose change means the running process is not what the config describes.

Everything else (ttl, unload_timeout, aliases, filters, metadata, name, description, unlisted,
use_model_name, concurrency_limit, send_loading_state, vram_mib, devices_mib) is read per request or per
decision from the live config, so a changed value takes effect without a restart."""


def models_to_restart(old: Config, new: Config) -> set[str]:
    """Model IDs to restart on reload: removed ones and those whose RESTART_FIELDS differ."""
    restart: set[str] = set()
    for model_id, before in old.models.items():
        after = new.models.get(model_id)
        if after is None or any(getattr(before, f) != getattr(after, f) for f in RESTART_FIELDS):
            restart.add(model_id)
    return restart
