"""`doit fetch host=H` as a user runs it: lock, download, verify, stamp; then nothing at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakehub import FakeHub

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.llama_cpp_pin
def test_doit_fetch_downloads_verifies_stamps_then_does_nothing(hub: FakeHub, inventory, tmp_path, gguf_bytes) -> None:
    llama = tmp_path / "llama.cpp"
    llama.mkdir()
    (llama / "CMakeLists.txt").write_text("project(llama)\n")
    inventory.recipe("tiny", {"hf": {"repo": "acme/tiny-GGUF", "file": "tiny-Q8_0.gguf"}})
    inventory.recipe("vis", {"hf": {"repo": "acme/vision-GGUF", "file": "v.gguf", "mmproj": "mmproj-F16.gguf"}})
    host_file = inventory.root / "hosts" / "box.yaml"
    inventory.host(["tiny", "vis"])
    text = host_file.read_text().replace("llama_cpp:\n  ref: b11434", f"llama_cpp:\n  path: {llama}\n  build_number: 11434")
    host_file.write_text(text)
    state = Path(os.environ["HOMELAB_STATE"])
    env = {
        **{k: v for k, v in os.environ.items() if k != "CI"},
        "HOMELAB_INVENTORY": str(inventory.root),
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }

    def doit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "doit", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
        )

    first = doit("fetch", "host=box")
    assert first.returncode == 0, first.stdout + first.stderr
    lock = json.loads((inventory.root / "hosts" / "box.lock.json").read_text())
    assert set(lock["models"]) == {"tiny", "vis"}
    for model in ("tiny", "vis"):
        manifest = json.loads((state / "fetch" / "box" / f"{model}.json").read_text())
        for entry, pin in zip(manifest["files"], lock["models"][model]["files"], strict=True):
            assert entry["sha256"] == pin["sha256"] and Path(entry["local"]).exists()
    assert len([r for r in hub.requests if r.host == "cdn"]) == 3  # tiny, v, mmproj

    hub.clear_requests()
    second = doit("fetch", "host=box")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "-- fetch:box:tiny" in second.stdout and "-- fetch:box:vis" in second.stdout
    assert hub.requests == []

    frozen = doit("fetch", "host=box", "frozen=1")
    assert frozen.returncode == 0, frozen.stdout + frozen.stderr
    inventory.recipe("tiny", {"hf": {"repo": "acme/split-GGUF", "file": "big-00001-of-00002.gguf"}})
    stale = doit("fetch", "host=box", "frozen=1")
    assert stale.returncode != 0
    assert "tiny: the recipe's source changed" in stale.stdout + stale.stderr
    assert "Traceback" not in stale.stdout + stale.stderr
