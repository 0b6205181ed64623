"""Where homelab reads and writes: the contract environment variables, resolved in one place.

- ``HOMELAB_INVENTORY``: a directory with ``hosts/``, ``recipes/``, ``patches/``
  (default: the current directory if it has ``hosts/``, else the checkout this package lives in).
- ``HOMELAB_STATE``: builds, sources, generations, doit's dep file
  (default ``~/.local/state/homelab``).
- ``HF_ENDPOINT``, ``HF_HOME``, ``HF_TOKEN``: huggingface_hub's own, read here at call time
  (huggingface_hub reads them at import time; we pass them explicitly).
"""

from __future__ import annotations

import os
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT_HF_ENDPOINT = "https://huggingface.co"


def inventory_dir(override: str | os.PathLike[str] | None = None) -> Path:
    if override:
        return Path(override).expanduser().resolve()
    env = os.environ.get("HOMELAB_INVENTORY")
    if env:
        return Path(env).expanduser().resolve()
    cwd = Path.cwd()
    if (cwd / "hosts").is_dir():
        return cwd.resolve()
    return CHECKOUT


def state_dir() -> Path:
    env = os.environ.get("HOMELAB_STATE")
    base = Path(env).expanduser() if env else Path.home() / ".local" / "state" / "homelab"
    return base.resolve()


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_HF_ENDPOINT).rstrip("/")


def hf_token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


def hf_cache_dir() -> Path:
    """The standard hub cache: ``$HF_HUB_CACHE`` or ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "huggingface"
    return base / "hub"
