"""Fixtures for the inventory tests: a private copy of the real example inventory to break."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from inventory_testkit import Inventory

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    """A copy of the checkout's hosts/ and recipes/ in a temp folder, free to break."""
    root = tmp_path / "inventory"
    for folder in ("hosts", "recipes"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("*.lock.json"))
    (root / "patches").mkdir()
    return Inventory(root)
