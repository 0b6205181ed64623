"""Recipes shared by URL: downloaded once, pinned by sha256, cached by content.

A host entry ``recipe: https://example.org/qwen.yaml`` must carry ``sha256:``. The file is kept
under ``$HOMELAB_STATE/recipes/<sha256>.yaml``; a cached copy whose content still hashes to the
pin is used without any request (offline rebuilds work), and content that does not hash to the
pin is refused rather than trusted.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..files import atomic_write_bytes
from ..http_client import http_session
from ..settings import state_dir

MAX_RECIPE_BYTES = 1 << 20
"""Recipes are a few hundred bytes; anything over 1 MiB is not a recipe (a GGUF link by mistake)."""
TIMEOUT_S = 30


class RecipeFetchError(Exception):
    """Downloading or verifying a recipe failed; the message says which and what to do."""


def cache_dir() -> Path:
    return state_dir() / "recipes"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cached_recipe(sha256: str) -> Path | None:
    """The cached copy for ``sha256`` if it exists and its content still matches."""
    path = cache_dir() / f"{sha256}.yaml"
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return path if sha256_bytes(data) == sha256 else None


def download(url: str) -> bytes:
    import requests  # lazily, for its errors: every doit run loads the inventory, few download a recipe

    try:
        with http_session() as http, http.get(url, timeout=TIMEOUT_S, stream=True) as response:
            if response.status_code != 200:
                raise RecipeFetchError(f"downloading {url} failed: HTTP {response.status_code}")
            body = bytearray()
            for chunk in response.iter_content(chunk_size=65536):
                body.extend(chunk)
                if len(body) > MAX_RECIPE_BYTES:
                    raise RecipeFetchError(
                        f"{url} is larger than {MAX_RECIPE_BYTES} bytes; a recipe is a small YAML file"
                    )
            return bytes(body)
    except requests.ConnectionError:
        raise RecipeFetchError(
            f"downloading {url} failed: cannot connect (offline? a cached copy needs the same sha256)"
        ) from None
    except requests.Timeout:
        raise RecipeFetchError(f"downloading {url} failed: no answer within {TIMEOUT_S} s") from None
    except requests.RequestException as exc:
        raise RecipeFetchError(f"downloading {url} failed: {exc}") from None


def fetch_recipe(url: str, sha256: str) -> Path:
    """The local path of the recipe at ``url`` whose content hashes to ``sha256``.

    Uses the cache when it holds that content (no request); otherwise downloads, verifies and
    stores it atomically. Raises :class:`RecipeFetchError` on a failed download or a mismatch.
    """
    cached = cached_recipe(sha256)
    if cached is not None:
        return cached
    body = download(url)
    actual = sha256_bytes(body)
    if actual != sha256:
        raise RecipeFetchError(
            f"the recipe at {url} does not match its pin: expected sha256 {sha256}, got {actual}. "
            "The file changed upstream (or the pin is wrong): review the new content, then set "
            f"sha256: {actual}"
        )
    target = cache_dir() / f"{sha256}.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, body)
    return target


def hash_of_url(url: str) -> str:
    """Download ``url`` and return its sha256 (to tell a user which pin to add)."""
    return sha256_bytes(download(url))
