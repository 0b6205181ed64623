"""Progress bars for downloads and hashing (tqdm), imported when a bar is first made: the
fetch stage's freshness check, made on every no-op deploy, imports this package but shows none."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm


def bar_class() -> type[tqdm]:
    """tqdm's bar class (to subclass, or to hand to huggingface_hub)."""
    from tqdm import tqdm  # lazily: tqdm is a third of the hub package's import time

    return tqdm


def progress_bar(**options: Any) -> tqdm:
    """A new bar (tqdm's options: ``total``, ``unit``, ``desc``, ``disable``...)."""
    return bar_class()(**options)
