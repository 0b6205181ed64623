from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # fakehub

from standins import SHAPES, write_standin  # noqa: E402

REPO = HERE.parents[1]


@pytest.fixture(scope="session")
def standin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Header-only stand-ins for every recipe of the example inventory (name.gguf)."""
    import logging

    logging.getLogger("gguf").setLevel(logging.WARNING)
    out = tmp_path_factory.mktemp("standins")
    for name, shape in SHAPES.items():
        write_standin(out / f"{name}.gguf", shape)
    return out


@pytest.fixture
def example_inventory(tmp_path: Path) -> Path:
    """A copy of the example inventory without lock files (the plan reads recipes' sources)."""
    inv = tmp_path / "inventory"
    shutil.copytree(REPO / "hosts", inv / "hosts", ignore=shutil.ignore_patterns("*.lock.json"))
    shutil.copytree(REPO / "recipes", inv / "recipes")
    if (REPO / "patches").is_dir():
        shutil.copytree(REPO / "patches", inv / "patches")
    return inv
