"""Fixtures for the llama.cpp stage: a fake upstream repository and an inventory using it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from .fakeproject import make_upstream


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    """A real git repository holding a tiny CMake project that builds a fake llama-server."""
    return make_upstream(tmp_path / "upstream")


@pytest.fixture
def state() -> Path:
    return Path(os.environ["HOMELAB_STATE"])


def write_inventory(
    root: Path,
    upstream: Path,
    *,
    backend: str = "cpu",
    patches: list | None = None,
    recipe_server: dict | None = None,
    gpus: list | None = None,
    ref: str = "b100",
) -> Path:
    (root / "hosts").mkdir(parents=True, exist_ok=True)
    (root / "recipes").mkdir(exist_ok=True)
    (root / "patches").mkdir(exist_ok=True)
    host = {
        "name": "box",
        "backend": backend,
        "gpus": gpus or [],
        "llama_cpp": {"repo": str(upstream), "ref": ref, "patches": patches or []},
        "models": [{"recipe": "tiny"}],
    }
    recipe = {
        "name": "tiny",
        "source": {"path": {"path": "/models/tiny.gguf"}},
        "server": recipe_server or {"ctx-size": 4096},
    }
    (root / "hosts" / "box.yaml").write_text(yaml.safe_dump(host))
    (root / "recipes" / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    return root
