"""Fixtures for the hub stage: a fake Hub with tiny GGUF repos and a temp inventory using them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fakehub import FakeHub

from homelab.inventory import ResolvedHost, load_host
from homelab.testing.tiny_gguf import TinySpec, write_tiny_llama


@pytest.fixture(scope="session")
def gguf_bytes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Distinct real tiny GGUFs: a model, two 'split parts', a projector, a second revision."""
    base = tmp_path_factory.mktemp("hubmodels")
    out = {}
    for i, name in enumerate(["model", "part1", "part2", "mmproj", "model-v2"]):
        out[name] = write_tiny_llama(base / f"{name}.gguf", TinySpec(seed=i, name=name)).read_bytes()
    return out


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, gguf_bytes: dict[str, bytes]) -> Iterator[FakeHub]:
    with FakeHub() as fake:
        fake.add_repo("acme/tiny-GGUF", {"tiny-Q8_0.gguf": gguf_bytes["model"], "README.md": b"# tiny\n"})
        fake.add_repo(
            "acme/split-GGUF",
            {"big-00001-of-00002.gguf": gguf_bytes["part1"], "big-00002-of-00002.gguf": gguf_bytes["part2"]},
        )
        fake.add_repo("acme/vision-GGUF", {"v.gguf": gguf_bytes["model"], "mmproj-F16.gguf": gguf_bytes["mmproj"]})
        fake.add_repo("acme/gated-GGUF", {"g.gguf": gguf_bytes["model"]}, gated=True)
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        monkeypatch.delenv("CI", raising=False)
        yield fake


HOST = {
    "name": "box",
    "backend": "cpu",
    "llama_cpp": {"ref": "b11434"},
    "runtime": {"kind": "supervisor", "listen": "127.0.0.1:12434", "service": "none"},
}


class Inventory:
    """A temp inventory directory: write recipes and a host, load it as the loader does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "hosts").mkdir(parents=True)
        (root / "recipes").mkdir()
        (root / "patches").mkdir()

    def recipe(self, name: str, source: dict) -> None:
        doc = {"name": name, "source": source, "server": {"ctx-size": 512}}
        (self.root / "recipes" / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    def host(self, models: list[str], name: str = "box") -> ResolvedHost:
        doc = {**HOST, "name": name, "models": [{"recipe": m} for m in models]}
        (self.root / "hosts" / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        return load_host(name, self.root)


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    return Inventory(tmp_path / "inventory")


@pytest.fixture(autouse=True)
def _models_only(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lock tests are about model pins: the llama.cpp pin (another stage) is left out unless a
    test asks for it with ``@pytest.mark.llama_cpp_pin`` (the doit test runs it for real)."""
    if request.node.get_closest_marker("llama_cpp_pin") is None:
        monkeypatch.setattr("homelab.hub.resolve._llama_cpp_pin", lambda _host, previous, _update, _frozen: previous)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "llama_cpp_pin: run the llama.cpp stage's resolver during lock")
