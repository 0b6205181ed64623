"""The real b11434 llama-server, built by our build stage with our test patch, on a tiny model."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from homelab.llamacpp.flags import AcceptedFlags
from homelab.testing.llama_server import PATCH_MARKER

SNAPSHOT = Path(__file__).resolve().parents[2] / "homelab" / "llamacpp" / "server_flags_b11434.txt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_patched_server_serves_a_completion(llama_server_bin: Path, tiny_model: Path, tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [str(llama_server_bin), "-m", str(tiny_model), "--host", "127.0.0.1", "--port", str(port),
         "-c", "512", "-np", "1", "-t", "1", "--no-warmup"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                if requests.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "llama-server did not become ready in 60 s"
            time.sleep(0.1)
        props = requests.get(f"{base}/props", timeout=10).json()
        assert "11434" in props["build_info"]
        if not os.environ.get("HOMELAB_TEST_LLAMA_SERVER"):
            key, value = PATCH_MARKER
            assert props.get(key) == value  # our patch series is in the binary
        reply = requests.post(f"{base}/completion", json={"prompt": "hello", "n_predict": 8}, timeout=60).json()
        assert isinstance(reply["content"], str) and reply["tokens_predicted"] > 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.e2e
def test_build_keeps_the_flags_it_accepts(llama_server_bin: Path) -> None:
    flags_file = llama_server_bin.parent.parent / "flags.json"
    if not flags_file.is_file():
        pytest.skip("HOMELAB_TEST_LLAMA_SERVER points at a binary our build stage did not install")
    accepted = AcceptedFlags.read(flags_file)
    assert "b11434" in accepted.build
    # the static snapshot the inventory stage uses is exactly what this build accepts
    assert accepted.long_names() == SNAPSHOT.read_text().split()
